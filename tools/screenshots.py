"""The README's screenshots of both UIs, taken from this checkout's real state: `dagster-webserver` over dagster_home/
and `mlflow server` over mlruns.db + mlartifacts/, both on 127.0.0.1, photographed with headless Debian Chromium.

    make screenshots            # or: .venv/bin/python tools/screenshots.py [--out docs/screenshots]

Run it after `make demo`, so there are materializations and runs to show."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from tools/: the server helpers live with the browser test

from tests.ui_servers import (  # noqa: E402
    VIEWPORT, launch_chromium, mlflow_experiment_id, mlflow_runs, open_dagster_asset_graph, quiet_first_visit, settle,
    start_dagster, start_mlflow,
)

TIMEOUT_MS = 90_000


def finished(runs: list[dict], name: str) -> list[dict]:
    return [r for r in runs if r["info"].get("run_name") == name and r["info"]["status"] == "FINISHED"]


def curves(run: dict) -> list[str]:
    """Metrics logged every log_interval are named `<stage>/<what>`; the one-off summaries have no slash."""
    return sorted(m["key"] for m in run["data"].get("metrics", []) if "/" in m["key"])


def params(run: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def pick_pair(runs: list[dict]) -> list[dict]:
    """The latest run with curves and the latest earlier one with other parameters (the same parameters give the
    same curves: training is seeded); two alike if no run differs. Runs resumed from a finished checkpoint log no
    curves and are passed over."""
    with_curves = [r for r in runs if curves(r)]
    if len(with_curves) < 2:
        return []
    first = with_curves[0]
    other = next((r for r in with_curves[1:] if params(r) != params(first)), with_curves[1])
    return [first, other]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs/screenshots")
    ap.add_argument("--dagster-home", type=Path, default=ROOT / "dagster_home")
    ap.add_argument("--mlflow-db", type=Path, default=ROOT / "mlruns.db")
    ap.add_argument("--artifacts", type=Path, default=ROOT / "mlartifacts")
    ap.add_argument("--experiment", default="aubergine-restoration")
    ap.add_argument("--compare-stage", default="stage2_checkpoint",
                    help="its latest finished run is compared with the latest one that used other parameters")
    ap.add_argument("--asset", default="restoration_report", help="the asset whose page is shown")
    args = ap.parse_args(argv)

    for need in (args.mlflow_db, args.dagster_home):
        if not need.exists():
            ap.error(f"{need} is missing: run `make demo` first, the screenshots show its results")
    args.out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="aubergine-ui-"))

    from playwright.sync_api import expect, sync_playwright

    written: list[Path] = []
    mlflow = start_mlflow(args.mlflow_db, args.artifacts, logs / "mlflow.log")
    try:
        dagster = start_dagster(args.dagster_home, logs / "dagster.log")
        try:
            experiment = mlflow_experiment_id(mlflow, args.experiment)
            runs = mlflow_runs(mlflow, experiment)
            with sync_playwright() as pw:
                browser = launch_chromium(pw)
                try:
                    context = browser.new_context(viewport=VIEWPORT)
                    quiet_first_visit(context)
                    page = context.new_page()

                    open_dagster_asset_graph(page, dagster.url, full_nodes=True, timeout_ms=TIMEOUT_MS)
                    settle(page)
                    written.append(shot(page, args.out / "dagster_asset_graph.png"))
                    page.set_viewport_size(VIEWPORT)

                    page.goto(f"{dagster.url}/assets/{args.asset}")
                    expect(page.get_by_text("Metadata").first).to_be_visible(timeout=TIMEOUT_MS)
                    settle(page)
                    written.append(shot(page, args.out / "dagster_asset_detail.png"))

                    page.goto(f"{mlflow.url}/#/experiments/{experiment}/runs?workflowType=machine_learning")
                    expect(page.get_by_role("link", name=args.compare_stage, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
                    written.append(shot(page, args.out / "mlflow_runs.png"))

                    pair = pick_pair(finished(runs, args.compare_stage))
                    if len(pair) == 2:
                        ids = json.dumps([r["info"]["run_id"] for r in pair])
                        page.set_viewport_size({"width": VIEWPORT["width"], "height": 1800})
                        page.goto(f"{mlflow.url}/#/compare-runs?runs={ids}&experiments={json.dumps([experiment])}")
                        expect(page.get_by_text(args.compare_stage).first).to_be_visible(timeout=TIMEOUT_MS)
                        # MLflow polls, so the network never idles; the page is done when its first plot is drawn.
                        page.locator(".js-plotly-plot").first.wait_for(timeout=TIMEOUT_MS)
                        page.get_by_text("Show diff only").first.click()  # the parameters that differ, not all 30
                        written.append(shot(page, args.out / "mlflow_compare.png"))

                        keys = curves(pair[0])
                        curve = next((k for k in keys if k.endswith("/loss_pix")), next((k for k in keys if "loss" in k), keys[0]))
                        page.get_by_role("link", name=curve, exact=True).first.click()
                        page.locator(".js-plotly-plot").first.wait_for(timeout=TIMEOUT_MS)
                        expect(page.get_by_text(curve).first).to_be_visible(timeout=TIMEOUT_MS)
                        page.set_viewport_size(VIEWPORT)
                        written.append(shot(page, args.out / "mlflow_compare_curves.png"))
                    else:
                        print(f"skipped mlflow_compare*.png: fewer than two finished {args.compare_stage} runs with curves",
                              file=sys.stderr)
                finally:
                    browser.close()
        finally:
            dagster.stop()
    finally:
        mlflow.stop()
    for path in written:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


def shot(page, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
