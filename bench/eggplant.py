"""Which embedded restorer recipe paints a visible eggplant? Each variant trains Stage 1 on the lineage's current
restoration dataset (`data/datasets/restoration`, made by the lineage up to `restoration_dataset`) and is scored
with the report's own evaluation on val: region PSNR gain, low-pass region gain, purple/green IoU, the share of
pixels changed outside the regions and the temporal ratio; one grid per variant goes to `--out`.

    .venv/bin/python bench/eggplant.py                           # every variant below, in order
    .venv/bin/python bench/eggplant.py --variants w16_nospy_scratch --iters 400,1000,1600   # scored at each
    .venv/bin/python bench/eggplant.py --variants w16_nospy_scratch --iters 2300 --resume   # continue that run
    .venv/bin/python bench/eggplant.py --list

Figures are measured in one run (the machine is shared and noisy: compare variants of the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/ itself, whose evaluation.py would shadow the package

FROZEN = {"spynet": 0.0, "feat_extract": 0.0, "deform_align": 0.0, "backbone": 0.0}
BASE = "data/models/restoration-base/generator.pth"
# name: (TrainSettings overrides, what it tries)
SMALL = dict(mid_channels=16, num_blocks=2, lr=5e-4)
NOSPY = dict(SMALL, lr_mult={"spynet": 0.0})  # every module trains but the (random) flow network: the default
VARIANTS: dict[str, tuple[dict, str]] = {
    "w16_frozen_base": (dict(SMALL, init_from=BASE, lr_mult=FROZEN),
                        "the previous demo recipe: 16 ch / 2 blocks on the set-up base, front half frozen"),
    "w16_all_base": (dict(SMALL, init_from=BASE, lr_mult={}), "16 ch on the set-up base, nothing frozen"),
    "w16_all_scratch": (dict(SMALL, lr_mult={}), "16 ch from scratch, nothing frozen"),
    "w32_all_scratch": (dict(SMALL, mid_channels=32, lr_mult={}), "32 ch from scratch, nothing frozen"),
    "w16_nospy_scratch": (NOSPY, "16 ch from scratch, everything but the (random) flow network trains"),
    "w32_nospy_scratch": (dict(NOSPY, mid_channels=32), "32 ch from scratch, everything but the (random) flow network trains"),
    "w16_nospy_rw10": (dict(NOSPY, region_loss_weight=10.0), "16 ch from scratch, flow network frozen, region weight 10"),
    "w32_nospy_rw10": (dict(NOSPY, mid_channels=32, region_loss_weight=10.0),
                       "32 ch from scratch, flow network frozen, region weight 10"),
    "w16_nospy_lr1e-3": (dict(NOSPY, lr=1e-3), "16 ch from scratch, flow network frozen, lr 1e-3"),
    "w16_nospy_rw6": (dict(NOSPY, region_loss_weight=6.0), "16 ch from scratch, flow network frozen, region weight 6"),
    "w16_nospy_8f": (dict(NOSPY, num_frame=8), "16 ch from scratch, flow network frozen, 8-frame windows"),
}
KEYS = ("psnr_region_gain_db", "lowpass_region_gain_db", "purple_iou", "green_iou", "changed_outside_share",
        "temporal_ratio")


def run_variant(name: str, overrides: dict, args, root: Path) -> list[dict]:
    """Train `name` and score it at each of `args.iters` (a growing list: the run resumes between them)."""
    import torch

    from assets import contact_sheet
    from evaluation.restoration_eval import evaluate_split
    from training import checkpoints as ckpt
    from training.loop import TrainSettings, train
    from training.restorer import Restorer

    work = Path(args.out) / name
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    rows, seconds = [], 0.0
    for iters in args.iters:
        settings = dict(stage="stage1", dataset_root=root, work_dir=work, fingerprint=name, num_frame=args.frames,
                        batch_size=args.batch, max_iters=iters, log_interval=50, checkpoint_interval=iters,
                        sample_interval=10**9, region_loss_weight=args.region_weight, lq_size=args.size, seed=1234,
                        device="cpu", amp=False, progress=False)
        settings.update(overrides)
        if settings.get("init_from"):
            settings["init_from"] = Path(settings["init_from"])
            if not settings["init_from"].is_file():
                raise SystemExit(f"{name}: {settings['init_from']} missing; make it with `make restoration-base` (~6 min)")
        start = time.perf_counter()
        result = train(TrainSettings(**settings))
        seconds += time.perf_counter() - start
        model, _ = ckpt.load_generator(result.checkpoint)
        restorer = Restorer(model, settings["lq_size"], torch.device("cpu"))
        evaluation = evaluate_split(restorer.restore, root, "val", 50, 6, max_grids=4, progress=False)
        tag = f"{name}@{iters}"
        for k, (title, grid_rows) in enumerate(evaluation.grids):
            contact_sheet.save_png(contact_sheet.grid(grid_rows, f"{tag}: {title}"), Path(args.out) / f"{tag}_{k}.png")
        row = {"variant": name, "train_s": round(seconds, 1), "iters": iters, **{k: evaluation.metrics.get(k) for k in KEYS}}
        (Path(args.out) / f"{tag}.json").write_text(json.dumps({**row, "metrics": evaluation.metrics,
                                                                "scenes": evaluation.rows}, indent=1))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=None, help="comma-separated (default: every variant whose start weights exist)")
    parser.add_argument("--iters", default="400", help="iterations, or a growing list (400,800): scored at each")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--region-weight", type=float, default=20.0)
    parser.add_argument("--root", default="data/datasets/restoration")
    parser.add_argument("--out", default=".cache/bench/eggplant")
    parser.add_argument("--resume", action="store_true", help="continue a variant's run in --out (more iterations)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    if args.list:
        for name, (_, about) in VARIANTS.items():
            print(f"{name:22s} {about}")
        return 0
    args.iters = sorted(int(i) for i in str(args.iters).split(","))
    if args.variants is None:
        ready = [n for n, (o, _) in VARIANTS.items() if not o.get("init_from") or Path(o["init_from"]).is_file()]
        for name in VARIANTS.keys() - set(ready):
            print(f"{name}: skipped, {VARIANTS[name][0]['init_from']} missing (`make restoration-base` makes it)")
        args.variants = ",".join(ready)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.variants.split(","):
        rows += run_variant(name, VARIANTS[name][0], args, Path(args.root))
    print(f"\n{args.frames} frames, {args.size} px, batch {args.batch}, region weight "
          f"{args.region_weight}; val of {args.root}")
    header = ["variant", "iters", "train_s", *KEYS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in header) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
