"""Scheduled retraining and the new-clips sensor (Dagster), over the stage table's jobs.

- `retrain` job: training → evaluation → promotion, on the cron in `retraining.cron`.
- `full_pipeline` job: every asset from raw_clips to promoted_models, started by the `new_clips` sensor once
  per batch of clips that appear in `data.raw_dir`.

Both check params.yaml and the MLflow registry when they fire, so a malformed cron, a gate rule on an
unknown metric or an unreachable registry is a failed tick with the reason in the UI, before any training.

The sensor's cursor is a JSON map of clip file name → "size:mtime_ns" of every clip already requested; a file
whose signature is not in it is new. With no cursor yet (sensor just switched on), clips that the last
`raw_clips` materialization already listed count as seen, so switching the sensor on does not rerun the
lineage on old data. A file younger than `retraining.min_file_age_s` may still be copying and waits for the
next tick. The run key is a digest of the batch, so Dagster itself refuses to start the same batch twice.
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from orchestration import tracking
from orchestration.config import Params, RetrainingParams, load_params

PARAMS_PATH = os.environ.get("AUBERGINE_PARAMS", "params.yaml")
MANIFEST = Path("data/interim/raw_clips/manifest.json")
RETRAIN_STAGES = ("stage1_checkpoint", "stage2_checkpoint", "restoration_report", "mosaic_detector_checkpoint",
                  "mosaic_detection_report", "detector_checkpoint", "detection_report", "lora_checkpoint",
                  "anonymization_report", "promoted_models")
MAX_TAG_CHARS = 1000


def retraining_settings(path: str | Path = PARAMS_PATH) -> RetrainingParams:
    """The schedule's settings, read when the definitions load. No params file (the definitions imported
    outside a project) = defaults; an invalid one is an error naming the key, so Dagster shows it at load."""
    if not Path(path).is_file():
        return RetrainingParams()
    return load_params(path).retraining


@dataclass(frozen=True)
class ClipScan:
    new: dict[str, str]  # file name -> signature, not requested before
    settling: tuple[str, ...]  # too young to trust: still being copied?
    cursor: dict[str, str]  # what the sensor has requested, after this tick

    @property
    def run_key(self) -> str:
        digest = hashlib.sha256(json.dumps(sorted(self.new.items())).encode()).hexdigest()[:16]
        return f"new-clips-{digest}"


def _already_processed(manifest: Path) -> set[str]:
    try:
        return {Path(c["path"]).name for c in json.loads(manifest.read_text())["clips"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def scan_raw_folder(raw_dir: Path, extensions: tuple[str, ...], min_age_s: float, cursor: "str | None",
                    manifest: Path = MANIFEST, now: float | None = None) -> ClipScan:
    now = time.time() if now is None else now
    wanted = {e.lower() for e in extensions}
    ready: dict[str, str] = {}
    settling: list[str] = []
    for path in sorted(raw_dir.iterdir()):
        if not path.is_file() or path.suffix.lower() not in wanted or path.name.startswith("."):
            continue
        st = path.stat()
        if now - st.st_mtime < min_age_s:
            settling.append(path.name)
        else:
            ready[path.name] = f"{st.st_size}:{st.st_mtime_ns}"
    if cursor:
        seen = json.loads(cursor)
    else:
        done = _already_processed(manifest)
        seen = {name: sig for name, sig in ready.items() if name in done}
    new = {name: sig for name, sig in ready.items() if seen.get(name) != sig}
    # Forget files that went away, so the cursor does not grow without bound; keep settling ones' old entries.
    kept = {name: sig for name, sig in seen.items() if name in ready or name in settling}
    return ClipScan(new=new, settling=tuple(settling), cursor={**kept, **new})


def preflight(path: str | Path = PARAMS_PATH) -> Params:
    """What a tick checks before it may start a run: params.yaml valid (cron, gate rules) and the registry up."""
    params = load_params(path)
    tracking.check_reachable(params)
    return params


def build(jobs: dict, settings: RetrainingParams):
    """The schedule and the sensor, for `dg.Definitions`."""

    @dg.schedule(
        name="retrain_schedule", job=jobs["retrain"], cron_schedule=settings.cron, execution_timezone=settings.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING if settings.schedule_running else dg.DefaultScheduleStatus.STOPPED,
        description=f"Retrain → evaluate → promote on `retraining.cron` ({settings.cron}, {settings.timezone}).",
    )
    def retrain_schedule(context: dg.ScheduleEvaluationContext):
        preflight()  # raises: the tick fails with the reason, no run starts
        return dg.RunRequest(tags={"aubergine/trigger": "schedule",
                                   "aubergine/scheduled_for": context.scheduled_execution_time.isoformat()})

    @dg.sensor(
        name="new_clips", job=jobs["full_pipeline"], minimum_interval_seconds=settings.sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING if settings.sensor_running else dg.DefaultSensorStatus.STOPPED,
        description="Starts the whole lineage, through promotion, once per batch of new clips in `data.raw_dir`.",
    )
    def new_clips(context: dg.SensorEvaluationContext):
        params = load_params(PARAMS_PATH)
        raw = Path(params.data.raw_dir)
        if not raw.is_dir():
            return dg.SkipReason(f"raw folder {raw} does not exist")
        found = scan_raw_folder(raw, params.data.extensions, params.retraining.min_file_age_s, context.cursor)
        if not found.new:
            waiting = f"; waiting for {len(found.settling)} file(s) still being written" if found.settling else ""
            return dg.SensorResult(skip_reason=f"no new clips{waiting}", cursor=json.dumps(found.cursor, sort_keys=True))
        # The cursor only moves once the run can start: an unreachable registry fails this tick and the
        # same batch is tried again on the next one.
        tracking.check_reachable(params)
        names = ", ".join(sorted(found.new))
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=found.run_key, tags={
                "aubergine/trigger": "new_clips", "aubergine/new_clips": names[:MAX_TAG_CHARS],
                "aubergine/new_clip_count": str(len(found.new))})],
            cursor=json.dumps(found.cursor, sort_keys=True),
        )

    return [retrain_schedule], [new_clips]
