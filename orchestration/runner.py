"""Run one stage exactly the same way whoever asks: the Dagster asset, the DVC command and the CLI all
land here, so a DVC stage runs exactly the code a Dagster materialization runs."""

from __future__ import annotations

import time

import cv2
from dataclasses import dataclass
from pathlib import Path

from orchestration import launcher, project_lock, tracking
from orchestration.config import Params, load_params, section
from orchestration.stage_io import StageOutput
from orchestration.stages import stage as lookup


@dataclass
class StageReport:
    name: str
    output: StageOutput
    seconds: float
    mlflow_run_id: str | None
    mlflow_run_url: str | None


def run_stage(
    name: str, params: Params | None = None, *, params_path: str | Path = "params.yaml", orchestrator: str = "cli",
    run_id: str | None = None,
) -> StageReport:
    st = lookup(name)
    # With more than one OpenCV thread the detectors' boxes differed run to run (seen: 3 distinct results
    # in 3 runs on the same clip), for ~15% speed. One thread keeps outputs byte-identical; clips still
    # run in parallel across `data.workers` processes.
    cv2.setNumThreads(1)
    params = params or load_params(params_path)  # validated before any work starts
    tracking.check_reachable(params)  # an unreachable registry is said now, not after hours of training
    distributed = st.distributed and params.training.launcher != "none"
    if distributed:
        launcher.binary(params.training)  # a missing launcher is said now, before the lock and the MLflow run
        if params.training.node_rank > 0:
            # Another machine of a multi-node job: its processes join machine 0's, which holds the project lock,
            # the MLflow run and the outputs (waiting for that lock here would deadlock the rendezvous).
            started = time.perf_counter()
            output = launcher.run_distributed(name, params, None, None)
            return StageReport(name, output, time.perf_counter() - started, None, None)
    # One run writes data/ at a time, whichever engine started it; waiting happens before the MLflow run opens,
    # so the wait is not counted as the stage's time.
    owner = project_lock.owner_for(orchestrator, run_id)
    with project_lock.held(owner, name, timeout_s=params.lock.timeout_s, poll_s=params.lock.poll_s):
        sections = {key: section(params, key) for key in st.params if key not in ("profile", "profiles", "seed")}
        # The run is open while the stage works, so training stages can log curves and sample grids as they go;
        # a stage that raises leaves a FAILED run behind, which is what a person comparing runs wants to see.
        with tracking.stage_run(
            params, stage=name, track=st.track, orchestrator=orchestrator, run_id=run_id, data_hash="",
            param_sections=sections,
        ) as run:
            started = time.perf_counter()
            if distributed:
                output = launcher.run_distributed(name, params, run.info.run_id if run is not None else None,
                                                  tracking.tracking_uri(params) if run is not None else None)
            else:
                output = st.run(params)
            seconds = time.perf_counter() - started
            tracking.set_tags({"data.input_hash": output.input_hash})
            metrics = {**output.metadata, "duration_s": round(seconds, 3)}
            tracking.log_stage_outputs(run, metrics, list(output.images.values()) + [p for p in output.files if p.is_file()])
            run_id_out = run.info.run_id if run is not None else None
            url = tracking.run_url(params, run)
    return StageReport(name, output, seconds, run_id_out, url)
