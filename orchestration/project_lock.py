"""One writer at a time in `data/`, whichever engine starts the work.

Every stage run takes this lock (`runner.run_stage`), so a `dvc repro` started while a Dagster run writes the
same folders waits for it, or stops naming the holder once `lock.timeout_s` has passed.

The lock belongs to a *run*, not to one stage:
- A Dagster run executes its steps in parallel processes: every step of one run id shares the lock.
- Between two stages of a `dvc repro` or of a Dagster run no stage process is alive, yet the run is not over: the
  record names the run's long-lived driver process (the `dvc` process, the Dagster run worker) and stays held
  while that process lives, so the other engine cannot slip in between two stages of a run.
- Nothing has to unlock after a crash: a record whose driver and stage processes are all gone is stale and the
  next run takes it over (process ids are checked with their start times, so a recycled pid does not count).

The record is a JSON file read and rewritten under a short-lived `filelock` mutex; `aubergine lock` shows it and
`aubergine lock --break` removes it (for a holder on another host sharing the folder, whose processes this host
cannot see).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
from filelock import FileLock

RECORD = Path("data/.project-lock.json")


class ProjectLockedError(RuntimeError):
    """Another run holds the project lock and did not finish within the timeout."""


@dataclass(frozen=True)
class Owner:
    """Who runs: `key` is equal for every stage of one run; `driver` is the process whose life is the run's."""

    key: str
    engine: str
    run_id: str | None
    driver: tuple[int, float]  # pid, process start time


def _identity(proc: psutil.Process) -> tuple[int, float]:
    return proc.pid, proc.create_time()


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return ""


def _nearest(me: psutil.Process, is_driver: Callable[[list[str]], bool]) -> psutil.Process:
    for proc in me.parents():
        if is_driver(_cmdline(proc).split()):
            return proc
    return me


def _is_dvc(words: list[str]) -> bool:
    # DVC runs each stage command through a shell: dvc -> sh -> ./aubergine (exec python); the `dvc` process is
    # the whole `dvc repro`.
    return any(Path(w).name == "dvc" or w in ("dvc.cli", "dvc.__main__") for w in words[:3])


def _is_lineage(words: list[str]) -> bool:
    # `aubergine lineage` runs each stage in a process of its own.
    return "orchestration.cli" in words and "lineage" in words


def _dagster_driver(me: psutil.Process) -> psutil.Process:
    # The multiprocess executor starts steps from a multiprocessing forkserver (or spawn, or fork) under the run
    # worker: the first process up the tree that multiprocessing did not start is the run worker (this process
    # itself for the in-process executor).
    proc = me
    while "multiprocessing" in _cmdline(proc) or (proc is me and _is_multiprocessing_child()):
        parent = proc.parent()
        if parent is None:
            break
        proc = parent
    return proc


def _is_multiprocessing_child() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None


def owner_for(orchestrator: str, run_id: str | None) -> Owner:
    me = psutil.Process()
    if orchestrator == "dagster" and run_id:
        driver = _dagster_driver(me)
        return Owner(f"dagster:{run_id}", "dagster", run_id, _identity(driver))
    # Without a driver above it (a stage run by hand) the stage's own process is the run.
    driver = _nearest(me, _is_dvc if orchestrator == "dvc" else _is_lineage)
    pid, started = _identity(driver)
    return Owner(f"{orchestrator}:{pid}:{started}", orchestrator, run_id, (pid, started))


def _alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.01
    except (psutil.Error, OSError):
        return False


def _held(record: dict) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # another host's processes cannot be seen from here: only `aubergine lock --break` frees it
    if _alive(*record["driver"]):
        return True
    return any(_alive(int(pid), m["started"]) for pid, m in record.get("stages", {}).items())


def describe(record: dict, record_path: Path = RECORD) -> str:
    engine = record["engine"]
    who = f"Dagster run {record['run_id']}" if engine == "dagster" and record.get("run_id") else {
        "dvc": "a `dvc repro`"}.get(engine, f"`aubergine stage` ({engine})")
    stages = sorted({m["stage"] for m in record.get("stages", {}).values()})
    doing = f"running {', '.join(stages)}" if stages else f"between stages (last: {record.get('last_stage')})"
    return (f"{who}, {doing}; driver pid {record['driver'][0]} on {record['host']}, holding since {record['since']} "
            f"(record: {record_path})")


def read(record_path: Path = RECORD) -> dict | None:
    try:
        return json.loads(record_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return None  # a torn or foreign file: writes go through os.replace, so this is not ours; take over


def _write(record: dict, record_path: Path) -> None:
    tmp = record_path.with_name(f".tmp-{record_path.name}-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, record_path)


def _mutex(record_path: Path) -> FileLock:
    return FileLock(str(record_path) + ".mutex", timeout=60)


def _try_enter(owner: Owner, stage: str, record_path: Path) -> dict | None:
    """Join or take the lock; returns the holder's record when another run holds it."""
    me_pid, me_started = _identity(psutil.Process())
    with _mutex(record_path):
        record = read(record_path)
        # The same driver process is the same run seen from another angle (a test process that ran a Dagster job
        # and now runs a stage by hand): it joins rather than waiting for itself.
        ours = record is not None and (record["owner"] == owner.key or tuple(record["driver"]) == owner.driver)
        if record is not None and not ours:
            if _held(record):
                return record
            record = None  # stale: its run is over, take it over
        if record is None:
            record = {"owner": owner.key, "engine": owner.engine, "run_id": owner.run_id, "driver": list(owner.driver),
                      "host": socket.gethostname(), "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "stages": {}}
        entry = record["stages"].setdefault(str(me_pid), {"stage": stage, "started": me_started, "depth": 0})
        entry["depth"] += 1
        entry["stage"] = stage
        record["last_stage"] = stage
        _write(record, record_path)
        return None


def _leave(record_path: Path) -> None:
    me_pid = str(os.getpid())
    with _mutex(record_path):
        record = read(record_path)
        if record is None or me_pid not in record["stages"]:
            return
        entry = record["stages"][me_pid]
        entry["depth"] -= 1
        if entry["depth"] <= 0:
            del record["stages"][me_pid]
        # A driver that is this very process (a stage run by hand, the in-process executor) has no "between
        # stages" to protect beyond this call: free the lock now rather than for the rest of the process's life.
        if not record["stages"] and (record["driver"][0] == os.getpid() or not _alive(*record["driver"])):
            record_path.unlink(missing_ok=True)
        else:
            _write(record, record_path)


@contextmanager
def held(owner: Owner, stage: str, *, timeout_s: float, poll_s: float = 2.0, record_path: Path = RECORD,
         say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the project lock for one stage of `owner`'s run; wait while another run holds it (saying who, then
    once a minute) and raise ProjectLockedError after `timeout_s`."""
    # stderr, flushed: DVC and Dagster relay a stage's stderr as it comes, and a piped stdout would hold the message.
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    record_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    last_said = None
    while (holder := _try_enter(owner, stage, record_path)) is not None:
        waited = time.monotonic() - started
        if waited >= timeout_s:
            raise ProjectLockedError(
                f"stage {stage}: the project is locked by {describe(holder, record_path)}. Waited {waited:.0f} s "
                f"(lock.timeout_s = {timeout_s:g} in params.yaml); let it finish, or stop it and re-run. "
                "`aubergine lock` shows the holder.")
        if last_said is None or time.monotonic() - last_said >= 60:
            say(f"stage {stage}: waiting for the project lock, held by {describe(holder, record_path)} "
                f"(waited {waited:.0f} s of {timeout_s:g})")
            last_said = time.monotonic()
        time.sleep(poll_s)
    try:
        yield
    finally:
        _leave(record_path)


def break_lock(record_path: Path = RECORD) -> dict | None:
    """Remove the record whoever holds it; returns what it said."""
    with _mutex(record_path):
        record = read(record_path)
        record_path.unlink(missing_ok=True)
        return record


def status(record_path: Path = RECORD) -> tuple[dict | None, bool]:
    """(the record, whether it is still held)."""
    record = read(record_path)
    return record, record is not None and _held(record)
