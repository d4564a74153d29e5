"""Run a training stage data-parallel under `torchrun` or `accelerate launch` (params.yaml `training:`).

The stage runner (orchestration/runner.py) keeps what belongs to the stage run as a whole, whichever engine
started it: the project lock, the one MLflow run, the published outputs' logging. Only the stage body runs in
the launcher's processes: `python -m orchestration.launcher <stage> <job folder>` on every rank reads the
resolved params the runner wrote, trains (training/distributed.py says how the work is split), and rank 0
publishes and writes the StageOutput back for the runner. Rank 0 logs its curves and samples into the runner's
MLflow run (MLFLOW_RUN_ID), so a distributed stage is still one MLflow run.

torchrun stops every worker as soon as one exits non-zero and reports which rank failed; a rank that hangs in a
collective fails after `training.timeout_s` (the process group's timeout).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from orchestration.config import Params, TrainingParams
from orchestration.stage_io import StageOutput

JOBS = Path(".cache/launch")


class LauncherError(RuntimeError):
    """The launcher is missing, or the distributed job failed; the message says which and how."""


def binary(training: TrainingParams) -> str:
    """The launcher's executable: beside this interpreter (the project's environment) first, then PATH."""
    name = training.launcher  # the executable is called as the launcher is named
    beside = Path(sys.executable).with_name(name)
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        comes_with = "torch" if name == "torchrun" else "the accelerate package"
        raise LauncherError(f"training.launcher = {training.launcher}: `{name}` is neither beside {sys.executable} nor on "
                            f"PATH (it comes with {comes_with}; install it in this environment or set training.launcher: none)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(training: TrainingParams, stage: str, job: Path) -> list[str]:
    """The launcher's command line for `stage`: one process per `nproc_per_node`, on `nnodes` machines."""
    exe = binary(training)
    worker = ["-m", "orchestration.launcher", stage, str(job)]
    # torch elastic's own logs go into the job folder, removed after the run; by default each run leaves a new
    # /tmp/torchelastic_* folder behind (accelerate's --log_dir is the same setting of the torchrun it runs).
    logs = str(job / "torchelastic")
    if training.launcher == "torchrun":
        if training.nnodes == 1:
            where = ["--standalone"]
        else:
            where = ["--nnodes", str(training.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", training.rdzv_endpoint,
                     "--rdzv-id", f"aubergine-{stage}"]
        return [exe, *where, "--nproc-per-node", str(training.nproc_per_node), "--max-restarts", "0", "--log-dir", logs, *worker]
    # accelerate's multi-process path is torch.distributed.run underneath (`--multi_gpu`), also for gloo on CPU.
    # One machine: a free port (as torchrun --standalone finds one), so two jobs on a box do not collide.
    host, _, port = (training.rdzv_endpoint or f"127.0.0.1:{_free_port()}").rpartition(":")
    machines = ["--num_machines", str(training.nnodes), "--machine_rank", str(training.node_rank),
                "--main_process_ip", host or "127.0.0.1", "--main_process_port", port]
    return [exe, "launch", "--multi_gpu", "--num_processes", str(training.world), *machines, "--mixed_precision", "no",
            "--dynamo_backend", "no", "--num_cpu_threads_per_process", os.environ.get("OMP_NUM_THREADS", "1"), "--log_dir", logs,
            *worker]


def _output_to_json(output: StageOutput) -> dict:
    return {"metadata": output.metadata, "images": {k: str(v) for k, v in output.images.items()},
            "files": [str(p) for p in output.files], "input_hash": output.input_hash, "markdown": output.markdown}


def _output_from_json(data: dict) -> StageOutput:
    return StageOutput(metadata=data["metadata"], images={k: Path(v) for k, v in data["images"].items()},
                       files=[Path(p) for p in data["files"]], input_hash=data["input_hash"], markdown=data["markdown"])


def run_distributed(stage: str, params: Params, mlflow_run_id: str | None, tracking_uri: str | None) -> StageOutput:
    """Run `stage`'s body under the configured launcher and return rank 0's StageOutput."""
    training = params.training
    JOBS.mkdir(parents=True, exist_ok=True)
    job = Path(tempfile.mkdtemp(prefix=f"{stage}-", dir=JOBS))
    try:
        cmd = command(training, stage, job)  # finds the launcher: a missing one is said before any work
        (job / "params.json").write_text(params.model_dump_json())
        env = {**os.environ, "AUBERGINE_DIST_TIMEOUT_S": str(training.timeout_s)}
        env.pop("MLFLOW_RUN_ID", None)
        if mlflow_run_id and tracking_uri:
            env.update({"MLFLOW_RUN_ID": mlflow_run_id, "MLFLOW_TRACKING_URI": tracking_uri})
        print(f"{stage}: {training.launcher} with {training.nproc_per_node} process(es) per machine x {training.nnodes} "
              f"machine(s): {' '.join(cmd)}", flush=True)
        # The workers' output (progress bars, logs) goes straight to this process's terminal or log.
        done = subprocess.run(cmd, env=env)
        if done.returncode != 0:
            raise LauncherError(f"{stage}: the {training.launcher} job ({Path(cmd[0]).name}, "
                                f"{training.world} processes) exited with {done.returncode}; the failing rank's error "
                                f"is printed above. A re-run resumes from the last checkpoint.")
        result = job / "output.json"
        if training.node_rank > 0:  # rank 0 ran on machine 0, which publishes
            return StageOutput(metadata={"node_rank": training.node_rank, "processes": training.world})
        if not result.is_file():
            raise LauncherError(f"{stage}: the {training.launcher} job ended without rank 0's output ({result})")
        return _output_from_json(json.loads(result.read_text()))
    finally:
        shutil.rmtree(job, ignore_errors=True)


def _worker(stage: str, job: Path) -> None:
    """One rank: the stage body with the runner's params; rank 0 writes its StageOutput for the runner."""
    import cv2

    from orchestration.stages import stage as lookup
    from training import distributed as dist

    cv2.setNumThreads(1)  # as the runner does
    params = Params.model_validate_json((job / "params.json").read_text())
    rank = dist.current()
    st = lookup(stage)
    try:
        if rank.main and os.environ.get("MLFLOW_RUN_ID"):
            import mlflow

            # The runner's run: rank 0's curves and samples land beside the stage's outputs.
            with mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"]):
                output = st.run(params)
        else:
            output = st.run(params)
        if rank.main:
            tmp = job / "output.json.tmp"
            tmp.write_text(json.dumps(_output_to_json(output)))
            tmp.replace(job / "output.json")
    finally:
        dist.finish(rank)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m orchestration.launcher <stage> <job folder>  (started by torchrun / accelerate launch)")
    _worker(sys.argv[1], Path(sys.argv[2]))
