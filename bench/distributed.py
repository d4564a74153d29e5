"""Data-parallel training speed: the real training loops (Stage 1 and the detector) under the real `torchrun`, with
1 and 2 processes on CPU (gloo) or 1..N GPUs (NCCL), as samples per second and scaling efficiency.

The batch is per process (training/distributed.py), so N processes train a global batch N times larger: speed-up
= (samples/s with N) / (samples/s with 1), efficiency = speed-up / N. The first logging window of each run is
start-up (process group, first iterations) and is left out. Runs alternate 1, N, 1, N ... (`--repeats`) because
these machines are shared and noisy; the figures are medians.

    .venv/bin/python bench/distributed.py                      # CPU: 1 and 2 gloo processes, one thread each
    .venv/bin/python bench/distributed.py --device cuda --procs 1,2,4,8 --full   # a GPU box: Lada's sizes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

JOB = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from training import distributed as dist
    kind, work, data, device, full, iters, window = {args!r}
    if kind == "stage1":
        from training.loop import TrainSettings, train
        size = dict(mid_channels=64, num_blocks=15, lq_size=256, num_frame=12) if full else \\
               dict(mid_channels=16, num_blocks=2, lq_size=128, num_frame=4)
        frozen = {{"spynet": 0.0, "feat_extract": 0.0, "deform_align": 0.0, "backbone": 0.0}}
        result = train(TrainSettings(stage="stage1", dataset_root=Path(data), work_dir=Path(work), fingerprint="bench",
                                     batch_size=1, max_iters=iters, log_interval=window, checkpoint_interval=10**9,
                                     sample_interval=10**9, lr=5e-5, lr_mult=frozen, region_loss_weight=20.0,
                                     device=device, progress=False, **size))
        history, per_process = result.history, 1
    else:
        from training.detector_loop import DetectorTrainSettings, train_detector
        size = dict(min_size=512, max_size=853, fpn_channels=256, batch_size=8) if full else \\
               dict(min_size=192, max_size=256, fpn_channels=64, batch_size=2)
        result = train_detector(DetectorTrainSettings(
            train_json=Path(data[0]), train_images=Path(data[1]), work_dir=Path(work), fingerprint="bench",
            max_iters=iters, log_interval=window, checkpoint_interval=10**9, sample_interval=10**9, device=device,
            workers=2, progress=False, **size))
        history, per_process = result.history, size["batch_size"]
    if dist.current().main:
        rates = [h.get("iters_per_s") or h["images_per_s"] / (per_process * dist.current().world) for h in history[1:]]
        print("RESULT " + json.dumps({{"iters_per_s": sum(rates) / len(rates), "per_process": per_process}}))
""")


def run(kind: str, nproc: int, data, device: str, full: bool, iters: int, window: int) -> float:
    """Samples per second of one run with `nproc` processes."""
    with tempfile.TemporaryDirectory(prefix="aubergine-dist-") as tmp:
        script = Path(tmp) / "job.py"
        script.write_text(JOB.format(root=str(ROOT), args=(kind, str(Path(tmp) / "work"), data if isinstance(data, list) else str(data), device, full, iters, window)))
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc), str(script)], env=env,
                              capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            sys.exit(f"{kind} with {nproc} process(es) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
        result = json.loads(line[len("RESULT "):])
        return result["iters_per_s"] * result["per_process"] * nproc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--procs", default="1,2", help="process counts; the first is the baseline")
    ap.add_argument("--models", default="stage1,detector")
    ap.add_argument("--full", action="store_true", help="the full recipes' sizes (GPU box)")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--window", type=int, default=3, help="iterations per logging window (the first is left out)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    procs = [int(p) for p in args.procs.split(",")]

    sys.path.insert(0, str(ROOT / "tests"))
    from lada_fixture import write_tiny_dataset  # a Lada v2 dataset written directly, as the tests use

    from training.detector_data import write_shapes_coco

    with tempfile.TemporaryDirectory(prefix="aubergine-dist-data-") as tmp:
        side = 256 if args.full else 128
        data = {"stage1": write_tiny_dataset(Path(tmp) / "restoration", {"train/a": 30, "train/b": 30, "val/c": 12},
                                             h=side, w=side),
                "detector": [str(p) for p in write_shapes_coco(Path(tmp) / "shapes", 32, seed=3, size=(320, 240))]}
        for kind in args.models.split(","):
            speeds: dict[int, list[float]] = {n: [] for n in procs}
            for _ in range(args.repeats):
                for n in procs:
                    speeds[n].append(run(kind, n, data[kind], args.device, args.full, args.iters, args.window))
            base = statistics.median(speeds[procs[0]])
            for n in procs:
                rate = statistics.median(speeds[n])
                speedup = rate / base * procs[0]
                print(f"{kind:9s} {n} process(es) ({args.device}): {rate:8.3f} samples/s   speed-up {speedup:.2f}x   "
                      f"efficiency {speedup / n:.0%}   runs {', '.join(f'{s:.3f}' for s in speeds[n])}")


if __name__ == "__main__":
    main()
