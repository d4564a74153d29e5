"""Recall of the configured detection path against detection on every frame, on bench/incremental.py's library
(the sample clips cut to --max-frames and their re-encoded / cropped / trimmed / brightened / mirrored / scaled
copies): many short scenes, the hardest case for keyframes. bench/synthesis.py measures the 5 full clips.

    python bench/library_recall.py [--n 40] [--max-frames 60] [--params params.yaml] [--out DIR]

Prints per clip the reference scenes found, and the totals (issue 15's aims: >= 98 % of scenes, IoU >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--max-frames", type=int, default=60)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # as the stages run
    params_path = args.params.resolve()
    os.chdir(REPO)  # params hold repo-relative model paths

    from incremental import build_library

    from assets.raw_clips import probe_clip
    from assets.region_tracks import track_clip
    from assets.sparse_detection import every_frame
    from assets.track_recall import compare, summarize
    from orchestration.config import load_params

    params = load_params(params_path)
    out = (args.out or Path(tempfile.mkdtemp(prefix="aubergine-library-recall-"))).resolve()
    paths = build_library(out / "clips", args.n, args.max_frames)
    reference = every_frame(params.detection)
    rows = []
    for path in paths:
        clip = probe_clip(path, path.parent, params.data)
        if clip["status"] != "ok":
            print(f"skipping {path}: {clip.get('reason')}", file=sys.stderr)
            continue
        track_clip(clip, out / "reference", reference, params.tracking)
        track_clip(clip, out / "fast", params.detection, params.tracking)
        ref = json.loads((out / "reference" / f"{clip['clip_id']}.json").read_text())
        fast = json.loads((out / "fast" / f"{clip['clip_id']}.json").read_text())
        rows.append(compare(ref, fast))
        one = summarize(rows[-1:])
        print(f"  {clip['clip_id']:<36} scenes {rows[-1]['scenes_found']}/{rows[-1]['scenes']}  region IoU "
              f"{one['mean_region_iou']:.3f}  box IoU {one['mean_box_iou']:.3f}", flush=True)
    total = summarize(rows)
    d = params.detection
    print(f"library of {len(rows)} clips, detection every {d.every_n_frames} frames, plates every "
          f"{d.plate_every_n_frames or d.every_n_frames}: scenes {total['scene_recall']:.1%} of {total['scenes']} "
          f"(aim >= 98%), mean region IoU {total['mean_region_iou']:.3f}, mean box IoU {total['mean_box_iou']:.3f} (aim >= 0.9)")
    print(f"outputs under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
