"""What every stage body shares: the lineage's data paths, the StageOutput it returns, and the small helpers
for reading an upstream output and hashing inputs. Kept apart from the bodies so that a stage module
importing it does not, for DVC, depend on every other stage's code (see `orchestration/code_deps.py`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from assets.clip_cache import ClipCache, digest, file_digest
from orchestration.code_deps import ROOT, code_files

RAW_CLIPS = Path("data/interim/raw_clips")
SYNTHETIC_SCENES = Path("data/interim/synthetic_scenes")
REGION_TRACKS = Path("data/interim/region_tracks")
EGGPLANT_GT = Path("data/interim/eggplant_gt")
MOSAIC_LQ = Path("data/interim/mosaic_lq")
RESTORATION_DATASET = Path("data/datasets/restoration")
DATASET_REPORT = Path("data/reports/restoration_dataset")
DATASET_METRICS = Path("data/metrics/restoration_dataset.json")
# What a run measured of itself (seconds, rates, memory): differs on every re-run with the same inputs, so it stays
# out of every DVC-tracked output (metrics files, model folders) and goes to MLflow and here (untracked).
TIMINGS = Path("data/timings")
TIMING_KEYS = frozenset({
    "train_seconds", "sample_seconds", "iters_per_s", "iters_per_s_last_window", "images_per_s",
    "images_per_s_last_window", "steps_per_s", "peak_memory_mb",
})


class StageInputError(RuntimeError):
    pass


@dataclass
class StageOutput:
    metadata: dict = field(default_factory=dict)  # numbers and short texts for Dagster / MLflow
    images: dict[str, Path] = field(default_factory=dict)  # label -> PNG shown in the UI and logged
    files: list[Path] = field(default_factory=list)  # other artifacts worth logging
    input_hash: str = ""
    markdown: dict[str, str] = field(default_factory=dict)  # label -> Markdown (tables) shown in Dagster


def read_json(path: Path, stage: str) -> dict:
    """An upstream stage's JSON output, or a StageInputError saying which stage to materialize."""
    if not path.is_file():
        raise StageInputError(f"{path}: missing; materialize `{stage}` first")
    return json.loads(path.read_text())


def hash_files(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(*parts) -> str:
    """A short hash of JSON-able parts (recipe sections, seeds, input hashes): the identity of a training run."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def split_timings(values: dict) -> tuple[dict, dict]:
    """(what a re-run with the same inputs reproduces, the run's timings) of a flat dict."""
    return ({k: v for k, v in values.items() if k not in TIMING_KEYS},
            {k: v for k, v in values.items() if k in TIMING_KEYS})


def without_timings(history: list[dict]) -> list[dict]:
    return [split_timings(record)[0] for record in history]


def write_timings(name: str, timings: dict, history: list[dict] | None = None, step: str = "iteration") -> Path:
    """`data/timings/<name>.json`, beside `data/metrics/<name>.json`: the run's summary timings and, per logged
    window, its step and timings."""
    from assets.atomic import write_json

    windows = []
    for record in history or []:
        timed = split_timings(record)[1]
        if timed:
            windows.append({step: record.get(step), **timed})
    dest = TIMINGS / f"{name}.json"
    write_json(dest, {**timings, "windows": windows})
    return dest


def code_version(body) -> str:
    """The stage body's code, as DVC sees it (the files of its imports, `orchestration.code_deps`)."""
    return digest(*[(f, file_digest(ROOT / f)) for f in code_files(body)])


def stage_cache(name: str, body, *config) -> ClipCache:
    """The per-clip store of one stage; its key covers the body's code and the `config` its clips' work reads
    (resolved params sections, weights files' hashes)."""
    dumped = [c.model_dump(mode="json") if hasattr(c, "model_dump") else c for c in config]
    return ClipCache(name, digest(code_version(body), *dumped))


def clip_index(outcomes, extra: dict | None = None, keys: dict[str, str] | None = None) -> dict:
    """A per-clip stage's index.json: one entry per clip, ok or failed with its error. `keys`: each clip's cache
    key, kept in its entry so that the stages below key their own work on it (same key, same bytes)."""
    clips = []
    for o in outcomes:
        entry = {"clip_id": o.clip_id, "status": "ok" if o.ok else "failed", "error": o.error}
        entry.update(o.result or {})
        if keys and o.ok:
            entry["cache_key"] = keys[o.clip_id]
        clips.append(entry)
    return {"clips": clips, **(extra or {})}


def batch_failures(index: dict) -> dict:
    """The failed clips of a `clip_index`, as stage metadata; raises when every clip failed."""
    failed = [c for c in index["clips"] if c["status"] != "ok"]
    if failed and len(failed) == len(index["clips"]):
        # One bad clip never sinks the batch, but a batch where every clip failed is a broken stage.
        detail = "\n".join(f"{c['clip_id']}: {c['error']}" for c in failed)
        raise StageInputError(f"every clip failed:\n{detail}")
    return {"failed_clips": len(failed), "failures": "\n".join(f"{c['clip_id']}: {c['error']}" for c in failed) or "none"}
