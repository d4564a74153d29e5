"""The per-clip store (assets/clip_cache.py) and `map_clips_cached`: same key -> same files, nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from assets.batch import CachedJob, map_clips_cached
from assets.clip_cache import ENTRY, ClipCache, entries, prune, usage

ROOT = Path(__file__).resolve().parents[1]


def write_clip(clip_id: str, out_root: Path, text: str) -> dict:
    (out_root / clip_id).mkdir(parents=True, exist_ok=True)
    (out_root / clip_id / "a.txt").write_text(text)
    (out_root / f"{clip_id}.json").write_text(json.dumps({"text": text}))
    return {"chars": len(text)}


def fail_on_bad(clip_id: str, out_root: Path, text: str) -> dict:
    if text == "bad":
        raise ValueError(f"{clip_id}: bad input")
    return write_clip(clip_id, out_root, text)


def _jobs(cache: ClipCache, out: Path, texts: dict[str, str]) -> list[CachedJob]:
    return [CachedJob(cid, cache.key([cid, text]), (cid, out, text), (cid, f"{cid}.json")) for cid, text in texts.items()]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_second_run_reuses_unchanged_clips_and_writes_the_same_files(tmp_path):
    cache = ClipCache("demo", "v1", tmp_path / "cache")
    texts = {"c1": "one", "c2": "two", "c3": "three"}
    first = tmp_path / "first"
    outcomes, counts = map_clips_cached(write_clip, _jobs(cache, first, texts), cache, first)
    assert counts == {"clips_reused": 0, "clips_computed": 3}
    assert [o.result for o in outcomes] == [{"chars": 3}, {"chars": 3}, {"chars": 5}]

    # c2 changed, c4 is new, c3 is gone: only c2 and c4 are computed, c3 is not written.
    changed = {"c1": "one", "c2": "TWO!", "c4": "four"}
    second = tmp_path / "second"
    outcomes, counts = map_clips_cached(fail_on_bad, _jobs(cache, second, changed), cache, second)
    assert counts == {"clips_reused": 1, "clips_computed": 2}
    scratch = tmp_path / "scratch"
    for cid, text in changed.items():
        write_clip(cid, scratch, text)
    assert _tree(second) == _tree(scratch)
    assert [o.clip_id for o in outcomes] == ["c1", "c2", "c4"] and outcomes[0].result == {"chars": 3}
    # Another stage key (new code or knobs) reuses nothing.
    other = ClipCache("demo", "v2", tmp_path / "cache")
    assert map_clips_cached(write_clip, _jobs(other, tmp_path / "third", changed), other, tmp_path / "third")[1]["clips_reused"] == 0


def test_a_failed_clip_is_not_stored_and_a_damaged_entry_is_recomputed(tmp_path):
    cache = ClipCache("demo", "v1", tmp_path / "cache")
    out = tmp_path / "out"
    outcomes, counts = map_clips_cached(fail_on_bad, _jobs(cache, out, {"c1": "one", "c2": "bad"}), cache, out)
    assert [o.ok for o in outcomes] == [True, False] and "bad input" in outcomes[1].error
    assert usage(tmp_path / "cache") == {"demo": {"entries": 1, "bytes": usage(tmp_path / "cache")["demo"]["bytes"]}}
    # Cut a stored file: the entry is dropped and the clip computed again, never half-used.
    (stored,) = [e for e, _, _ in entries(tmp_path / "cache")]
    (stored / "files/c1/a.txt").write_text("o")
    again = tmp_path / "again"
    _, counts = map_clips_cached(write_clip, _jobs(cache, again, {"c1": "one"}), cache, again)
    assert counts == {"clips_reused": 0, "clips_computed": 1}
    assert (again / "c1/a.txt").read_text() == "one"


def test_prune_removes_least_recently_used_entries_first(tmp_path):
    cache = ClipCache("demo", "v1", tmp_path / "cache")
    out = tmp_path / "out"
    map_clips_cached(write_clip, _jobs(cache, out, {"old": "x" * 1000, "new": "y" * 1000}), cache, out)
    old_meta = next(e for e, _, _ in entries(tmp_path / "cache") if json.loads((e / ENTRY).read_text())["clip_id"] == "old")
    os.utime(old_meta / ENTRY, (time.time() - 3600, time.time() - 3600))
    size = sum(s for _, _, s in entries(tmp_path / "cache"))
    removed, freed = prune(size - 1, tmp_path / "cache")
    assert removed == 1 and freed > 1000
    (left,) = entries(tmp_path / "cache")
    assert json.loads((left[0] / ENTRY).read_text())["clip_id"] == "new"
    assert prune(0, tmp_path / "cache")[0] == 1 and entries(tmp_path / "cache") == []


KILLED_STORE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import assets.clip_cache as cc
    real = cc._link_or_copy
    count = [0]
    def slow(src, dest):
        real(src, dest)
        count[0] += 1
        if count[0] == 2:  # killed while the entry's files are being stored
            os.kill(os.getpid(), signal.SIGKILL)
    cc._link_or_copy = slow
    from tests.test_clip_cache import write_clip
    out = Path(sys.argv[1]) / "out"
    write_clip("c1", out, "one")
    cc.ClipCache("demo", "v1", Path(sys.argv[1]) / "cache").store(cc.ClipCache("demo", "v1").key(["c1", "one"]), out, ["c1", "c1.json"], {"chars": 3}, "c1")
""")


def test_a_store_killed_midway_leaves_no_entry_and_the_next_run_completes(tmp_path):
    run = subprocess.run([sys.executable, "-c", KILLED_STORE, str(tmp_path)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    leftovers = list((tmp_path / "cache").rglob(".tmp-*"))
    assert leftovers, "the kill should have left the temporary folder behind"
    assert entries(tmp_path / "cache") == []  # no complete entry, so nothing can be reused half-written
    cache = ClipCache("demo", "v1", tmp_path / "cache")
    out = tmp_path / "next"
    _, counts = map_clips_cached(write_clip, _jobs(cache, out, {"c1": "one"}), cache, out)
    assert counts == {"clips_reused": 0, "clips_computed": 1}
    assert not list((tmp_path / "cache").rglob(".tmp-*"))  # swept
    assert len(entries(tmp_path / "cache")) == 1
