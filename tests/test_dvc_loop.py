"""The DVC side of the MLOps loop on a throwaway Git + DVC project holding one short sample clip: outputs go
to a remote and come back byte for byte, `dvc exp run -S` makes an experiment whose MLflow run carries its
name, and `dvc metrics show` / `dvc plots show` read what dvc.yaml declares.

One reproduction of the cheap data lineage (raw_clips .. restoration_dataset, about a minute on 2 cores, most
of it interpreter start-up) is shared by the module; training is never run: the plots test writes
history.json files of the shape the training stages write into their out folders instead.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import Project, need_media
from dvc_project import dvc, git, git_dvc_project, need_dvc

from assets.atomic import write_json
from orchestration.stages import STAGES

pytestmark = [pytest.mark.dvc, pytest.mark.slow]

LINEAGE_TARGET = "restoration_dataset"


def _hashes(root: Path, outs: list[str]) -> dict[str, str]:
    found = {}
    for out in outs:
        for f in sorted(p for p in (root / out).rglob("*") if p.is_file()):  # outs are folders
            found[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return found


def _cached_outs(root: Path) -> list[str]:
    """The cached outs of every stage reproduced so far (metrics are `cache: false`: Git keeps those)."""
    done = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    declared = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return [out for name in done for out in declared[name].get("outs", [])]


@pytest.fixture(scope="module")
def lineage(tmp_path_factory) -> Path:
    """A committed Git + DVC project with the data lineage reproduced up to restoration_dataset, MLflow on."""
    need_media()
    need_dvc()
    base = tmp_path_factory.mktemp("dvc_loop")
    proj = Project(base / "proj")
    proj.add_sample("carphone_pristine.mp4")
    proj.write_params(mlflow__enabled=True)
    root = git_dvc_project(base / "dvc", proj.root)
    dvc(root, "repro", LINEAGE_TARGET)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "lineage reproduced")
    return root


def test_push_then_pull_restores_every_out_byte_for_byte(lineage, tmp_path):
    root = lineage
    remote = tmp_path / "remote"
    dvc(root, "remote", "add", "--local", "-d", "scratch", str(remote))
    try:
        outs = _cached_outs(root)
        assert {"data/interim/raw_clips", "data/interim/region_tracks", "data/datasets/restoration"} <= set(outs)
        before = _hashes(root, outs)
        assert any(f.endswith(".mp4") for f in before), sorted(before)

        dvc(root, "push")
        assert any((remote / "files" / "md5").rglob("*")), "nothing reached the remote"
        assert "in sync" in dvc(root, "status", "--cloud").stdout

        for out in outs:
            shutil.rmtree(root / out)
        shutil.rmtree(root / ".dvc" / "cache")
        assert not _hashes(root, outs) and not (root / ".dvc" / "cache").exists()

        # Named: an untargeted pull also tries the training stages this project never reproduced, and fails.
        dvc(root, "pull", "--with-deps", LINEAGE_TARGET)
        assert _hashes(root, outs) == before
        assert "up to date" in dvc(root, "status", LINEAGE_TARGET).stdout
    finally:
        dvc(root, "remote", "remove", "--local", "scratch", check=False)


def test_metrics_show_prints_the_stage_metrics(lineage):
    root = lineage
    produced = json.loads((root / "data/metrics/restoration_dataset.json").read_text())
    assert produced["frames"] > 0

    shown = json.loads(dvc(root, "metrics", "show", "--json").stdout)
    assert shown[""]["data"]["data/metrics/restoration_dataset.json"]["data"] == produced

    table = dvc(root, "metrics", "show").stdout
    assert "data/metrics/restoration_dataset.json" in table
    assert "train_frames" in table and str(produced["frames"]) in table


def test_plots_show_renders_the_training_curves(lineage, tmp_path):
    root = lineage
    trained = [st for st in STAGES if st.plots]
    assert {st.name for st in trained} >= {"stage1_checkpoint", "stage2_checkpoint", "detector_checkpoint"}
    written = []
    try:
        for st in trained:
            for path, x, ys in st.plots:
                # The shape the training loops log: one dict per logged iteration, more fields than plotted.
                history = [{x: i * 10, **{y: round(1.0 / (i + k + 1), 6) for k, y in enumerate(ys)}, "lr": 1e-4}
                           for i in range(1, 6)]
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                if path.endswith(".csv"):  # the anonymizer's metrics.csv: one row per validation
                    lines = [",".join(history[0])] + [",".join(str(v) for v in row.values()) for row in history]
                    (root / path).write_text("\n".join(lines) + "\n")
                else:
                    write_json(root / path, history)
                written.append(root / path)

        out_dir = tmp_path / "plots"
        dvc(root, "plots", "show", "-o", str(out_dir))
        html = (out_dir / "index.html").read_text()
        for st in trained:
            assert f"{st.name}: training curves" in html
            for _, _, ys in st.plots:
                for y in ys:
                    assert f'"field": "{y}"' in html, f"{st.name}: {y} is not plotted"

        specs = json.loads(dvc(root, "plots", "show", "--json", *[st.name for st in trained]).stdout)["data"]
        for st in trained:
            (plot,) = specs[st.name]
            values = plot["content"]["data"]["values"]
            assert len(values) == 5 * sum(len(ys) for _, _, ys in st.plots), f"{st.name}: {len(values)} datapoints"
            x = st.plots[0][1]
            assert f'"field": "{x}"' in json.dumps(plot["content"]), f"{st.name}: x is not {x}"
            for _, _, ys in st.plots:
                if len(ys) > 1:  # DVC stacks several y fields into one series keyed by `field`
                    assert {v["field"] for v in values} == set(ys)
    finally:
        for path in written:
            shutil.rmtree(path.parent)


def _mlflow_runs(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    return [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]


def _experiments(root: Path) -> dict[str, dict]:
    """name -> params.yaml of every experiment `dvc exp show` lists."""
    shown = json.loads(dvc(root, "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            (rev,) = exp["revs"]
            found[exp["name"]] = rev["data"]["params"]["params.yaml"]["data"]
    return found


@pytest.mark.parametrize("mode", [
    "workspace",
    "temp",  # runs in a copy under .dvc/tmp/exps: the MLflow run must still land in the real store (DVC_ROOT)
])
def test_exp_run_with_a_changed_param_is_an_experiment_and_tags_its_mlflow_run(lineage, mode):
    root = lineage
    baseline_params = yaml.safe_load((root / "params.yaml").read_text())
    value = baseline_params["data"]["max_side"] // (2 if mode == "workspace" else 4)
    before = {run.info.run_id for run in _mlflow_runs(root)}
    known = set(_experiments(root))

    try:
        extra = ["--temp"] if mode == "temp" else []
        dvc(root, "exp", "run", *extra, "raw_clips", "-S", f"data.max_side={value}")

        new = {name: params for name, params in _experiments(root).items() if name not in known}
        assert len(new) == 1, f"expected one new experiment, dvc exp show lists {sorted(new)}"
        (name, params), = new.items()
        assert params["data"]["max_side"] == value
        assert baseline_params["data"]["max_side"] != value

        runs = [run for run in _mlflow_runs(root) if run.info.run_id not in before]
        assert [run.info.run_name for run in runs] == ["raw_clips"], [run.info.run_name for run in runs]
        (run,) = runs
        assert run.data.tags.get("dvc.experiment") == name
        assert run.data.tags.get("aubergine.orchestrator") == "dvc"
        assert run.data.params.get("data.max_side") == str(value)
        # Plain `dvc repro` (the fixture) names no experiment.
        plain = [r for r in _mlflow_runs(root) if r.info.run_name != "raw_clips"]
        assert len(plain) >= 4 and not any("dvc.experiment" in r.data.tags for r in plain)
    finally:
        # A workspace experiment is applied to the workspace; put the committed baseline back for whatever runs next.
        git(root, "checkout", "--", "params.yaml", "dvc.lock")
        dvc(root, "checkout", "--force", check=False)
