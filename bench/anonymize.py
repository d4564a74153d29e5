"""`aubergine anonymize` speed on a sample clip: frames/s with the trained anonymizer against the blur baseline.

Blur is the floor any method pays (decode twice, detect, track, blend, encode, the flicker measure), so the
ratio blur/anonymizer is what the inpainting itself costs. Both run in this process, interleaved over
`--repeats` rounds (shared, noisy machines: ratios measured in one run, medians of the rounds); the
anonymizer is loaded once, outside the timing, as a long-running service would hold it.

    .venv/bin/python bench/anonymize.py                          # data/raw/carphone_pristine.mp4, embedded anonymizer
    .venv/bin/python bench/anonymize.py --clip my.mp4 --device cuda --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# First on the path: this folder's own evaluation.py would otherwise shadow the package.
sys.path.insert(0, str(ROOT))

from inference.anonymize_media import anonymize_path, load_lora_anonymizer  # noqa: E402
from orchestration.config import load_params  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, default=ROOT / "data/raw/carphone_pristine.mp4")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    params = load_params(args.params)
    anonymizer = load_lora_anonymizer(params, args.device)
    seconds: dict[str, list[float]] = {"blur": [], "lora": []}
    summaries: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for method in ("blur", "lora"):
                start = time.perf_counter()
                summaries[method] = anonymize_path(args.clip, Path(tmp) / f"{method}{r}.mp4", params, method=method,
                                                   device=args.device, anonymizer=anonymizer, progress=False)
                seconds[method].append(time.perf_counter() - start)
    frames = summaries["blur"]["frames"]
    fps = {m: frames / statistics.median(s) for m, s in seconds.items()}
    print(json.dumps({
        "clip": str(args.clip), "frames": frames, "size": summaries["blur"]["size"],
        "region_frames": summaries["blur"]["region_frames"], "device": args.device,
        "anonymizer": f"{anonymizer.base_dir} + {anonymizer.lora_dir}, {anonymizer.resolution} px, "
                      f"{anonymizer.face_steps} face steps",
        "frames_per_s_blur": round(fps["blur"], 2), "frames_per_s_anonymizer": round(fps["lora"], 2),
        "anonymizer_cost_vs_blur": round(fps["blur"] / fps["lora"], 2),
        "flicker_ratio_blur": summaries["blur"]["flicker"]["ratio"],
        "flicker_ratio_anonymizer": summaries["lora"]["flicker"]["ratio"],
    }, indent=1))


if __name__ == "__main__":
    main()
