"""The restoration training loop itself on a GPU (not synthetic tensors): Stage 1 at Lada's size on the
restoration dataset, a resume that extends max_iters, Stage 2 with perceptual + GAN, fp16 evaluation of val.
Prints iterations/s and peak memory per stage. Needs a CUDA device and a materialized restoration_dataset.

    .venv/bin/python bench/restoration_gpu_loop.py
"""
import json
import shutil
import time
from pathlib import Path

import torch

from training.loop import TrainSettings, train, summary
from training.restorer import Restorer
from training.checkpoints import load_generator, convert_stage1_to_stage2
from evaluation.restoration_eval import evaluate_split

root = Path("data/datasets/restoration")
shutil.rmtree(".cache/bench", ignore_errors=True)  # measure training, not a resume of an earlier run
out = {}
frozen = {"spynet": 0, "feat_extract": 0, "deform_align": 0, "backbone": 0}
s1 = TrainSettings(stage="stage1", dataset_root=root, work_dir=Path(".cache/bench/g1"), fingerprint="gpu", num_frame=12, max_iters=60,
                   log_interval=10, checkpoint_interval=30, sample_interval=30, lr=5e-5, lr_mult=frozen, lq_size=256,
                   mid_channels=64, num_blocks=15, device="cuda", amp=True, progress=False)
r1 = train(s1)
out["stage1_full_size_amp"] = summary(r1)
# kill-free resume check on GPU: extend max_iters, must resume from 60
r1b = train(TrainSettings(**{**s1.__dict__, "max_iters": 70}))
out["stage1_resume"] = {"resumed_from": r1b.resumed_from, "iterations": r1b.iterations}
convert_stage1_to_stage2(r1b.checkpoint, Path(".cache/bench/s2init.pth"))
s2 = TrainSettings(stage="stage2", dataset_root=root, work_dir=Path(".cache/bench/g2"), fingerprint="gpu2", num_frame=12, max_iters=20,
                   log_interval=10, checkpoint_interval=10, sample_interval=100, lr=2e-5, lr_discriminator=5e-5, lr_mult=frozen,
                   lq_size=256, init_from=Path(".cache/bench/s2init.pth"), perceptual_weight=0.05, gan_loss_weight=0.02, ema_decay=0.999,
                   device="cuda", amp=True, progress=False)
r2 = train(s2)
out["stage2_full_size_amp"] = summary(r2) | {k: v for k, v in r2.history[-1].items() if k.startswith("loss")}
model, _ = load_generator(r2.checkpoint)
rest = Restorer(model, 256, torch.device("cuda"), fp16=True)
t = time.perf_counter()
ev = evaluate_split(rest.restore, root, "val", progress=False)
out["eval_val_fp16"] = {"seconds": round(time.perf_counter() - t, 2), **{k: ev.metrics[k] for k in ("frames", "input_psnr_region", "output_psnr_region")}}
print(json.dumps(out, indent=1, default=str))
