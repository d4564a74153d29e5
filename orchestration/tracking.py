"""MLflow tracking for stage materializations: one run per stage, tagged with who ran it and on what.

Default store: SQLite `mlruns.db` and an artifact folder `mlartifacts/` inside the project (MLflow 3 refuses
the plain file store without an opt-in). Set `mlflow.uri` in params.yaml, or MLFLOW_TRACKING_URI, to use a
server. The store is created once by `aubergine tracking init` (several processes migrating one SQLite file
at once race), which `make setup` runs.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from orchestration.config import Params

EXPERIMENT_PREFIX = "aubergine"
# Run tag of every evaluation run: the hash of the data and knobs its numbers were measured on. The promotion
# gate compares two versions' numbers directly only when their runs carry the same value.
EVAL_DATA_TAG = "eval.data_hash"


def repo_root() -> Path:
    # `dvc exp run --temp` and queued experiments run in a copy under .dvc/tmp/exps that is deleted afterwards;
    # DVC_ROOT (set by DVC in every mode) names the real repository, whose store the runs belong in.
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


# `mlflow.set_tracking_uri` writes MLFLOW_TRACKING_URI itself, so a value we set must not be mistaken for the
# user's choice later, or one project's store leaks into the next (seen in the tests).
_uri_we_set: str | None = None


def tracking_uri(params: Params, root: Path | None = None) -> str:
    root = root or repo_root()
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env != _uri_we_set:
        return env
    return params.mlflow.uri or f"sqlite:///{(root / 'mlruns.db').resolve()}"


def git_commit(root: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or repo_root(), capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root or repo_root(),
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{commit}-dirty" if dirty and commit != "unknown" else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _mlflow(params: Params):
    import mlflow  # imported lazily: it costs seconds, and only tracked runs need it

    global _uri_we_set
    uri = tracking_uri(params)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if os.environ.get("MLFLOW_TRACKING_URI") != before:  # MLflow wrote it, not the user
        _uri_we_set = os.environ.get("MLFLOW_TRACKING_URI")
    return mlflow


def client(params: Params):
    """An MlflowClient on the project's store (registry included)."""
    _mlflow(params)
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def init_store(params: Params) -> str:
    """Create (and migrate) the tracking store once, before any parallel writer."""
    client(params).search_experiments(max_results=1)
    return tracking_uri(params)


_ready_stores: set[str] = set()


def ensure_store(params: Params) -> None:
    """`init_store` under an exclusive file lock beside a SQLite store, once per process: two stages that start
    together on a project whose store `aubergine tracking init` never made (the sensor's first run starts
    `raw_clips` and `synthetic_scenes` at once) would otherwise both migrate the new file, and one fails in
    alembic ("expected to match one row")."""
    import fcntl

    uri = tracking_uri(params)
    if uri in _ready_stores or not uri.startswith("sqlite:///"):
        return
    database = Path(uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(f".{database.name}.init-lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            init_store(params)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    _ready_stores.add(uri)


def experiment_id(params: Params, track: str) -> str:
    mlflow = _mlflow(params)
    name = f"{EXPERIMENT_PREFIX}-{track}"
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    artifacts = (repo_root() / params.mlflow.artifact_dir / name).resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=artifacts)
    except Exception:  # another process created it between our lookup and create
        again = mlflow.get_experiment_by_name(name)
        if again is None:
            raise
        return again.experiment_id


def flatten(prefix: str, obj) -> dict[str, str]:
    data = obj.model_dump() if hasattr(obj, "model_dump") else obj
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), value))
    else:
        out[prefix] = str(data)
    return out


@contextmanager
def stage_run(
    params: Params, *, stage: str, track: str, orchestrator: str, run_id: str | None, data_hash: str,
    param_sections: dict[str, object],
) -> Iterator[object | None]:
    """Open an MLflow run for a stage materialization; yields None when tracking is disabled."""
    if not params.mlflow.enabled:
        yield None
        return
    ensure_store(params)
    mlflow = _mlflow(params)
    tags = {
        "aubergine.stage": stage,
        "aubergine.track": track,
        "aubergine.orchestrator": orchestrator,
        "aubergine.profile": params.profile,
        "git.commit": git_commit(),
        "data.input_hash": data_hash,
        "dagster.run_id" if orchestrator == "dagster" else "aubergine.run_id": run_id or orchestrator,
    }
    tags = {k: v for k, v in tags.items() if v}
    if exp_name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = exp_name
    with mlflow.start_run(experiment_id=experiment_id(params, track), run_name=f"{stage}", tags=tags) as run:
        flat = {}
        for name, section in param_sections.items():
            flat.update(flatten(name, section))
        flat["seed"] = str(params.seed)
        flat["profile"] = params.profile
        mlflow.log_params(flat)
        yield run


def log_stage_outputs(run, metrics: dict[str, float], artifacts: list[Path], artifact_dir: str = "") -> None:
    if run is None:
        return
    import mlflow

    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric:
        mlflow.log_metrics(numeric, step=0)
    for path in artifacts:
        mlflow.log_artifact(str(path), artifact_path=artifact_dir or None)


def run_url(params: Params, run) -> str | None:
    """The run's page in the MLflow UI: the tracking server itself, or `mlflow.ui_url` serving the local store."""
    if run is None:
        return None
    uri = tracking_uri(params)
    base = uri if uri.startswith("http") else params.mlflow.ui_url
    return f"{base.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


class RegistryUnreachableError(RuntimeError):
    """The MLflow tracking store / model registry cannot be reached: said before any work starts."""


def check_reachable(params: Params, timeout_s: float = 5.0) -> str:
    """Fail fast, naming the store, when tracking is on but its store cannot be reached. MLflow's own client
    retries an unreachable server for minutes; a training run that finds out at its end loses its work."""
    if not params.mlflow.enabled:
        return "disabled"
    uri = tracking_uri(params)
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
                if response.status != 200:
                    raise RegistryUnreachableError(f"MLflow server {uri}: /health answered HTTP {response.status}")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise RegistryUnreachableError(
                f"MLflow tracking server / model registry {uri} is unreachable ({reason}); start it (make mlflow-ui) "
                "or point mlflow.uri / MLFLOW_TRACKING_URI at a running one") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise RegistryUnreachableError(f"MLflow store {uri}: folder {folder} does not exist")
    else:  # a database URI (postgresql://, mysql://): one cheap query through MLflow itself
        try:
            client(params).search_experiments(max_results=1)
        except Exception as err:  # noqa: BLE001 - any driver error means the same thing here
            raise RegistryUnreachableError(f"MLflow store {uri} is unreachable: {err}") from None
    return uri



def log_report(run, report_dir: Path, artifact_dir: str = "report") -> None:
    """Log an evaluation report folder (metrics.json, HTML page, its images) to an open MLflow run: numeric
    metrics as metrics, the whole folder as artifacts so the page's relative image links keep working."""
    if run is None:
        return
    import json

    import mlflow

    values = json.loads((Path(report_dir) / "metrics.json").read_text())
    numeric = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric:
        mlflow.log_metrics(numeric, step=0)
    mlflow.log_artifacts(str(report_dir), artifact_path=artifact_dir)


def log_step(metrics: dict[str, float], step: int) -> None:
    """Log training metrics at `step` to the active stage run (no-op without one, e.g. tracking disabled)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_image(path: Path, artifact_dir: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_artifact(str(path), artifact_path=artifact_dir)


def log_dir(path: Path, artifact_dir: str) -> None:
    """A whole folder (e.g. a report with its images) as artifacts of the active run."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_artifacts(str(path), artifact_path=artifact_dir)


def set_tags(tags: dict[str, str]) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.set_tags(tags)


def register_pytorch_model(params: Params, model, name: str, alias: str = "challenger", tags: dict | None = None) -> dict:
    """Log `model` on the active run and register it as a new version of `name`, aliased `alias`.

    Pickle serialisation: MLflow 3's default `torch.export` path cannot trace deformable convolution, and
    the pickled module loads back with `mlflow.pytorch.load_model("models:/<name>@<alias>")`. The `training`
    package rides along as code, so the model loads in any environment that has torch and torchvision.
    """
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return {"registered": False, "reason": "tracking disabled"}
    import training

    info = mlflow.pytorch.log_model(
        model, name="model", serialization_format="pickle", code_paths=[str(Path(training.__file__).parent)],
        pip_requirements=["torch", "torchvision"],
    )
    version = mlflow.register_model(info.model_uri, name, tags=tags or {})
    client(params).set_registered_model_alias(name, alias, version.version)
    return {"registered": True, "model": name, "version": int(version.version), "alias": alias,
            "model_uri": f"models:/{name}/{version.version}", "run_id": run.info.run_id}


def register_pyfunc_model(params: Params, python_model, artifacts: dict[str, str], name: str, alias: str = "challenger",
                          tags: dict | None = None, model_config: dict | None = None) -> dict:
    """Log `python_model` (an `mlflow.pyfunc.PythonModel`) with `artifacts` on the active run and register it as
    a new version of `name`, aliased `alias`; the project's `inference`, `training` and `assets` packages ride
    along (the model's code, fonts included)."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return {"registered": False, "reason": "tracking disabled"}
    import assets
    import inference
    import training

    info = mlflow.pyfunc.log_model(
        name="model", python_model=python_model, artifacts=artifacts, model_config=model_config or {},
        code_paths=[str(Path(m.__file__).parent) for m in (inference, training, assets)],
        pip_requirements=["torch", "torchvision", "diffusers", "transformers", "peft", "opencv-python-headless", "pillow"],
    )
    version = mlflow.register_model(info.model_uri, name, tags=tags or {})
    client(params).set_registered_model_alias(name, alias, version.version)
    return {"registered": True, "model": name, "version": int(version.version), "alias": alias,
            "model_uri": f"models:/{name}/{version.version}", "run_id": run.info.run_id}
