"""Both UIs as a person sees them: `dagster-webserver` and `mlflow server` on 127.0.0.1, driven by headless Debian
Chromium through Playwright. The asset graph must show every stage of the stage table, and the runs page the MLflow
runs that real stage materializations wrote. Screenshots are kept under test-artifacts/screenshots/
(AUBERGINE_TEST_ARTIFACTS moves test-artifacts/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestration.runner import run_stage
from orchestration.stages import STAGES
from tests.conftest import ROOT, Project, need_media
from tests.ui_servers import (
    CHROMIUM, VIEWPORT, dagster_graph, launch_chromium, mlflow_experiment_id, open_dagster_asset_graph,
    quiet_first_visit, settle, start_dagster, start_mlflow,
)

pytestmark = pytest.mark.browser

UI_TIMEOUT_MS = 60_000  # a 2-core machine shared with a pipeline: the first paint of the asset graph can take a while


def artifacts_dir(kind: str = "screenshots") -> Path:
    base = Path(os.environ.get("AUBERGINE_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder = base / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module", autouse=True)
def need_chromium():
    """Fails before minutes of set-up are spent: CI must install the browser, so a missing one is not a skip."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (make test does it) to install Debian's chromium")


@pytest.fixture(scope="module")
def ui_project(tmp_path_factory):
    """A throwaway project with real MLflow runs for the first two stages, written the way Dagster and DVC write them."""
    need_media()
    project = Project(tmp_path_factory.mktemp("ui") / "proj")
    project.write_params(mlflow__enabled=True)
    project.add_sample("carphone_pristine.mp4")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project.root)
        for name in ("raw_clips", "region_tracks"):
            run_stage(name, project.params())
    return project


@pytest.fixture(scope="module")
def servers(ui_project, tmp_path_factory):
    logs = artifacts_dir("logs")  # kept next to the screenshots: a failure in CI is read from them
    started = []
    try:
        started.append(start_mlflow(ui_project.root / "mlruns.db", ui_project.root / "mlartifacts", logs / "mlflow.log"))
        home = tmp_path_factory.mktemp("dagster_home")
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        started.append(start_dagster(home, logs / "dagster.log"))
        yield {"mlflow": started[0], "dagster": started[1]}
    finally:
        for server in started:
            server.stop()
        alive = [s.name for s in started if s.proc.poll() is None]
        assert not alive, f"still running after stop: {alive}"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = launch_chromium(pw)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    quiet_first_visit(context)
    try:
        yield context.new_page()
    finally:
        context.close()


def test_dagster_asset_graph_renders_every_stage(servers, page):
    from playwright.sync_api import expect

    shot = artifacts_dir() / "dagster_asset_graph.png"
    try:
        open_dagster_asset_graph(page, servers["dagster"].url, full_nodes=True, timeout_ms=UI_TIMEOUT_MS,
                                 names=tuple(st.name for st in STAGES))
        graph = dagster_graph(page)
        for st in STAGES:
            expect(graph.get_by_text(st.name, exact=True), f"asset {st.name} in the graph").to_be_visible(timeout=UI_TIMEOUT_MS)
    finally:
        settle(page)
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_mlflow_runs_page_renders_stage_runs(servers, page):
    from playwright.sync_api import expect

    server = servers["mlflow"]
    experiment = mlflow_experiment_id(server, "aubergine-ingest")
    page.goto(f"{server.url}/#/experiments/{experiment}/runs?workflowType=machine_learning")
    shot = artifacts_dir() / "mlflow_runs.png"
    try:
        expect(page.get_by_text("aubergine-ingest").first).to_be_visible(timeout=UI_TIMEOUT_MS)
        for name in ("raw_clips", "region_tracks"):
            expect(page.get_by_role("link", name=name, exact=True), f"run {name} in the runs table").to_be_visible(timeout=UI_TIMEOUT_MS)
    finally:
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
