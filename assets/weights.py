"""Loading guard for weight files: a missing file, a Git-LFS pointer or a truncated/corrupt download is
reported with the path and how to provision it, before any framework tries to parse it."""

from __future__ import annotations

import hashlib
from pathlib import Path

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"


class WeightsError(FileNotFoundError):
    pass


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(path: str | Path, sha256: str | None, how_to_get: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; {how_to_get}")
    with open(path, "rb") as fh:
        head = fh.read(len(LFS_POINTER_PREFIX))
    if head == LFS_POINTER_PREFIX:
        raise WeightsError(f"{path}: is a Git-LFS pointer, not the weights; run `git lfs pull` or {how_to_get}")
    if sha256 and (actual := sha256_file(path)) != sha256:
        raise WeightsError(
            f"{path}: checksum mismatch (sha256 {actual[:12]}…, expected {sha256[:12]}…): truncated or wrong file; {how_to_get}"
        )
    return path
