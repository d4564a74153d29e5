"""Whole-video detection speed in `aubergine restore` (its `find_scenes`: decode, detect, track): frame by frame
vs batched detection (`--mosaic-detection-batch-size`) with decoding in a thread ahead of it
(`--detector-queue-size`), for the trained mosaic detector and the grid heuristic.

Variants are measured interleaved, round by round, in one run, and reported as ratios to the first (these
machines are shared and noisy: compare ratios). Needs a materialized mosaic_coco (its val LQ videos) and
mosaic_detector_checkpoint, i.e. a `make demo`.

    .venv/bin/python bench/restore_detection.py
    .venv/bin/python bench/restore_detection.py --batch 1 4 8 --queue 1 8 --rounds 3
    .venv/bin/python bench/restore_detection.py --hw-decode auto          # a GPU box with an NVDEC FFmpeg
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from assets.detect import CombinedDetector
from assets.video import probe_video
from inference.mosaic_detect import GridMosaicDetector
from inference.restore_video import find_scenes, for_mosaic_regions
from orchestration.config import load_params
from training.detector import DetectorRegions, load_detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path, default=None, help="default: the first val LQ video of mosaic_coco")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--queue", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hw-decode", default="off")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(2)
    params = for_mosaic_regions(load_params("params.yaml"))
    video = args.video or sorted(Path("data/datasets/mosaic_coco/videos").glob("*"))[0]
    probe = probe_video(video)
    model, _ = load_detector(params.restore.mosaic_detector_model, device=args.device)
    detectors = {"trained": DetectorRegions(model, params.mosaic_detector.score_threshold, ("mosaic",)),
                 "grid": GridMosaicDetector()}
    variants = [(name, b, q) for name in detectors for b in args.batch for q in args.queue if name == "trained" or b == 1]
    times: dict[tuple, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for name, batch, queue in variants:
            p = params.model_copy(update={"restore": params.restore.model_copy(
                update={"detection_batch_size": batch, "detector_queue_size": queue, "hw_decode": args.hw_decode})})
            start = time.perf_counter()
            find_scenes(video, CombinedDetector([detectors[name]]), p, p.restore.max_clip_length, probe.fps,
                        probe.width, probe.height, probe.frames, progress=False)
            times[(name, batch, queue)].append(time.perf_counter() - start)
    first = statistics.median(times[variants[0]])
    out = []
    for v in variants:
        median = statistics.median(times[v])
        out.append({"detector": v[0], "batch": v[1], "queue": v[2], "frames_per_s": round(probe.frames / median, 2),
                    "speed_vs_first": round(first / median, 3)})
    print(json.dumps({"video": str(video), "frames": probe.frames, "device": args.device, "hw_decode": args.hw_decode,
                      "rounds": args.rounds, "variants": out}, indent=1))


if __name__ == "__main__":
    main()
