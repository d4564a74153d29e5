"""What one new clip costs on a library: the data stages run from scratch on N-1 clips, then again after one
clip is added, by each engine the way users run them.

    python bench/incremental.py [--n 40] [--max-frames 60] [--engines dvc,dagster] [--out DIR] [--keep]

The library: the sample clips (data/raw) and variants of them (re-encoded at another CRF, cropped, trimmed,
brightened, mirrored, scaled), each cut to `--max-frames` frames so that a from-scratch run stays minutes on 2
cores, until there are N. Copies of one clip are content-grouped, as real re-encodes would be.

Per engine, in a project folder of its own (params.yaml of this checkout, embedded profile, MLflow off, the
code and weights linked):
* first     the data stages (raw_clips .. restoration_dataset, unified_coco) on N-1 clips, empty per-clip store;
* added     the same after copying in the N-th clip;
* overhead  the same with nothing changed but every stage forced to run (`dvc repro --force`, a Dagster
            materialization of the same assets): every clip comes from the store, so this is the fixed cost of
            a run (interpreter and imports per stage, hashing, the index and contact sheets, unified_coco's
            synthetic images, which do not depend on clips).
The aim (issue 15): added <= 2/N x first + overhead. DVC is `dvc repro` of the data stages; Dagster is `dagster
asset materialize` of the same assets, which is the run the new-clips sensor requests for them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATA_STAGES = ("raw_clips", "region_tracks", "eggplant_gt", "mosaic_lq", "restoration_dataset", "unified_coco")
CODE = ("assets", "orchestration", "training", "evaluation", "inference")


def variants(frames: list[np.ndarray]) -> list[tuple[str, list[np.ndarray], int]]:
    """(name, frames, crf) of the edits a library accumulates: each still shows the same people."""
    import cv2

    h, w = frames[0].shape[:2]
    cy, cx = h // 10, w // 10
    even = lambda img: img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]  # noqa: E731 - x264 wants even sides
    return [
        ("crf30", frames, 30),
        ("crop", [even(f[cy:h - cy, cx:w - cx]) for f in frames], 20),
        ("trim", frames[len(frames) // 4:], 20),
        ("bright", [np.clip(f.astype(np.int16) + 20, 0, 255).astype(np.uint8) for f in frames], 20),
        ("mirror", [np.ascontiguousarray(f[:, ::-1]) for f in frames], 20),
        ("small", [even(cv2.resize(f, (int(w * 0.75), int(h * 0.75)), interpolation=cv2.INTER_AREA)) for f in frames], 20),
        ("crf24", frames, 24),
    ]


def build_library(out: Path, n: int, max_frames: int) -> list[Path]:
    from assets.video import EncoderSettings, probe_video, read_frames, write_video

    out.mkdir(parents=True, exist_ok=True)
    samples = sorted((REPO / "data/raw").glob("*.mp4"))
    if not samples:
        raise SystemExit("no sample clips in data/raw: run `make setup` first")
    clips: list[Path] = []
    decoded = {s: [f for _, f in zip(range(max_frames), read_frames(s))] for s in samples}
    rounds = 0
    while len(clips) < n:
        for sample in samples:
            frames = decoded[sample]
            if rounds == 0:
                name, edited, crf = "orig", frames, 18
            else:
                name, edited, crf = variants(frames)[(rounds - 1) % 7]
                if rounds > 7:
                    name, edited = f"{name}{rounds}", edited[rounds % 3:]
            dest = out / f"{sample.stem}_{name}.mp4"
            write_video(dest, edited, probe_video(sample).fps, EncoderSettings(crf=crf, preset="veryfast", threads=2))
            clips.append(dest)
            if len(clips) == n:
                break
        rounds += 1
    return clips


def make_project(root: Path) -> Path:
    root.mkdir(parents=True)
    for code in CODE:
        (root / code).symlink_to(REPO / code)
    (root / ".venv").symlink_to(REPO / ".venv")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy2(REPO / "aubergine", root / "aubergine")
    (root / "data/raw").mkdir(parents=True)
    for shared in ("models", "media", "external"):
        (root / "data" / shared).symlink_to(REPO / "data" / shared)
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    doc["data"]["raw_dir"] = "data/raw"
    doc["mlflow"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1", "DAGSTER_HOME": str(root / "dagster_home")}


def _run(cmd: list[str], root: Path, log: Path) -> float:
    started = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        done = subprocess.run(cmd, cwd=root, env=_env(root), stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}); see {log}")
    return time.perf_counter() - started


def _reuse(log_text: str) -> dict[str, tuple[int, int]]:
    """(reused, computed) per per-clip stage, from the JSON line `aubergine stage` prints (DVC runs)."""
    out = {}
    for line in log_text.splitlines():
        if line.startswith("{") and '"clips_reused"' in line:
            row = json.loads(line)
            out[row["stage"]] = (row["clips_reused"], row["clips_computed"])
    return out


def _dagster_reuse(home: Path) -> dict[str, tuple[int, int]]:
    """(reused, computed) per per-clip stage from the latest materializations' metadata (what the UI shows)."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    out = {}
    for stage in DATA_STAGES[1:5]:
        event = instance.get_latest_materialization_event(dg.AssetKey(stage))
        meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
        if "clips_reused" in meta:
            out[stage] = (meta["clips_reused"].value, meta["clips_computed"].value)
    return out


def bench_engine(engine: str, clips: list[Path], work: Path) -> dict:
    root = make_project(work / engine)
    log = work / f"{engine}.log"
    for clip in clips[:-1]:
        shutil.copy(clip, root / "data/raw" / clip.name)
    if engine == "dvc":
        dvc = str(REPO / "tools/dvc/.venv/bin/dvc")
        _run([dvc, "init", "--no-scm", "-q"], root, log)
        cmd, forced = [dvc, "repro", *DATA_STAGES], [dvc, "repro", "--force", *DATA_STAGES]
    else:
        (root / "dagster_home").mkdir()
        cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", ",".join(DATA_STAGES),
               "-m", "orchestration.definitions"]
        forced = cmd
    times = {"first": _run(cmd, root, log)}
    shutil.copy(clips[-1], root / "data/raw" / clips[-1].name)
    mark = log.stat().st_size
    times["added"] = _run(cmd, root, log)
    reuse = _reuse(log.read_text()[mark:]) if engine == "dvc" else _dagster_reuse(root / "dagster_home")
    times["overhead"] = _run(forced, root, log)
    return {**times, "reuse": reuse}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--max-frames", type=int, default=60)
    parser.add_argument("--engines", default="dvc,dagster")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if args.n < 2:
        raise SystemExit("--n must be at least 2")
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    clips = build_library(work / "library", args.n, args.max_frames)
    print(f"library: {len(clips)} clips of <= {args.max_frames} frames in {time.perf_counter() - t0:.0f} s ({work})")
    try:
        for engine in args.engines.split(","):
            r = bench_engine(engine, clips, work)
            target = 2 / args.n * r["first"] + r["overhead"]
            print(f"{engine:8s} first {r['first']:7.1f} s ({args.n - 1} clips)  added {r['added']:6.1f} s (+1 clip)  "
                  f"overhead {r['overhead']:6.1f} s (all reused)  added/first {r['added'] / r['first']:.3f}  "
                  f"aim 2/N*first+overhead {target:6.1f} s -> {'met' if r['added'] <= target else 'NOT met'}")
            if r["reuse"]:
                print("         reused/computed on the added run: " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in r["reuse"].items()))
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
