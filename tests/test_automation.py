"""Dagster automation: the new-clips sensor's evaluation, the retraining schedule, jobs and the gpu pool."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration import automation
from orchestration.stages import STAGES
from tests.conftest import ROOT

OLD = time.time() - 3600  # an mtime old enough to be past `min_file_age_s`


def _drop(project, name: str, as_name: str | None = None, mtime: float = OLD) -> Path:
    path = project.add_sample(name, as_name)
    os.utime(path, (mtime, mtime))
    return path


def _tick(cursor: str | None):
    from orchestration.definitions import defs

    sensor = defs.get_sensor_def("new_clips")
    with dg.instance_for_test() as instance:
        return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, sensor_name="new_clips"))


def test_sensor_requests_one_run_per_batch_of_new_clips_and_none_twice(project):
    assert _tick(None).run_requests == []  # empty raw folder: nothing to do
    _drop(project, "carphone_pristine.mp4")
    _drop(project, "astronaut_zoom.mp4")
    first = _tick(None)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.tags["aubergine/new_clips"] == "astronaut_zoom.mp4, carphone_pristine.mp4"
    from orchestration.definitions import defs

    assert defs.get_sensor_def("new_clips").job_name == "full_pipeline"

    # Same folder, advanced cursor: no second run for the same files.
    again = _tick(first.cursor)
    assert again.run_requests == [] and "no new clips" in again.skip_message

    # One more clip: exactly one run, for that clip only, with a different run key.
    _drop(project, "bikes.mp4")
    third = _tick(again.cursor)
    assert len(third.run_requests) == 1 and third.run_requests[0].tags["aubergine/new_clips"] == "bikes.mp4"
    assert third.run_requests[0].run_key != request.run_key

    # A clip replaced by different content under the same name is new data.
    _drop(project, "plates_pan.mp4", as_name="bikes.mp4")
    assert len(_tick(third.cursor).run_requests) == 1


def test_sensor_waits_for_files_still_being_written(project):
    _drop(project, "bikes.mp4", mtime=time.time())  # just modified: may still be copying
    result = _tick(None)
    assert result.run_requests == [] and "still being written" in result.skip_message
    os.utime(project.raw / "bikes.mp4", (OLD, OLD))
    assert len(_tick(result.cursor).run_requests) == 1


def test_switching_the_sensor_on_does_not_rerun_clips_the_lineage_already_has(project):
    from orchestration.runner import run_stage

    _drop(project, "carphone_pristine.mp4")
    run_stage("raw_clips", project.params())  # the manifest now lists the clip
    assert _tick(None).run_requests == []
    _drop(project, "bikes.mp4")
    assert [r.tags["aubergine/new_clips"] for r in _tick(None).run_requests] == ["bikes.mp4"]


def test_sensor_with_an_unreachable_registry_fails_the_tick_and_keeps_the_batch(project):
    from orchestration.tracking import RegistryUnreachableError

    project.write_params(mlflow__enabled=True, mlflow__uri="http://127.0.0.1:9")
    _drop(project, "bikes.mp4")
    with pytest.raises(RegistryUnreachableError):
        _tick(None)
    project.write_params()  # registry back (tracking off): the same batch goes through
    assert len(_tick(None).run_requests) == 1


def test_schedule_uses_the_cron_from_params_and_checks_before_it_starts(project):
    from orchestration.definitions import defs
    from orchestration.tracking import RegistryUnreachableError

    schedule = defs.get_schedule_def("retrain_schedule")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert schedule.cron_schedule == params["retraining"]["cron"]
    assert schedule.job_name == "retrain"
    monday = datetime.datetime(2026, 11, 23, 3, 0, tzinfo=datetime.timezone.utc)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=monday)
        requests = schedule.evaluate_tick(context).run_requests
        assert len(requests) == 1 and requests[0].tags["aubergine/trigger"] == "schedule"
        project.write_params(mlflow__enabled=True, mlflow__uri="http://127.0.0.1:9")
        with pytest.raises(dg.DagsterUserCodeExecutionError) as err:  # the tick fails; no run request
            schedule.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=monday))
        assert isinstance(err.value.__cause__, RegistryUnreachableError)


def test_malformed_cron_fails_loading_the_definitions_with_the_key_named(tmp_path):
    from orchestration.config import ConfigError

    bad = tmp_path / "params.yaml"
    bad.write_text((ROOT / "params.yaml").read_text().replace('cron: "0 3 * * 1"', 'cron: "0 3 * * 8"'))
    with pytest.raises(ConfigError, match="retraining.cron"):
        automation.retraining_settings(bad)


def test_jobs_cover_the_lineage_and_retraining_runs_training_through_promotion():
    from orchestration.definitions import defs

    retrain = defs.get_job_def("retrain")
    assert {n for n in retrain.graph.node_names()} >= set(automation.RETRAIN_STAGES)
    assert "raw_clips" not in retrain.graph.node_names()
    full = defs.get_job_def("full_pipeline")
    assert {st.name for st in STAGES} <= set(full.graph.node_names())


def test_training_assets_share_the_gpu_pool_limited_to_one():
    from orchestration.definitions import defs

    pools = {}
    for asset in defs.assets:
        for node in asset.node_def.iterate_op_defs() if hasattr(asset.node_def, "iterate_op_defs") else [asset.node_def]:
            pools[asset.key.to_user_string()] = node.pool
    assert {name for name, pool in pools.items() if pool == "gpu"} == {"stage1_checkpoint", "stage2_checkpoint", "detector_checkpoint",
                                                                             "mosaic_detector_checkpoint", "lora_checkpoint"}
    instance = yaml.safe_load((ROOT / "dagster_home/dagster.yaml").read_text())
    assert instance["concurrency"]["pools"]["default_limit"] == 1


SLEEPY_JOB = """
import time
import dagster as dg

@dg.asset(pool="gpu")
def train_a():
    time.sleep(3)

@dg.asset(pool="gpu")
def train_b():
    time.sleep(3)

@dg.asset
def not_pooled():
    time.sleep(3)

# More executor slots than steps, so only the pool can keep the two trainings apart (this VM has 2 cores).
job = dg.define_asset_job("both", selection="*", executor_def=dg.multiprocess_executor.configured({"max_concurrent": 4}))
defs = dg.Definitions(assets=[train_a, train_b, not_pooled], jobs=[job])

def both_job():
    return defs.get_job_def("both")
"""


def test_the_instance_config_runs_one_pooled_step_at_a_time(tmp_path):
    """Two independent assets of the gpu pool in one multiprocess run, under the project's dagster.yaml: the
    pooled steps never overlap, while the unpooled step runs beside them."""
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster_home/dagster.yaml").read_text())
    (tmp_path / "sleepy_defs.py").write_text(SLEEPY_JOB)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    dagster = str(Path(sys.executable).with_name("dagster"))
    out = subprocess.run([dagster, "job", "execute", "-f", "sleepy_defs.py", "-j", "both"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    spans: dict[str, list[float]] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is not None and event.event_type_value in ("STEP_START", "STEP_SUCCESS"):
                spans.setdefault(event.step_key, []).append(record.timestamp)
    (a0, a1), (b0, b1), (n0, n1) = spans["train_a"], spans["train_b"], spans["not_pooled"]
    assert a1 <= b0 or b1 <= a0, f"pooled steps overlapped: {spans}"
    first_pooled_end = min(a1, b1)
    assert n0 < first_pooled_end, f"the unpooled step waited for the pool: {spans}"


def test_a_cluster_executor_is_chosen_by_name_and_a_missing_one_is_a_clear_error(monkeypatch):
    from orchestration.definitions import EXECUTOR, select_executor

    assert select_executor("multiprocess") is EXECUTOR
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="not an executor of this project"):
        select_executor("slurm")
    try:
        import dagster_k8s  # noqa: F401
    except ImportError:
        with pytest.raises(dg.DagsterInvalidDefinitionError, match="dagster-k8s is not installed"):
            select_executor("k8s")
