"""One writer at a time across engines: the project lock every stage run takes (orchestration/project_lock.py),
tried with real processes: a Dagster step's holder, a real `dvc repro`, a real Dagster materialization."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestration import project_lock
from tests.dvc_project import DVC_BIN, dvc_env, engine_project, need_dvc

# Takes the lock exactly as a step of Dagster run `run-A` does (runner.run_stage -> project_lock.held), then holds
# it until the test creates `release`: a Dagster materialization that is busy writing data/.
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from orchestration import project_lock
    owner = project_lock.owner_for("dagster", "run-A")
    with project_lock.held(owner, "region_tracks", timeout_s=0):
        Path("held").write_text("1")
        while not Path("release").exists():
            time.sleep(0.1)
        Path("released_at").write_text(repr(time.time()))
""")


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _start_holder(root: Path, env: dict) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=root, env=env)
    _wait_for(lambda: (root / "held").exists() or holder.poll() is not None, 60, "the holder to take the lock")
    assert holder.poll() is None, "the holder exited before taking the lock"
    return holder


@pytest.mark.dvc
def test_dvc_repro_during_a_dagster_run_stops_naming_it_or_waits_for_it(project, tmp_path):
    need_dvc()
    project.add_sample("carphone_pristine.mp4")
    project.write_params(lock__timeout_s=0, lock__poll_s=0.2)
    env = dvc_env()
    root = engine_project(tmp_path / "dvc", project.root)
    subprocess.run([str(DVC_BIN), "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    outs = root / "data/interim/raw_clips"

    holder = _start_holder(root, env)
    try:
        # timeout 0: stop at once, naming the holder and the stage; nothing written.
        refused = subprocess.run([str(DVC_BIN), "repro", "raw_clips"], cwd=root, env=env, capture_output=True, text=True)
        assert refused.returncode != 0
        said = refused.stdout + refused.stderr
        assert "stage raw_clips: the project is locked by Dagster run run-A, running region_tracks" in said, said
        assert not outs.exists()

        # With a timeout the repro waits, says for whom, and writes only after the holder is gone.
        params = (root / "params.yaml").read_text().replace("timeout_s: 0", "timeout_s: 120")
        assert params != (root / "params.yaml").read_text()
        (root / "params.yaml").write_text(params)
        log = open(tmp_path / "repro.log", "w")
        waiting = subprocess.Popen([str(DVC_BIN), "repro", "raw_clips"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait_for(lambda: "waiting for the project lock, held by Dagster run run-A" in (tmp_path / "repro.log").read_text()
                  or waiting.poll() is not None, 120, "the repro to report that it waits")
        assert waiting.poll() is None, (tmp_path / "repro.log").read_text()
        time.sleep(1.0)
        assert not outs.exists(), "the waiting repro wrote while the lock was held"
        (root / "release").write_text("1")
        assert waiting.wait(timeout=300) == 0, (tmp_path / "repro.log").read_text()
    finally:
        (root / "release").write_text("1")
        holder.wait(timeout=60)
    released = float((root / "released_at").read_text())
    assert (outs / "manifest.json").stat().st_mtime > released
    record, held = project_lock.status(root / project_lock.RECORD)
    assert not held  # the repro is over: nothing holds data/ any more


def test_a_dead_holder_is_taken_over_and_a_run_rejoins_its_own_lock(tmp_path):
    record_path = tmp_path / "data/.project-lock.json"
    record_path.parent.mkdir(parents=True)
    # A killed run leaves its record: its processes are gone, so it is stale and the next run takes over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import psutil

    started = psutil.Process().create_time()  # any start time: the pid is gone
    record_path.write_text(json.dumps({"owner": "dvc:1:2", "engine": "dvc", "run_id": None, "driver": [dead.pid, started],
                                       "host": os.uname().nodename, "since": "earlier", "stages": {}}))
    assert project_lock.status(record_path)[1] is False
    mine = project_lock.owner_for("dagster", "run-B")
    with project_lock.held(mine, "eggplant_gt", timeout_s=0, record_path=record_path):
        record = json.loads(record_path.read_text())
        assert record["owner"] == "dagster:run-B" and record["stages"][str(os.getpid())]["stage"] == "eggplant_gt"
        # Re-entrant for the same run (parallel steps of one Dagster run, a stage calling another).
        with project_lock.held(mine, "mosaic_lq", timeout_s=0, record_path=record_path):
            pass
        assert json.loads(record_path.read_text())["stages"][str(os.getpid())]["depth"] == 1
    # Its driver is this process: nothing lies between its stages, so the lock is free again.
    assert not record_path.exists()


def test_the_lock_of_another_live_run_is_refused_within_the_timeout(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = _start_holder(tmp_path, env)
    try:
        record_path = tmp_path / project_lock.RECORD
        other = project_lock.owner_for("dvc", None)
        said = []
        started = time.monotonic()
        with pytest.raises(project_lock.ProjectLockedError, match=r"Waited \d+ s \(lock.timeout_s = 1\.5"):
            with project_lock.held(other, "mosaic_lq", timeout_s=1.5, poll_s=0.1, record_path=record_path, say=said.append):
                pytest.fail("entered a lock another run holds")
        assert time.monotonic() - started >= 1.5
        assert said and "Dagster run run-A" in said[0]
    finally:
        (tmp_path / "release").write_text("1")
        holder.wait(timeout=60)


@pytest.mark.slow
def test_a_dagster_materialization_holds_the_lock_as_its_run_worker(project, tmp_path):
    """The multiprocess executor runs each step in a forked process: the record names the run and the run worker
    (here the `dagster asset materialize` process), not the step, so the lock spans the run."""
    import dagster as dg

    project.add_sample("carphone_pristine.mp4")
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**dvc_env(), "DAGSTER_HOME": str(home)}
    root = engine_project(tmp_path / "dagster", project.root)
    run = subprocess.Popen([sys.executable, "-m", "dagster", "asset", "materialize", "--select", "raw_clips",
                            "-m", "orchestration.definitions"], cwd=root, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out[-3000:]
    instance = dg.DagsterInstance.from_config(str(home))
    (dagster_run,) = instance.get_runs()
    step_pids = {r.dagster_event.pid for r in instance.all_logs(dagster_run.run_id)
                 if r.dagster_event and r.dagster_event.step_key == "raw_clips"
                 and r.dagster_event.event_type_value == "STEP_START"}
    assert step_pids and run.pid not in step_pids  # the step ran in a process of its own
    left = project_lock.read(root / project_lock.RECORD)
    assert left is not None, "the run left no lock record"
    assert left["owner"] == f"dagster:{dagster_run.run_id}" and left["driver"][0] == run.pid
    assert left["last_stage"] == "raw_clips" and left["stages"] == {}
    assert project_lock.status(root / project_lock.RECORD)[1] is False  # the run worker is gone: free
