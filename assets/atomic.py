"""Atomic writes: a reader never sees a half-written file or folder, even if the writer is killed.

Files are written beside their destination (same filesystem) and moved in with `os.replace`; folders are
built under a temporary name and swapped in. A killed stage leaves only `.tmp-*` leftovers, which no
reader globs and the next run removes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(dest: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest`, on error it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{dest.name}.", suffix=suffix or dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files; published outputs get the usual permissions.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(dest: str | Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | Path, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | Path, obj) -> None:
    # sort_keys + fixed indent: the same content always gives the same bytes (DVC and Dagster agree).
    write_text(dest, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name and swap it in whole; the old folder survives a failure."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.parent / f"{TMP_PREFIX}{dest.name}.old"
    if old.is_dir() and not dest.exists():
        os.replace(old, dest)  # killed between the two renames of a swap: the old output comes back
    for stale in dest.parent.glob(f"{TMP_PREFIX}{dest.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{dest.name}.", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_umask())
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
