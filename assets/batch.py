"""Per-clip work, isolated: one clip's failure is recorded and the batch goes on; clips may run in parallel."""

from __future__ import annotations

import multiprocessing
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm


@dataclass
class ClipOutcome:
    clip_id: str
    ok: bool
    result: Any = None
    error: str | None = None


def _run_one(fn: Callable, clip_id: str, args: tuple) -> ClipOutcome:
    try:
        return ClipOutcome(clip_id, True, fn(*args))
    except Exception as err:  # noqa: BLE001 - isolation is the point: record and continue
        detail = f"{type(err).__name__}: {err}"
        if not isinstance(err, (OSError, ValueError, RuntimeError)):
            detail += "\n" + traceback.format_exc(limit=3)
        return ClipOutcome(clip_id, False, error=detail)


def _init_worker() -> None:
    import cv2

    # Same as the parent (orchestration/runner.py): one OpenCV thread keeps detector boxes deterministic.
    cv2.setNumThreads(1)


def map_clips(fn: Callable, jobs: Iterable[tuple[str, tuple]], workers: int = 1, desc: str = "clips") -> list[ClipOutcome]:
    """Run `fn(*args)` for each (clip_id, args); results come back in job order whatever the worker count."""
    jobs = list(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit="clip", disable=None)
    outcomes: list[ClipOutcome] = []
    try:
        if workers <= 1 or len(jobs) <= 1:
            for clip_id, args in jobs:
                outcomes.append(_run_one(fn, clip_id, args))
                bar.update()
        else:
            # Spawned, not forked: a fork of a process whose torch/OpenMP thread pools are running deadlocks in the
            # child (seen: region_tracks with the trained detector hung at 0% CPU after a training stage).
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker) as pool:
                futures = [pool.submit(_run_one, fn, clip_id, args) for clip_id, args in jobs]
                for future in futures:
                    outcomes.append(future.result())
                    bar.update()
    finally:
        bar.close()
    return outcomes


@dataclass(frozen=True)
class CachedJob:
    clip_id: str
    key: str  # the clip's entry key in the stage's ClipCache
    args: tuple
    # What the work writes, relative to `out_root`: files or folders, or a function of the work's result giving them.
    outputs: tuple[str, ...] | Callable[[Any], list[str]]


def map_clips_cached(fn: Callable, jobs: Iterable[CachedJob], cache, out_root: Path, workers: int = 1,
                     desc: str = "clips") -> tuple[list[ClipOutcome], dict[str, int]]:
    """`map_clips` that takes each clip from `cache` (an `assets.clip_cache.ClipCache`) when its key is there and
    computes only the others, storing what they wrote; returns the outcomes in job order and how many clips were
    reused and computed. A failed clip is not stored: the next run tries it again."""
    jobs = list(jobs)
    cache.sweep()
    outcomes: dict[str, ClipOutcome] = {}
    todo = []
    for job in jobs:
        result = cache.fetch(job.key, out_root)
        if result is None:
            todo.append(job)
        else:
            outcomes[job.clip_id] = ClipOutcome(job.clip_id, True, result)
    computed = map_clips(fn, [(j.clip_id, j.args) for j in todo], workers, f"{desc} ({len(jobs) - len(todo)} reused)")
    for job, outcome in zip(todo, computed):
        if outcome.ok:
            outputs = job.outputs(outcome.result) if callable(job.outputs) else list(job.outputs)
            cache.store(job.key, out_root, outputs, outcome.result, job.clip_id)
        outcomes[job.clip_id] = outcome
    return [outcomes[j.clip_id] for j in jobs], {"clips_reused": len(jobs) - len(todo), "clips_computed": len(todo)}
