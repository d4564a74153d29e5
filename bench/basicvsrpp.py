"""BasicVSR++ speed: Stage-1 step time with the recipe's freezing (requires_grad off) vs the same model fully
trainable (what mmengine's lr-multiplier-0 recipe computes), and inference frames/s.

Figures are ratios measured in one interleaved run, because these machines are shared and noisy.

    .venv/bin/python bench/basicvsrpp.py                    # embedded size on CPU (16 ch, 2 blocks, 128 px, 8 frames)
    .venv/bin/python bench/basicvsrpp.py --full --size 256  # Lada's size (64 ch, 15 blocks) on CPU: slow
    .venv/bin/python bench/basicvsrpp.py --full --device cuda --frames 12 --amp   # GPU box
    .venv/bin/python bench/basicvsrpp.py --widths 16,32,64 --frames 4   # frozen Stage-1 step cost by mid_channels
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from training.basicvsrpp import BasicVSRPlusPlusNet
from training.loop import apply_freezing, charbonnier, param_groups

RECIPE_FROZEN = {"spynet": 0.0, "feat_extract": 0.0, "deform_align": 0.0, "backbone": 0.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_timer(model, frozen: bool, x, y, device, amp: bool):
    mult = RECIPE_FROZEN if frozen else {}
    apply_freezing(model, mult)
    # Trainable-everything = mmengine's recipe: same lr multipliers, but every group computes gradients.
    opt = torch.optim.Adam(param_groups(model, 5e-5, mult), lr=5e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step() -> float:
        # Both variants share one model: set its freezing at each call, not when the timer was made.
        apply_freezing(model, mult)
        model.zero_grad(set_to_none=True)
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = charbonnier(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        return time.perf_counter() - t

    return step


def width_costs(widths: list[int], blocks: int, size: int, frames: int, repeats: int, device, amp: bool) -> dict:
    """Frozen Stage-1 step time per `mid_channels`, interleaved, and each as a ratio of the first width's: what a
    wider embedded model would cost (README, "The restorer")."""
    torch.manual_seed(0)
    x = torch.rand(1, frames, 3, size, size, device=device)
    y = torch.rand_like(x)
    steps = {}
    for mid in widths:
        model = BasicVSRPlusPlusNet(mid, blocks).to(device).train()
        steps[mid] = step_timer(model, True, x, y, device, amp)
        steps[mid]()  # warm-up
    times = {mid: [] for mid in widths}
    for _ in range(repeats):
        for mid in widths:
            times[mid].append(steps[mid]())
    median = {mid: statistics.median(t) for mid, t in times.items()}
    return {"train_input": f"1x{frames}x3x{size}x{size}", "num_blocks": blocks,
            "stage1_step_s_frozen": {str(m): round(v, 4) for m, v in median.items()},
            f"ratio_to_{widths[0]}_channels": {str(m): round(v / median[widths[0]], 2) for m, v in median.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="Lada's size: mid_channels 64, num_blocks 15")
    ap.add_argument("--size", type=int, default=None, help="square input side (default 128, or 256 with --full)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA only)")
    ap.add_argument("--infer-size", type=int, default=256)
    ap.add_argument("--infer-frames", type=int, default=12)
    ap.add_argument("--widths", default=None, help="comma-separated mid_channels: compare their frozen Stage-1 steps only")
    args = ap.parse_args()
    device = torch.device(args.device)
    amp = args.amp and device.type == "cuda"
    mid, blocks = (64, 15) if args.full else (16, 2)
    size = args.size or (256 if args.full else 128)
    if args.widths:
        widths = [int(w) for w in args.widths.split(",")]
        print(json.dumps(width_costs(widths, blocks, size, args.frames, args.repeats, device, amp), indent=2))
        return
    torch.manual_seed(0)
    model = BasicVSRPlusPlusNet(mid, blocks).to(device).train()
    x = torch.rand(1, args.frames, 3, size, size, device=device)
    y = torch.rand_like(x)
    # No cudnn.benchmark: the training loop does not set it, and its trial workspaces inflate peak memory.

    frozen_step = step_timer(model, True, x, y, device, amp)
    frozen_step()  # warm-up (allocator, cudnn autotune)
    full_step = step_timer(model, False, x, y, device, amp)
    full_step()
    times = {"frozen": [], "trainable": []}
    peak = {}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        for name, fn in (("frozen", step_timer(model, True, x, y, device, amp)), ("trainable", step_timer(model, False, x, y, device, amp))):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name].append(fn())
            if device.type == "cuda":
                peak[name] = torch.cuda.max_memory_allocated(device) / 2**20
    frozen_s, full_s = statistics.median(times["frozen"]), statistics.median(times["trainable"])

    model.eval()
    xi = torch.rand(1, args.infer_frames, 3, args.infer_size, args.infer_size, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        model(xi)
        _sync(device)
        t = time.perf_counter()
        for _ in range(args.repeats):
            model(xi)
        _sync(device)
        infer_fps = args.repeats * args.infer_frames / (time.perf_counter() - t)

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "model": f"BasicVSR++ mid_channels={mid} num_blocks={blocks}",
        "train_input": f"1x{args.frames}x3x{size}x{size}", "amp": amp,
        "stage1_step_s_frozen": round(frozen_s, 4), "stage1_step_s_trainable": round(full_s, 4),
        "stage1_iters_per_s_frozen": round(1 / frozen_s, 3),
        "speedup_frozen_vs_trainable": round(full_s / frozen_s, 2),
        "peak_memory_mb": {k: round(v, 1) for k, v in peak.items()} or "n/a (cpu)",
        "inference_input": f"1x{args.infer_frames}x3x{args.infer_size}x{args.infer_size}",
        "inference_frames_per_s": round(infer_fps, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
