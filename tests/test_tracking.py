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
