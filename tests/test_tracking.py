"""Stage materializations are tracked in MLflow: one run per stage, tagged with engine, commit and input hash."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from orchestration.runner import run_stage


def test_stage_run_is_logged_with_tags_params_metrics_and_artifacts(project):
    project.add_sample("carphone_pristine.mp4")
    uri = f"sqlite:///{project.root / 'mlruns.db'}"
    project.write_params(mlflow__enabled=True, mlflow__uri=uri)
    params = project.params()

    report = run_stage("raw_clips", params, orchestrator="dvc")

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(report.mlflow_run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "aubergine-ingest"
    tags = run.data.tags
    assert tags["aubergine.stage"] == "raw_clips"
    assert tags["aubergine.orchestrator"] == "dvc"
    assert tags["aubergine.profile"] == "embedded"
    assert tags["data.input_hash"] == report.output.input_hash and len(report.output.input_hash) == 16
    assert tags["git.commit"]
    assert run.data.params["data.min_frames"] == str(params.data.min_frames)
    assert run.data.metrics["clips_ok"] == 1.0
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "manifest.json" in artifacts
    mlflow.set_tracking_uri("")  # leave no global state behind for other tests


def test_two_materializations_writing_runs_at_once_leave_the_store_consistent(tmp_path):
    """Two processes materialize stages into one SQLite store at the same time (as two Dagster runs or a DVC
    repro beside a Dagster run would): every run is complete, nothing is lost or mixed, the database is intact."""
    import sqlite3
    import subprocess
    import sys

    from tests.conftest import Project, need_media

    need_media()
    store = tmp_path / "shared"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlruns.db'}"
    projects = []
    for name in ("a", "b"):
        proj = Project(tmp_path / name)
        proj.write_params(mlflow__enabled=True, mlflow__uri=uri, mlflow__artifact_dir=str(store / "mlartifacts"))
        proj.add_sample("carphone_pristine.mp4")
        proj.add_sample("plates_pan.mp4")
        projects.append(proj)
    cli = [sys.executable, "-m", "orchestration.cli"]
    subprocess.run([*cli, "tracking", "init"], cwd=projects[0].root, check=True, capture_output=True, timeout=300)
    procs = [subprocess.Popen([*cli, "stage", "raw_clips", "region_tracks", "--orchestrator", f"proc-{p.root.name}"],
                              cwd=p.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in projects]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-2000:]

    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "aubergine-ingest"]  # created once
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4
    by_engine: dict[str, list] = {}
    for run in runs:
        assert run.info.status == "FINISHED"
        by_engine.setdefault(run.data.tags["aubergine.orchestrator"], []).append(run)
        assert run.data.params["profile"] == "embedded" and run.data.metrics["duration_s"] > 0
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert names, f"run {run.info.run_id} ({run.data.tags['aubergine.stage']}) has no artifacts"
    assert sorted(by_engine) == ["proc-a", "proc-b"]
    for engine_runs in by_engine.values():
        assert sorted(r.data.tags["aubergine.stage"] for r in engine_runs) == ["raw_clips", "region_tracks"]
        assert {r.data.metrics.get("clips_ok") for r in engine_runs if r.data.tags["aubergine.stage"] == "raw_clips"} == {2.0}
    # The two processes really overlapped, or this test would prove nothing.
    spans = {engine: [(r.info.start_time, r.info.end_time) for r in rs] for engine, rs in by_engine.items()}
    assert any(a0 < b1 and b0 < a1 for a0, a1 in spans["proc-a"] for b0, b1 in spans["proc-b"]), spans
    with sqlite3.connect(store / "mlruns.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
