"""A content-addressed store of per-clip stage outputs, so that a run computes only the clips whose inputs changed.

An entry holds what one clip's work wrote (its files, relative to the stage's output folder) and the result
that goes into the stage's index. Its key is a hash of everything the work reads: the stage's code version and
knobs (the stage key), and the clip's own inputs (its content hash, the upstream records it reads). Same key,
same bytes: a stage that takes an entry instead of recomputing writes exactly what a from-scratch run writes.

Both engines share the store (it sits in the project, `data/cache/clips`, next to the outputs), so a clip
computed by a Dagster run is reused by `dvc repro` and the other way round. Entries are built under a `.tmp-`
name and renamed into place last, so a killed run leaves no half-written entry, only a temporary folder that
the next run removes. Files are hard-linked between the store and the outputs where the filesystem allows
(outputs are only ever replaced whole, never edited in place), else copied.

Eviction: least recently used entries go first once the store passes `cache.max_gb` (after each per-clip
stage), and `aubergine cache --prune / --clear` does it by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_ROOT = Path("data/cache/clips")
ENTRY = "entry.json"
TMP_PREFIX = ".tmp-"


def digest(*parts) -> str:
    """A stable hash of JSON-able parts (dicts in key order)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file, or of every file under a folder (names and bytes); '-' for a missing path."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    elif path.is_file():
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    else:
        return "-"
    return h.hexdigest()


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(src, dest)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ClipCache:
    """The entries of one stage: `stage_key` is the stage's code version and knobs (see orchestration.lineage)."""

    stage: str
    stage_key: str
    root: Path = CACHE_ROOT

    @property
    def folder(self) -> Path:
        return self.root / self.stage

    def key(self, clip_inputs) -> str:
        return digest(self.stage, self.stage_key, clip_inputs)

    def _entry(self, key: str) -> Path:
        return self.folder / key[:2] / key

    def has(self, key: str) -> bool:
        return (self._entry(key) / ENTRY).is_file()

    def fetch(self, key: str, dest_root: Path) -> dict | None:
        """Put the entry's files under `dest_root` and return its result; None (nothing written) when there is
        no complete entry for `key`."""
        entry = self._entry(key)
        try:
            meta = json.loads((entry / ENTRY).read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        files = entry / "files"
        # A damaged entry (a file removed or cut by hand) is recomputed, never half-used.
        for rel, size in meta["files"].items():
            if not (files / rel).is_file() or (files / rel).stat().st_size != size:
                shutil.rmtree(entry, ignore_errors=True)
                return None
        for rel in meta["files"]:
            _link_or_copy(files / rel, dest_root / rel)
        os.utime(entry / ENTRY)  # least recently used goes first
        return meta["result"]

    def store(self, key: str, src_root: Path, outputs: list[str], result, clip_id: str) -> None:
        """Record what one clip's work wrote under `src_root` at `outputs` (files or folders, relative)."""
        entry = self._entry(key)
        if (entry / ENTRY).is_file():
            return
        tmp = entry.parent / f"{TMP_PREFIX}{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        files: dict[str, int] = {}
        try:
            for out in outputs:
                path = src_root / out
                found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
                for f in found:
                    rel = str(f.relative_to(src_root))
                    _link_or_copy(f, tmp / "files" / rel)
                    files[rel] = f.stat().st_size
            (tmp / "files").mkdir(parents=True, exist_ok=True)
            (tmp / ENTRY).write_text(json.dumps({"clip_id": clip_id, "stage": self.stage, "result": result,
                                                 "files": files, "created": time.time()}, sort_keys=True))
            try:
                os.replace(tmp, entry)
            except OSError:  # another run stored the same key first: same key, same bytes
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def sweep(self) -> int:
        """Remove temporary folders that killed runs left; returns how many."""
        removed = 0
        for tmp in self.folder.glob(f"*/{TMP_PREFIX}*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or not _pid_alive(int(pid)) or int(pid) == os.getpid():
                shutil.rmtree(tmp, ignore_errors=True)
                removed += 1
        return removed


def entries(root: Path = CACHE_ROOT) -> list[tuple[Path, float, int]]:
    """(entry folder, last use, bytes) of every complete entry."""
    out = []
    for meta in root.glob(f"*/*/*/{ENTRY}"):
        if meta.parent.name.startswith(TMP_PREFIX):
            continue
        # The entry lists its files' sizes: reading that beats a stat of every file of the store after each stage.
        try:
            size = sum(json.loads(meta.read_text())["files"].values()) + meta.stat().st_size
        except (OSError, ValueError, KeyError):
            continue
        out.append((meta.parent, meta.stat().st_mtime, size))
    return out


def usage(root: Path = CACHE_ROOT) -> dict[str, dict]:
    """Per stage: entries and bytes."""
    out: dict[str, dict] = {}
    for entry, _, size in entries(root):
        stage = entry.parent.parent.name
        row = out.setdefault(stage, {"entries": 0, "bytes": 0})
        row["entries"] += 1
        row["bytes"] += size
    return out


def prune(max_bytes: int, root: Path = CACHE_ROOT) -> tuple[int, int]:
    """Remove least recently used entries until the store holds at most `max_bytes`; (entries, bytes) removed.
    A byte hard-linked into the outputs is counted here too: removing the entry frees it only once the outputs
    that share it are replaced."""
    found = sorted(entries(root), key=lambda e: e[1])
    total = sum(size for _, _, size in found)
    removed = freed = 0
    for entry, _, size in found:
        if total <= max_bytes:
            break
        shutil.rmtree(entry, ignore_errors=True)
        total -= size
        removed += 1
        freed += size
    return removed, freed
