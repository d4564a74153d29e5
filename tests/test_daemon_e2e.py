"""End to end with a real `dagster-daemon`: a clip dropped into the raw folder starts exactly one run of the
whole lineage, through promotion, and the gpu pool keeps the two trainings of that run apart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import ROOT, Project, need_media
from tests.test_detection_track import TINY as DETECTION_TINY
from tests.test_restoration_track import TINY as RESTORATION_TINY

RUN_TIMEOUT_S = 1200


def _wait_for(predicate, timeout_s: float, what: str, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}; daemon log tail:\n{log.read_text()[-4000:]}")


def _step_spans(instance, run_id: str) -> dict[str, list[float]]:
    spans: dict[str, list[float]] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.event_type_value in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE"):
            spans.setdefault(event.step_key, []).append(record.timestamp)
    return spans


@pytest.mark.slow
@pytest.mark.daemon
def test_new_clip_in_the_raw_folder_runs_the_lineage_once_through_promotion(tmp_path):
    need_media()
    project = Project(tmp_path / "proj")
    project.write_params(**{**RESTORATION_TINY, **DETECTION_TINY}, retraining__sensor_interval_s=5,
                         retraining__min_file_age_s=0, retraining__schedule_running=False)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster_home/dagster.yaml").read_text())
    log = tmp_path / "daemon.log"
    env = {**os.environ, "DAGSTER_HOME": str(home), "OMP_NUM_THREADS": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    daemon = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", "orchestration.definitions"],
        cwd=project.root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        project.add_sample("carphone_pristine.mp4")  # the new clip
        with dg.DagsterInstance.from_config(str(home)) as instance:
            runs = _wait_for(lambda: instance.get_runs(), 180, "the sensor to start a run", log)
            run_id = runs[0].run_id
            finished = _wait_for(
                lambda: (r := instance.get_run_by_id(run_id)) and r.is_finished and r, RUN_TIMEOUT_S, "the run to finish", log)
            spans = _step_spans(instance, run_id)
            assert finished.status == dg.DagsterRunStatus.SUCCESS, f"run {run_id} ended {finished.status}: {sorted(spans)}"
            assert finished.job_name == "full_pipeline"
            assert finished.tags["aubergine/trigger"] == "new_clips"
            assert finished.tags["aubergine/new_clips"] == "carphone_pristine.mp4"

            # Through promotion: promoted_models was materialized by this run and wrote its decisions.
            event = instance.get_latest_materialization_event(dg.AssetKey("promoted_models"))
            assert event is not None and event.run_id == run_id
            assert (project.root / "data/reports/promotion/decisions.json").is_file()
            # The stage runs link to MLflow from the Dagster run.
            assert any(key.startswith("mlflow/") for key in finished.tags)

            # The two trainings of the run never overlapped (pool "gpu", limit 1).
            (s0, s1), (d0, d1) = spans["stage1_checkpoint"], spans["detector_checkpoint"]
            assert s1 <= d0 or d1 <= s0, spans

            # A few more sensor ticks with nothing new: still exactly one run.
            time.sleep(20)
            assert len(instance.get_runs()) == 1
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=30)
    assert daemon.returncode is not None
