"""Face/plate detector speed: training steps (SGD, forward + backward + step) and inference, in images/s.

Synthetic inputs (random images with random boxes: speed does not depend on what is in them), torchvision's
own resize to `min_size`/`max_size`. Variants (architectures x FPN widths) are measured interleaved, round
by round, in one run, and reported with their ratios to the first variant, because these machines are
shared and noisy: compare ratios, not absolute numbers taken at different times.

    .venv/bin/python bench/detector.py                                  # embedded: fcos_resnet18_fpn, 320/480, batch 4, CPU
    .venv/bin/python bench/detector.py --fpn-channels 256 128           # the FPN/head width knob
    .venv/bin/python bench/detector.py --arch fcos_resnet18_fpn fasterrcnn_mobilenet_v3_large_fpn --rounds 2
    .venv/bin/python bench/detector.py --min-size 512 --max-size 853 --batch 8 --device cuda --amp   # GPU box
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from training.detector import ARCHS, build_detector


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(n: int, height: int, width: int, generator: torch.Generator, device: torch.device):
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, height, width, generator=generator).to(device))
        k = int(torch.randint(0, 4, (1,), generator=generator))
        xy = torch.rand(k, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
        wh = (0.05 + 0.25 * torch.rand(k, 2, generator=generator)) * torch.tensor([width, height])
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(1, 3, (k,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


class Variant:
    def __init__(self, arch: str, fpn_channels: int, args, device: torch.device):
        torch.manual_seed(0)
        self.name = f"{arch}/fpn{fpn_channels}"
        self.model = build_detector(arch, 3, None, None, args.min_size, args.max_size, fpn_channels=fpn_channels).to(device)
        self.opt = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        self.scaler = torch.amp.GradScaler("cuda", enabled=args.amp)
        self.args, self.device = args, device
        self.params = sum(p.numel() for p in self.model.parameters())
        self.train_times: list[float] = []
        self.infer_times: list[float] = []

    def train_step(self, images, targets) -> float:
        self.model.train()
        _sync(self.device)
        t = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.args.amp):
            losses = self.model(images, targets)
        loss = sum(losses.values())
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        _sync(self.device)
        return time.perf_counter() - t

    @torch.no_grad()
    def infer(self, images) -> float:
        self.model.eval()
        _sync(self.device)
        t = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.args.amp):
            self.model(images)
        _sync(self.device)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["fcos_resnet18_fpn"], choices=ARCHS)
    ap.add_argument("--fpn-channels", nargs="+", type=int, default=[256])
    ap.add_argument("--min-size", type=int, default=320)
    ap.add_argument("--max-size", type=int, default=480)
    ap.add_argument("--height", type=int, default=240, help="synthetic image height before the model's resize")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--batch", type=int, default=4, help="training batch size")
    ap.add_argument("--infer-batch", type=int, default=1, help="images per inference call (a video frame at a time: 1)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per variant (after one warm-up)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA only)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    device = torch.device(args.device)
    args.amp = args.amp and device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    variants = [Variant(a, c, args, device) for a in args.arch for c in args.fpn_channels]
    train_batch = synthetic_batch(args.batch, args.height, args.width, gen, device)
    infer_batch = synthetic_batch(args.infer_batch, args.height, args.width, gen, device)[0]
    for v in variants:  # warm-up: allocator, cuDNN/oneDNN kernel choice
        v.train_step(*train_batch)
        v.infer(infer_batch)
    for _ in range(args.rounds):
        for v in variants:
            v.train_times.append(v.train_step(*train_batch))
            v.infer_times.append(v.infer(infer_batch))
    base = variants[0]
    result = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(), "amp": args.amp, "torch": torch.__version__,
        "input": f"{args.width}x{args.height} resized to min_size={args.min_size}, max_size={args.max_size}",
        "train_batch": args.batch, "infer_batch": args.infer_batch, "rounds": args.rounds, "variants": {},
    }
    for v in variants:
        train_s, infer_s = statistics.median(v.train_times), statistics.median(v.infer_times)
        result["variants"][v.name] = {
            "params_m": round(v.params / 1e6, 2),
            "train_images_per_s": round(args.batch / train_s, 3),
            "train_step_s": round(train_s, 3),
            "infer_images_per_s": round(args.infer_batch / infer_s, 3),
            "train_speed_vs_first": round(statistics.median(base.train_times) / train_s, 3),
            "infer_speed_vs_first": round(statistics.median(base.infer_times) / infer_s, 3),
            "infer_over_train_images_per_s": round((args.infer_batch / infer_s) / (args.batch / train_s), 2),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
