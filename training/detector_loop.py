"""The face/plate detector's training loop: torchvision detector, SGD with warm-up and cosine decay,
gradient clipping, AMP on CUDA only, sample grids, atomic checkpoints and exact resume.

Resume: `<work_dir>/latest.pth` holds the model, optimiser, scheduler, AMP scaler, iteration, the sampler's
state (generator, epoch order, position), torch's RNG state(s), the partly filled log window and the
history, written atomically every `checkpoint_interval` (and at the end). A run picks it up when both the
caller's `fingerprint` (data identity) and the recipe (every setting that changes what is computed: arch,
sizes, batch, optimiser, schedule, augmentation, seed, max_iters) match; otherwise it starts afresh. On CPU
a killed-and-resumed run ends bit-identical to an uninterrupted one (tested).

The file is also the detector: `training.detector.load_detector(latest.pth)` rebuilds the model from its
meta (arch, num_classes, min_size, max_size, BN kind) and loads it strictly.

Optimiser (measured, see README/bench): SGD momentum 0.9, weight decay 1e-4, linear warm-up from 0.1% of
lr, cosine decay to 0 — torchvision's detection recipe, with cosine instead of steps for short runs.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from training import detector as det
from training import distributed as dist
from training.detector_data import BoxSampler, CocoBoxes
from training.loop import peak_memory_mb

LATEST = "latest.pth"
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class DetectorTrainSettings:
    train_json: Path
    train_images: Path
    work_dir: Path
    fingerprint: str  # data identity (and anything else the caller cares about); the recipe is added here
    val_json: Path | None = None  # sample grids come from here (else from the training set)
    val_images: Path | None = None
    arch: str = "fcos_resnet18_fpn"
    num_classes: int = 3
    categories: dict[str, int] | None = None  # name -> label of the COCO files' categories; None = face/plate
    fpn_channels: int = 256  # FPN/head width; torchvision's 256
    pretrained_backbone: Path | None = None
    pretrained_sha256: str | None = None
    init_from: Path | None = None  # a whole detector (`save_detector` file) to fine-tune instead of a fresh head
    init_sha256: str | None = None
    min_size: int = 512
    max_size: int = 853
    batch_size: int = 8
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int | None = None  # None: min(500, max_iters // 10)
    clip_grad_norm: float | None = 10.0  # None or 0: no clipping
    max_iters: int = 20000
    log_interval: int = 20
    checkpoint_interval: int = 1000
    sample_interval: int | None = None  # None: at every checkpoint
    sample_images: int = 4
    score_threshold: float = 0.3  # for sample grids
    scale_jitter: tuple[float, float] = (0.75, 1.25)
    flip: bool = True
    seed: int = 1234
    device: str = "auto"
    amp: bool = True
    workers: int = 2  # threads decoding/augmenting images (choices are drawn in the main thread)
    progress: bool = True


@dataclass
class DetectorTrainResult:
    checkpoint: Path
    iterations: int
    resumed_from: int
    history: list[dict]
    seconds: float
    device: str
    meta: dict
    labels: dict[str, str] = field(default_factory=dict)
    samples: list[Path] = field(default_factory=list)
    processes: int = 1  # data-parallel processes that trained it (training.launcher)


Hook = Callable[[dict, int], None]


def recipe(s: DetectorTrainSettings) -> dict:
    """The settings that change what training computes (a resumed checkpoint must agree on all of them)."""
    keys = ("arch", "num_classes", "categories", "fpn_channels", "pretrained_sha256", "min_size", "max_size", "batch_size", "lr", "optimizer",
            "momentum", "weight_decay", "clip_grad_norm", "max_iters", "flip", "seed")
    out = {k: getattr(s, k) for k in keys}
    out.update({"warmup_iters": warmup_of(s), "scale_jitter": list(s.scale_jitter),
                "pretrained_backbone": str(s.pretrained_backbone) if s.pretrained_backbone else None,
                "init_from": str(s.init_from) if s.init_from else None})
    return out


def warmup_of(s: DetectorTrainSettings) -> int:
    return min(500, s.max_iters // 10) if s.warmup_iters is None else int(s.warmup_iters)


def lr_factor(iteration: int, max_iters: int, warmup: int, warmup_factor: float = 1e-3) -> float:
    """Linear warm-up over `warmup` iterations, then cosine from 1 to 0 at `max_iters` (iteration is 0-based)."""
    if iteration < warmup:
        a = iteration / warmup
        return warmup_factor * (1 - a) + a
    span = max(1, max_iters - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (iteration - warmup) / span)))


def _validate(s: DetectorTrainSettings) -> None:
    if s.optimizer not in OPTIMIZERS:
        raise ValueError(f"detector optimizer {s.optimizer!r} unknown; choose one of {', '.join(OPTIMIZERS)}")
    for name in ("batch_size", "max_iters", "log_interval", "checkpoint_interval", "min_size", "max_size"):
        if int(getattr(s, name)) < 1:
            raise ValueError(f"detector {name} must be >= 1, got {getattr(s, name)}")
    if s.lr <= 0:
        raise ValueError(f"detector lr must be > 0, got {s.lr}")
    if s.init_from is not None and s.pretrained_backbone is not None:
        raise ValueError("detector init_from and pretrained_backbone are both set; a fine-tuned start already holds "
                         "its backbone -- set one of them")


# The layers whose shape follows the number of classes (FCOS/RetinaNet logits, Faster R-CNN's box predictor).
CLASS_LAYERS = ("head.classification_head.cls_logits.", "roi_heads.box_predictor.")


def _init_from(model: torch.nn.Module, s: DetectorTrainSettings) -> dict:
    """Load a whole pretrained detector into `model`; its meta back. Same structure: strictly. Other categories
    (the mosaic detector fine-tuned from the face/plate base): everything but the class layers, which keep
    their fresh init -- torchvision's fine-tuning recipe of replacing the predictor."""
    state = det.read_weights(s.init_from, s.init_sha256, "point detector.init_from at a detector .pth (e.g. the one "
                             "`make setup` pretrains) or set it to null")
    meta = state.get("meta") or {}
    want = model.spec.meta()
    clash = [f"{k}: file {meta.get(k)!r}, config {want[k]!r}" for k in ("arch", "fpn_channels", "frozen_bn")
             if meta.get(k) != want[k]]
    if clash:
        raise det.DetectorError(f"{s.init_from}: detector.init_from does not fit the configured detector ({'; '.join(clash)})")
    sd = state["state_dict"]
    if meta.get("num_classes") != want["num_classes"] or (meta.get("categories") or want["categories"]) != want["categories"]:
        own = model.state_dict()
        sd = {k: v for k, v in sd.items() if not k.startswith(CLASS_LAYERS)}
        sd.update({k: v for k, v in own.items() if k.startswith(CLASS_LAYERS)})
        meta = {**meta, "about": f"{meta.get('about') or 'a detector'}; class layers new for {', '.join(want['categories'])}"}
    det.load_strict(model, sd, f"{s.init_from} (detector.init_from)")
    return meta


def _optimizer(model: torch.nn.Module, s: DetectorTrainSettings) -> torch.optim.Optimizer:
    # No weight decay on norm layers and biases (torchvision's detection reference, --norm-weight-decay 0).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if s.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum)
    return torch.optim.AdamW(groups, lr=s.lr)


def train_detector(s: DetectorTrainSettings, on_log: Hook | None = None,
                   on_sample: Callable[[Path, int], None] | None = None) -> DetectorTrainResult:
    from training.restorer import pick_device

    _validate(s)
    rank = dist.current()
    device = dist.device_for(rank, pick_device(s.device))
    dist.init(rank, device, dist.timeout_s())
    use_amp = s.amp and device.type == "cuda"
    s.work_dir.mkdir(parents=True, exist_ok=True)
    train_data = CocoBoxes(s.train_json, s.train_images, s.categories)
    sampler = BoxSampler(train_data, s.min_size, s.max_size, s.seed, s.scale_jitter, s.flip, s.workers)
    val_data = CocoBoxes(s.val_json, s.val_images or s.train_images, s.categories) if s.val_json else None

    torch.manual_seed(s.seed)
    model = det.build_detector(s.arch, s.num_classes, s.pretrained_backbone, s.pretrained_sha256, s.min_size, s.max_size,
                               fpn_channels=s.fpn_channels, categories=s.categories)
    spec = model.spec
    if s.init_from is not None:
        base = _init_from(model, s)
        init = f"{s.arch}: fine-tuned from {s.init_from}" + (f" ({base['about']})" if base.get("about") else "")
    elif s.pretrained_backbone:
        init = f"{s.arch}: ImageNet backbone from {s.pretrained_backbone}"
    else:
        init = f"{s.arch}: random init (no pretrained weights offline)"
    model.to(device).train()
    labels = {"init": init,
              "data": f"{len(train_data)} train images, {train_data.box_count()} boxes ({s.train_json})"}
    if rank.distributed:
        labels["distributed"] = dist.describe(rank, device, s.batch_size)
    # The backbone's frozen stages (requires_grad=False) stay outside DDP's buckets.
    step_model = dist.wrap(model, rank, device)
    opt = _optimizer(model, s)
    warmup = warmup_of(s)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, s.max_iters, warmup))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    key = json.dumps(recipe(s), sort_keys=True)
    history: list[dict] = []
    window: dict = {"sums": {}, "count": 0, "images": 0}
    start = 0

    latest = s.work_dir / LATEST
    if latest.is_file():
        state = det.read_weights(latest, None, "delete the work folder to start afresh")
        meta = state.get("meta") or {}
        if meta.get("fingerprint") == s.fingerprint and meta.get("recipe") == key:
            det.load_strict(model, state["state_dict"], f"{latest} (model)")
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            sampler.load_state(state["rng"]["sampler"])
            torch.set_rng_state(state["rng"]["torch"])
            if device.type == "cuda" and "cuda" in state["rng"]:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            history = list(state.get("history", []))
            window = state.get("window") or window
            start = int(meta["iteration"])
            labels["resumed"] = f"from {latest} at iteration {start}"
        else:
            labels["restarted"] = f"{latest} is from another recipe or data; started afresh"

    def save(iteration: int) -> Path:
        from training.checkpoints import save_atomic

        meta = {**spec.meta(), "iteration": iteration, "fingerprint": s.fingerprint, "recipe": key,
                "labels": json.dumps(labels)}
        rng = {"sampler": sampler.state(), "torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        payload = {"meta": meta, "state_dict": det.detector_state(model), "optimizer": opt.state_dict(),
                   "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
                   "window": window, "history": history}
        return save_atomic(payload, latest)

    grid_data = val_data if val_data is not None and len(val_data) else train_data
    grid_indices = list(range(min(s.sample_images, len(grid_data))))
    sample_interval = s.sample_interval or s.checkpoint_interval
    samples: list[Path] = []
    began = time.perf_counter()
    window_start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=s.max_iters, initial=min(start, s.max_iters), desc=f"detector {s.arch}", unit="it",
               disable=not (s.progress and rank.main))
    try:
        for iteration in range(start + 1, s.max_iters + 1):
            images, targets, picked = (sampler.sample(*rank.part(s.batch_size)) if rank.distributed
                                       else sampler.sample(s.batch_size))
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                losses = step_model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                ids = [train_data.images[k]["id"] for k in picked]
                raise FloatingPointError(f"detector: loss is {loss.item()} at iteration {iteration} (image ids {ids}); "
                                         f"lower detector.lr (now {s.lr})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if s.clip_grad_norm:  # after backward, so of the all-reduced gradients
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
            scaler.step(opt)
            scaler.update()
            with warnings.catch_warnings():  # AMP's scaler skips the steps with inf gradients; the schedule goes on
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                sched.step()
            values = {"loss": float(loss.detach()), **{f"loss_{k}": float(v.detach()) for k, v in losses.items()}}
            for k, v in values.items():
                window["sums"][k] = window["sums"].get(k, 0.0) + v
            window["count"] += 1
            window["images"] += len(images) * rank.world  # the global batch
            bar.update(1)

            if iteration % s.log_interval == 0 or iteration == s.max_iters:
                elapsed = time.perf_counter() - window_start
                n = max(1, window["count"])
                record = dist.mean_over_ranks({k: v / n for k, v in window["sums"].items()}, rank, device)
                record.update({"iteration": iteration, "lr": opt.param_groups[0]["lr"],
                               "images_per_s": window["images"] / max(elapsed, 1e-9),
                               "peak_memory_mb": peak_memory_mb(device)})
                history.append(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
                window = {"sums": {}, "count": 0, "images": 0}
                window_start = time.perf_counter()
                if on_log and rank.main:
                    on_log({k: v for k, v in record.items() if k != "iteration"}, iteration)
            if rank.main and on_sample and grid_indices and (iteration % sample_interval == 0 or iteration == s.max_iters):
                dest = s.work_dir / f"sample_{iteration:06d}.png"
                samples.append(detection_grid(model, grid_data, grid_indices, s.score_threshold, dest,
                                              f"{s.arch} | iteration {iteration} | score >= {s.score_threshold}"))
                on_sample(dest, iteration)
            if rank.main and (iteration % s.checkpoint_interval == 0 or iteration == s.max_iters):
                save(iteration)
        dist.barrier(rank)  # the others wait for rank 0's last checkpoint, which the stage body publishes
    finally:
        bar.close()
        sampler.close()
    return DetectorTrainResult(
        checkpoint=latest, iterations=max(start, s.max_iters), resumed_from=start, history=history,
        seconds=time.perf_counter() - began, device=str(device), meta={**spec.meta(), "iteration": max(start, s.max_iters)},
        labels=labels, samples=samples, processes=rank.world,
    )


# ------------------------------------------------------------------------------------- sample grids

COLORS = {"face": (255, 80, 80), "plate": (80, 200, 255)}
GT_COLOR = (255, 255, 255)


def draw_detections(image: np.ndarray, detections: list[dict], gt_boxes: list[tuple[str, list[float]]] | None = None):
    """A PIL image: ground truth in thin white, detections in the category's colour with `name score`."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for _, (x0, y0, x1, y1) in gt_boxes or []:
        draw.rectangle([x0, y0, x1, y1], outline=GT_COLOR, width=1)
    for d in detections:
        x, y, w, h = d["bbox"]
        color = COLORS.get(d["category"], (255, 220, 0))
        draw.rectangle([x, y, x + w, y + h], outline=color, width=2)
        text = f"{d['category']} {d['score']:.2f}"
        tw = draw.textlength(text)
        ty = max(0, y - 11)
        draw.rectangle([x, ty, x + tw + 2, ty + 10], fill=color)
        draw.text((x + 1, ty - 1), text, fill=(0, 0, 0))
    return canvas


def detection_grid(model: torch.nn.Module, data: CocoBoxes, indices: list[int], score_threshold: float, dest: Path,
                   title: str = "", tile_height: int = 240, columns: int = 2) -> Path:
    """Detections drawn on `data`'s images `indices` (ground truth in white), tiled into one PNG."""
    from PIL import Image, ImageDraw

    from assets.contact_sheet import save_png

    names = {v: k for k, v in model.spec.categories.items()} if hasattr(model, "spec") else det.CATEGORY_NAMES
    images = [(data.load_image(k).mul(255).round().byte().permute(1, 2, 0).numpy()) for k in indices]
    preds = det.predict(model, images, score_threshold)
    tiles = []
    for k, image, dets in zip(indices, images, preds):
        t = data.targets[k]
        gt = [(names.get(int(l), str(int(l))), b) for b, l in zip(t["boxes"].tolist(), t["labels"].tolist())]
        tile = draw_detections(image, dets, gt)
        scale = tile_height / tile.height
        tiles.append(tile.resize((max(1, round(tile.width * scale)), tile_height), Image.Resampling.BILINEAR))
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    cell_w = max(t.width for t in tiles)
    top = 18 if title else 0
    sheet = Image.new("RGB", (columns * (cell_w + 4), top + rows * (tile_height + 4)), (24, 24, 24))
    if title:
        ImageDraw.Draw(sheet).text((4, 3), title, fill=(230, 230, 230))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * (cell_w + 4), top + (i // columns) * (tile_height + 4)))
    return save_png(sheet, dest)


def settings_from_params(params, train_json: Path, train_images: Path, work_dir: Path, fingerprint: str,
                         val_json: Path | None = None, val_images: Path | None = None, seed: int = 1234,
                         **overrides) -> DetectorTrainSettings:
    """`DetectorTrainSettings` from `orchestration.config.DetectorParams` (duck-typed: no orchestration import)."""
    values = dict(
        train_json=Path(train_json), train_images=Path(train_images), work_dir=Path(work_dir), fingerprint=fingerprint,
        val_json=Path(val_json) if val_json else None, val_images=Path(val_images) if val_images else None,
        arch=params.arch, pretrained_backbone=Path(params.pretrained_backbone) if params.pretrained_backbone else None,
        pretrained_sha256=params.pretrained_sha256, init_from=Path(params.init_from) if params.init_from else None,
        init_sha256=params.init_sha256, min_size=params.min_size, max_size=params.max_size,
        batch_size=params.batch_size, lr=params.lr, max_iters=params.max_iters, log_interval=params.log_interval,
        checkpoint_interval=params.checkpoint_interval, score_threshold=params.score_threshold, device=params.device,
        amp=params.amp, seed=seed,
    )
    known = {f for f in DetectorTrainSettings.__dataclass_fields__}
    for name in known:  # knobs the params section may grow (optimizer, warmup_iters, sample_interval, …)
        if name not in values and hasattr(params, name):
            values[name] = getattr(params, name)
    values.update(overrides)
    return DetectorTrainSettings(**values)
