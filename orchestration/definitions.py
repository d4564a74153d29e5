"""Dagster definitions, generated from the stage table: one asset per stage, plus asset checks.

`dagster dev` (or `dagster-webserver`) from the repository root finds this module through
`[tool.dagster]` in pyproject.toml. Every asset calls `run_stage`, the same entry point that `dvc repro`
runs, so both engines produce the same files.
"""


import base64
import inspect
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from orchestration import automation, project_lock
from orchestration.automation import RETRAIN_STAGES
from orchestration.config import ConfigError, Params, load_params
from orchestration.runner import run_stage
from orchestration.stages import STAGES, Stage

MAX_INLINE_IMAGES = 4


class AubergineParams(dg.ConfigurableResource):
    """Where the knobs come from; point `path` at another params file to materialize a variant."""

    path: str = "params.yaml"

    def load(self) -> Params:
        try:
            return load_params(self.path)
        except ConfigError as err:
            raise dg.Failure(description=str(err)) from None


def _metadata_value(value):
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, str) and "\n" in value:
        return dg.MetadataValue.md("```\n" + value + "\n```")
    return dg.MetadataValue.text(str(value))


def _image_markdown(images: dict[str, Path]) -> str:
    parts = []
    for label, path in list(images.items())[:MAX_INLINE_IMAGES]:
        encoded = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"**{label}**\n\n![{label}](data:image/png;base64,{encoded})")
    if len(images) > MAX_INLINE_IMAGES:
        parts.append(f"… and {len(images) - MAX_INLINE_IMAGES} more under `{Path(next(iter(images.values()))).parent}`")
    return "\n\n".join(parts)


def _stage_metadata(context, st: Stage, report) -> dict:
    meta = {k: _metadata_value(v) for k, v in report.output.metadata.items()}
    meta["duration_s"] = dg.MetadataValue.float(round(report.seconds, 2))
    meta["input_hash"] = dg.MetadataValue.text(report.output.input_hash)
    if report.mlflow_run_id:
        meta["mlflow_run_id"] = dg.MetadataValue.text(report.mlflow_run_id)
        meta["mlflow_run"] = dg.MetadataValue.url(report.mlflow_run_url or "")
        # Run tags show on the run's page in the UI: one link per stage's MLflow run.
        context.instance.add_run_tags(context.run_id, {f"mlflow/{st.name}": report.mlflow_run_url or report.mlflow_run_id})
    for label, text in report.output.markdown.items():
        meta[label] = dg.MetadataValue.md(text)
    if report.output.images:
        meta["contact_sheets"] = dg.MetadataValue.md(_image_markdown(report.output.images))
        meta["contact_sheet_files"] = dg.MetadataValue.json({k: str(v) for k, v in report.output.images.items()})
    for path in report.output.files:
        meta[f"file:{path.name}"] = dg.MetadataValue.path(str(path))
    return meta


def _asset_args(st: Stage) -> dict:
    return dict(
        name=st.name, group_name=st.group, description=st.description, kinds=set(st.kinds), tags={"track": st.track},
        metadata={"outs": dg.MetadataValue.json(list(st.outs)), "params": dg.MetadataValue.json(list(st.params))},
    )


def build_asset(st: Stage) -> dg.AssetsDefinition:
    if st.per_clip is not None:
        return build_per_clip_asset(st)

    @dg.asset(**_asset_args(st), deps=[dg.AssetKey(u) for u in st.upstream], pool=st.pool)
    def _asset(context: dg.AssetExecutionContext, params: AubergineParams) -> dg.MaterializeResult:
        report = run_stage(st.name, params.load(), orchestrator="dagster", run_id=context.run_id)
        return dg.MaterializeResult(metadata=_stage_metadata(context, st, report))

    return _asset


@contextmanager
def _scratch():
    # Beside the per-clip store, so that a clip's files are hard-linked into it rather than copied.
    root = Path("data/cache")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".tmp-scratch-") as scratch:
        yield Path(scratch)


def _mapping_key(index: int, clip_id: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', clip_id)[:48]}_{index}"


def build_per_clip_asset(st: Stage) -> dg.AssetsDefinition:
    """A per-clip stage as a graph-backed asset: one step lists the clips whose entry is not in the per-clip store,
    one step per such clip computes it (Dagster's dynamic outputs: the multiprocess executor runs them side by
    side, a Docker or Kubernetes executor in containers or pods of their own), and a last step runs the stage
    body, which takes every clip from the store and publishes the folder -- the same body `dvc repro` runs, so
    both engines write the same bytes. Asset key, upstream and checks are those of the stage table."""
    assert st.upstream, f"{st.name}: a per-clip stage needs an upstream stage"

    def lock(context, p, what: str):
        return project_lock.held(project_lock.owner_for("dagster", context.run_id), what, timeout_s=p.lock.timeout_s,
                                 poll_s=p.lock.poll_s)

    names = [f"upstream_{k}" for k in range(len(st.upstream))]

    @dg.op(name=f"{st.name}_pending_clips", ins={n: dg.In(dg.Nothing) for n in names}, out=dg.DynamicOut(str),
           description=f"Clips of {st.name} whose inputs, knobs or code have no entry in the per-clip store yet.")
    def pending(context: dg.OpExecutionContext, params: AubergineParams):
        p = params.load()
        with lock(context, p, f"{st.name} (planning)"), _scratch() as scratch:
            plan = st.per_clip(p, scratch)
            todo = plan.pending()
        context.log.info(f"{st.name}: {len(todo)} of {len(plan.jobs)} clips to compute; the others come from the store")
        for index, clip_id in enumerate(todo):
            yield dg.DynamicOutput(clip_id, mapping_key=_mapping_key(index, clip_id))

    @dg.op(name=f"{st.name}_clip", description=f"One clip of {st.name}, into the per-clip store.")
    def one_clip(context: dg.OpExecutionContext, params: AubergineParams, clip_id: str) -> str:
        p = params.load()
        with lock(context, p, f"{st.name} [{clip_id}]"), _scratch() as scratch:
            (outcome,), _ = st.per_clip(p, scratch, {clip_id}).run(1)
        if not outcome.ok:
            # One bad clip never sinks the run: the stage body tries it again and records it in its index.
            context.log.warning(f"{st.name}: clip {clip_id} failed: {outcome.error}")
        return clip_id

    @dg.op(name=f"{st.name}_publish", description=f"The {st.name} stage body over the store: writes its folder.")
    def publish(context: dg.OpExecutionContext, params: AubergineParams, computed: list[str]) -> None:
        report = run_stage(st.name, params.load(), orchestrator="dagster", run_id=context.run_id)
        meta = _stage_metadata(context, st, report)
        meta["clips_in_own_steps"] = dg.MetadataValue.int(len(computed))
        context.add_output_metadata(meta)

    def compose(**upstream):
        # Each upstream asset is an input of the planning step (Nothing: order only, no data passed).
        return publish(pending(**upstream).map(one_clip).collect())

    # Dagster reads the composition's parameters to match them with `ins`: one per upstream asset.
    compose.__signature__ = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    return dg.graph_asset(**_asset_args(st),
                          ins={n: dg.AssetIn(u, dagster_type=dg.Nothing) for n, u in zip(names, st.upstream)})(compose)


def _outcome_result(outcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "suite": outcome.suite,
            "rows": outcome.rows,
            "expectations": outcome.evaluated,
            "failed": dg.MetadataValue.json(outcome.failed),
        },
    )


@dg.asset_check(asset="raw_clips", blocking=True, description="Great Expectations suite over the clip manifest: "
                "unique ids, known statuses, a reason for every quarantine, accepted clips within the configured ranges.")
def raw_clips_manifest_expectations(params: AubergineParams) -> dg.AssetCheckResult:
    from orchestration.expectations import validate_raw_clips_manifest
    from orchestration.stage_io import RAW_CLIPS

    manifest = json.loads((RAW_CLIPS / "manifest.json").read_text())
    return _outcome_result(validate_raw_clips_manifest(manifest, params.load().data))


@dg.asset_check(asset="restoration_dataset", blocking=True, description="Great Expectations suite over the dataset "
                "index: unique scene names, train/val only, GT/LQ/mask frame counts equal frames_count.")
def restoration_dataset_expectations() -> dg.AssetCheckResult:
    from orchestration.expectations import validate_restoration_index
    from orchestration.stage_io import RESTORATION_DATASET

    rows = json.loads((RESTORATION_DATASET / "index.json").read_text())["scenes"]
    return _outcome_result(validate_restoration_index(rows))


@dg.asset_check(asset="restoration_dataset", description="The reader loads both splits: every version-2 field "
                "present with the right type, relative paths resolve.")
def restoration_dataset_readable() -> dg.AssetCheckResult:
    from assets.lada_meta import DatasetFormatError, RestorationDataset
    from orchestration.stage_io import RESTORATION_DATASET

    counts = {}
    try:
        for split in ("train", "val"):
            counts[split] = len(RestorationDataset(RESTORATION_DATASET, split))
    except DatasetFormatError as err:
        return dg.AssetCheckResult(passed=False, metadata={"error": str(err)})
    return dg.AssetCheckResult(passed=counts["train"] > 0, metadata={f"{k}_scenes": v for k, v in counts.items()})


def coverage_problems(clips: list[dict]) -> tuple[list[str], list[str], str]:
    """(clips that failed, clips without any region scene, one line saying which) from region_tracks' index."""
    failed = [c["clip_id"] for c in clips if c["status"] != "ok"]
    empty = [c["clip_id"] for c in clips if c["status"] == "ok" and c["scenes"] == 0]
    parts = []
    if failed:
        errors = {c["clip_id"]: c.get("error") or "" for c in clips if c["status"] != "ok"}
        parts.append(f"{len(failed)} clip(s) failed: " + "; ".join(f"{k} ({v})" for k, v in errors.items()))
    if empty:
        parts.append(f"{len(empty)} clip(s) without any region (no face/plate found): {', '.join(empty)}")
    return failed, empty, " | ".join(parts) or f"all {len(clips)} clips have regions"


@dg.asset_check(asset="region_tracks", description="Warns when clips failed to decode or yielded no region.")
def region_tracks_coverage(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    from orchestration.stage_io import REGION_TRACKS

    failed, empty, summary = coverage_problems(json.loads((REGION_TRACKS / "index.json").read_text())["clips"])
    if failed or empty:
        # The description shows in the UI; the log line is what `dagster asset materialize` prints.
        context.log.warning(f"region_tracks_coverage: {summary}")
    return dg.AssetCheckResult(
        passed=not failed and not empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=summary,
        metadata={"failed_clips": dg.MetadataValue.json(failed), "clips_without_scenes": dg.MetadataValue.json(empty)},
    )


ASSETS = [build_asset(st) for st in STAGES]


@dg.asset_check(asset="unified_coco", blocking=True, description="Great Expectations suites over both COCO splits: "
                "boxes inside their image, positive area, known categories, unique image and annotation ids, files exist.")
def unified_coco_expectations() -> dg.AssetCheckResult:
    from orchestration.detection_stages import UNIFIED_COCO
    from orchestration.expectations import validate_coco

    outcomes = [o for split in ("train", "val") for o in validate_coco(json.loads((UNIFIED_COCO / f"{split}.json").read_text()), UNIFIED_COCO)]
    return dg.AssetCheckResult(
        passed=all(o.success for o in outcomes),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "suites": ", ".join(sorted({o.suite for o in outcomes})),
            "rows": sum(o.rows for o in outcomes),
            "expectations": sum(o.evaluated for o in outcomes),
            "failed": dg.MetadataValue.json([f for o in outcomes for f in o.failed]),
        },
    )


CHECKS = [raw_clips_manifest_expectations, unified_coco_expectations, restoration_dataset_expectations, restoration_dataset_readable, region_tracks_coverage]

JOBS = {
    "data_lineage": dg.define_asset_job(
        "data_lineage", selection=dg.AssetSelection.assets(*[st.name for st in STAGES if st.name not in RETRAIN_STAGES]),
        description="Raw clips to the training sets: the Lada restoration dataset and the unified COCO set."),
    "retrain": dg.define_asset_job(
        "retrain", selection=dg.AssetSelection.assets(*RETRAIN_STAGES),
        description="Training → evaluation → promotion on the current datasets (the schedule's job). Training "
        "resumes a finished run when recipe and data are unchanged."),
    "full_pipeline": dg.define_asset_job(
        "full_pipeline", selection=dg.AssetSelection.all(),
        description="Every asset, raw clips through promotion (the new-clips sensor's job)."),
}
SCHEDULES, SENSORS = automation.build(JOBS, automation.retraining_settings())

# Dagster's multiprocess executor starts every step as a fresh process, and importing torch, torchvision, mlflow,
# Great Expectations and the diffusers stack costs 10-30 s per step on a 2-core machine -- more than most steps'
# own work. A forkserver that imports them once per run (Dagster's documented `start_method: forkserver` option)
# forks each step with them loaded; nothing in these imports starts a thread, so forking them is safe.
# libgomp reads its wait policy once, when torch loads it in the forkserver: set it before. Idle OpenMP threads
# that spin (the default) steal the cores of the step running beside them -- measured on 2 cores: two report
# and training steps side by side took 236 s spinning, 141 s passive; a step alone runs as fast either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
PRELOAD_MODULES = ["orchestration.definitions", "torch", "torchvision", "mlflow", "great_expectations", "transformers",
                   "diffusers", "peft"]
EXECUTOR = dg.multiprocess_executor.configured({"start_method": {"forkserver": {"preload_modules": PRELOAD_MODULES}}})
# On a cluster every step (one per clip in the per-clip stages) can run in a pod or container of its own:
# AUBERGINE_DAGSTER_EXECUTOR=k8s | docker picks Dagster's own executors (docs/deploy/dagster-cluster.yaml).
CLUSTER_EXECUTORS = {"k8s": ("dagster_k8s", "k8s_job_executor"), "docker": ("dagster_docker", "docker_executor")}


def select_executor(choice: str | None = None):
    choice = choice or os.environ.get("AUBERGINE_DAGSTER_EXECUTOR") or "multiprocess"
    if choice == "multiprocess":
        return EXECUTOR
    if choice not in CLUSTER_EXECUTORS:
        raise dg.DagsterInvalidDefinitionError(
            f"AUBERGINE_DAGSTER_EXECUTOR={choice!r}: not an executor of this project (multiprocess, {', '.join(CLUSTER_EXECUTORS)})")
    module, name = CLUSTER_EXECUTORS[choice]
    try:
        import importlib

        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise dg.DagsterInvalidDefinitionError(
            f"AUBERGINE_DAGSTER_EXECUTOR={choice}: the package {module.replace('_', '-')} is not installed; add it "
            f"with the same minor version as dagster (`uv add {module.replace('_', '-')}`)") from None

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=list(JOBS.values()),
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={"params": AubergineParams(path=automation.PARAMS_PATH)},
    executor=select_executor(),
)
