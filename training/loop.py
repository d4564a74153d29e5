"""The restoration training loop: Stage 1 (Charbonnier pixel loss) and Stage 2 (+ perceptual + GAN, EMA).

One loop for both stages, because Stage 2 with both extra loss weights at 0 must BE Stage 1: with the
weights at 0 the discriminator and VGG are never built or stepped, and the generator sees the same
batches, the same loss and the same optimiser, so its weights come out identical (tested).

Freezing: a module group whose lr multiplier is 0 gets `requires_grad=False`, so autograd does not even
compute its gradients. The mmengine recipe keeps them trainable at lr 0 and still pays for their backward
pass; `bench/basicvsrpp.py` measures the difference.

Resume: `<work_dir>/latest.pth` holds generator (+EMA, discriminator), optimisers, AMP scaler, iteration,
the sampler's and torch's RNG state and the loss history, written atomically every `checkpoint_interval`.
A run whose fingerprint (recipe + data) matches picks up there; a different recipe starts afresh.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from training import checkpoints as ckpt
from training import distributed as dist
from training.basicvsrpp import MODULE_GROUPS, BasicVSRPlusPlusNet, group_of
from training.data import PairSampler, fixed_pair
from training.restorer import pick_device

LATEST = "latest.pth"


@dataclass
class TrainSettings:
    stage: str  # "stage1" | "stage2"
    dataset_root: Path
    work_dir: Path
    fingerprint: str  # recipe + data identity; a checkpoint with another fingerprint is not resumed
    num_frame: int = 12
    batch_size: int = 1
    max_iters: int = 3000
    log_interval: int = 10
    checkpoint_interval: int = 500
    sample_interval: int = 100
    lr: float = 5e-5
    lr_discriminator: float = 5e-5
    lr_mult: dict[str, float] = field(default_factory=dict)
    region_loss_weight: float = 1.0  # pixel-loss weight inside the region (1 = the recipe's uniform loss)
    lq_size: int = 256
    mid_channels: int = 64
    num_blocks: int = 15
    init_from: Path | None = None  # Lada/our checkpoint to start from
    init_sha256: str | None = None
    spynet_from: Path | None = None
    perceptual_weight: float = 0.0
    gan_loss_weight: float = 0.0
    vgg19_weights: Path | None = None
    vgg19_sha256: str | None = None
    ema_decay: float | None = None  # None: no EMA generator (Stage 1)
    discriminator_channels: int = 64
    seed: int = 1234
    device: str = "auto"
    amp: bool = True
    cache_mb: int = 2048
    progress: bool = True


@dataclass
class TrainResult:
    checkpoint: Path
    iterations: int
    resumed_from: int
    history: list[dict]
    seconds: float
    trainable_params: int
    frozen_params: int
    device: str
    labels: dict[str, str]
    processes: int = 1  # data-parallel processes that trained it (training.launcher)


Hook = Callable[[dict, int], None]


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12, weight: torch.Tensor | None = None,
                weight_total: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Charbonnier distance; with `weight` (broadcastable), the weighted mean. `weight_total` replaces the
    weights' own sum as the denominator: a rank's share of a global batch divides by the global batch's mean
    share of weight, so that DDP's average over ranks is the global batch's weighted mean."""
    distance = torch.sqrt((pred - target) ** 2 + eps)
    if weight is None:
        return distance.mean()
    weight = weight.expand_as(distance)
    return (distance * weight).sum() / (weight.sum() if weight_total is None else weight_total)


def _weight_share(weight: torch.Tensor | None, rank: dist.Rank, device: torch.device) -> torch.Tensor | None:
    """The global batch's weight sum divided by the number of ranks (None: a single process uses its own)."""
    if weight is None or not rank.distributed:
        return None
    return dist.share_of_total(weight.to(device).expand(-1, -1, 3, -1, -1).sum(), rank)


def region_weight(batch, region_loss_weight: float) -> torch.Tensor | None:
    """Per-pixel weights: 1 outside the region, `region_loss_weight` inside; None at 1 (the recipe's uniform loss).

    Why a knob: only the region is pasted back (`restore` blends inside the mask), and in the dataset's crops it
    covers a third of the pixels or less, so a uniform L1 is won by copying the input (its median); measured on
    the embedded CPU default, the output stayed the mosaic for 300 iterations at weight 1 and moved towards the
    eggplant at 20."""
    if region_loss_weight == 1.0 or batch.mask is None:
        return None
    return 1.0 + (region_loss_weight - 1.0) * batch.mask


def apply_freezing(model: BasicVSRPlusPlusNet, lr_mult: dict[str, float]) -> tuple[int, int]:
    """requires_grad=False for groups at lr multiplier 0; returns (trainable, frozen) parameter counts."""
    trainable = frozen = 0
    for name, p in model.named_parameters():
        keep = lr_mult.get(group_of(name), 1.0) > 0
        p.requires_grad_(keep)
        if keep:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen


def param_groups(model: BasicVSRPlusPlusNet, lr: float, lr_mult: dict[str, float]) -> list[dict]:
    groups = []
    for group in MODULE_GROUPS:
        params = [p for n, p in model.named_parameters() if group_of(n) == group and p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr * lr_mult.get(group, 1.0), "name": group})
    return groups


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _init_generator(s: TrainSettings) -> tuple[BasicVSRPlusPlusNet, dict[str, str]]:
    labels = {}
    if s.init_from is not None:
        model, info = ckpt.load_generator(s.init_from, s.init_sha256)
        labels["init"] = f"{s.init_from} ({info['part']} weights, mid_channels={info['mid_channels']}, num_blocks={info['num_blocks']})"
        return model, labels
    torch.manual_seed(s.seed)
    model = BasicVSRPlusPlusNet(s.mid_channels, s.num_blocks)
    labels["init"] = f"random init (embedded default: no pretrained Lada weights), mid_channels={s.mid_channels}, num_blocks={s.num_blocks}"
    if s.spynet_from is not None:
        ckpt.load_spynet(model, s.spynet_from)
        labels["spynet"] = str(s.spynet_from)
    return model, labels


class _Gan:
    """Stage 2's extra parts, built only when their loss weight is above 0."""

    def __init__(self, s: TrainSettings, device: torch.device):
        self.perceptual = self.disc = self.gan_loss = self.opt_d = None
        self.labels: dict[str, str] = {}
        if s.perceptual_weight > 0:
            from training.perceptual import PerceptualLoss

            if s.vgg19_weights is not None and s.vgg19_sha256:
                from assets.weights import verify_weights

                verify_weights(s.vgg19_weights, s.vgg19_sha256, "put torchvision's vgg19-dcbb9e9d.pth at the configured path")
            self.perceptual = PerceptualLoss(
                vgg_weights=s.vgg19_weights, perceptual_weight=s.perceptual_weight, seed=s.seed, channel_order="bgr",
            ).to(device)
            self.labels["perceptual"] = self.perceptual.weights_label
        if s.gan_loss_weight > 0:
            from training.discriminator import UNetDiscriminatorWithSpectralNorm
            from training.gan_loss import GANLoss

            torch.manual_seed(s.seed + 1)
            self.disc = UNetDiscriminatorWithSpectralNorm(3, s.discriminator_channels, skip_connection=True).to(device)
            self.gan_loss = GANLoss("vanilla", loss_weight=s.gan_loss_weight).to(device)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=s.lr_discriminator, betas=(0.9, 0.99))
            self.labels["discriminator"] = "U-Net discriminator with spectral norm (random init)"


def train(s: TrainSettings, on_log: Hook | None = None, on_sample: Callable[[Path, int], None] | None = None,
          sampler=None, sample_batch=None) -> TrainResult:
    """`sampler` (anything with `sample(n) -> Batch`, `state()`, `load_state()`) replaces the dataset's pairs:
    the restoration base draws synthetic mosaics through it (training/restoration_base.py)."""
    rank = dist.current()
    device = dist.device_for(rank, pick_device(s.device))
    dist.init(rank, device, dist.timeout_s())
    use_amp = s.amp and device.type == "cuda"
    s.work_dir.mkdir(parents=True, exist_ok=True)
    if sampler is None:
        sampler = PairSampler(s.dataset_root, "train", s.num_frame, s.lq_size, s.seed, s.cache_mb,
                              masks=s.region_loss_weight != 1.0)
    generator, labels = _init_generator(s)
    generator.to(device).train()
    trainable, frozen = apply_freezing(generator, s.lr_mult)
    if trainable == 0:
        raise ValueError(f"{s.stage}: every module group has lr multiplier 0, nothing would train")
    opt_g = torch.optim.Adam(param_groups(generator, s.lr, s.lr_mult), lr=s.lr, betas=(0.9, 0.99))
    ema = ckpt.clone_frozen(generator) if s.ema_decay is not None else None
    gan = _Gan(s, device)
    labels.update(gan.labels)
    if rank.distributed:
        labels["distributed"] = dist.describe(rank, device, s.batch_size)
    # After freezing: DDP buckets only what requires gradients. The EMA is updated on every rank (the weights are
    # equal after each all-reduced step, so are the EMAs); rank 0 saves it.
    model = dist.wrap(generator, rank, device)
    # The discriminator's own update goes through DDP; the generator's adversarial term calls the bare module
    # (its parameters are frozen for that pass, so DDP must not wait for their gradients).
    disc_step = dist.wrap(gan.disc, rank, device) if gan.disc is not None else None
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict] = []
    start = 0

    latest = s.work_dir / LATEST
    if latest.is_file():
        state = ckpt.read_checkpoint(latest, None, "delete the work folder to start afresh")
        if (state.get("meta") or {}).get("fingerprint") == s.fingerprint:
            sd = ckpt.state_dict_of(state)
            ckpt.load_strict(generator, ckpt.split_prefix(sd, "generator."), f"{latest} (generator)")
            if ema is not None:
                ckpt.load_strict(ema, ckpt.split_prefix(sd, "generator_ema."), f"{latest} (generator_ema)")
            if gan.disc is not None:
                ckpt.load_strict(gan.disc, ckpt.split_prefix(sd, "discriminator."), f"{latest} (discriminator)")
                gan.opt_d.load_state_dict(state["optimizers"]["discriminator"])
            opt_g.load_state_dict(state["optimizers"]["generator"])
            scaler.load_state_dict(state["scaler"])
            sampler.load_state(state["rng"]["sampler"])
            torch.set_rng_state(state["rng"]["torch"])
            history = list(state.get("history", []))
            start = int(state["meta"]["iteration"])
            labels["resumed"] = f"from {latest} at iteration {start}"

    def save(iteration: int, dest: Path) -> Path:
        # input_size: the square side the model was trained at; `aubergine restore` defaults --size to it.
        meta = {**generator.config, "input_size": s.lq_size, "stage": s.stage, "iteration": iteration, "fingerprint": s.fingerprint,
                "labels": json.dumps(labels)}
        payload = {
            "meta": meta,
            "state_dict": ckpt.lada_state_dict(generator, ema, gan.disc),
            "optimizers": {"generator": opt_g.state_dict(), **({"discriminator": gan.opt_d.state_dict()} if gan.opt_d else {})},
            "scaler": scaler.state_dict(),
            "rng": {"sampler": sampler.state(), "torch": torch.get_rng_state()},
            "history": history,
        }
        return ckpt.save_atomic(payload, dest)

    if sample_batch is None:
        sample_batch = (fixed_pair(s.dataset_root, "val", s.num_frame, s.lq_size)
                        or fixed_pair(s.dataset_root, "train", s.num_frame, s.lq_size))
    began = time.perf_counter()
    window_start, window_iters = time.perf_counter(), 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=s.max_iters, initial=start, desc=s.stage, unit="it", disable=not (s.progress and rank.main))
    for iteration in range(start + 1, s.max_iters + 1):
        batch = sampler.sample(*rank.part(s.batch_size)) if rank.distributed else sampler.sample(s.batch_size)
        lq, gt = batch.lq.to(device), batch.gt.to(device)
        weight = region_weight(batch, s.region_loss_weight)
        weight_total = _weight_share(weight, rank, device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            out = model(lq)
            losses = {"loss_pix": charbonnier(out.float(), gt, weight=None if weight is None else weight.to(device),
                                              weight_total=weight_total)}
            if gan.perceptual is not None:
                losses["loss_perceptual"] = gan.perceptual(out.flatten(0, 1).float(), gt.flatten(0, 1))
            if gan.disc is not None:
                for p in gan.disc.parameters():
                    p.requires_grad_(False)
                losses["loss_gan"] = gan.gan_loss(gan.disc(out.flatten(0, 1)), True, is_disc=False)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{s.stage}: loss is {loss.item()} at iteration {iteration} (batch {batch.names})")
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt_g)
        if gan.disc is not None:
            for p in gan.disc.parameters():
                p.requires_grad_(True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                real = gan.gan_loss(disc_step(gt.flatten(0, 1)), True, is_disc=True)
                fake = gan.gan_loss(disc_step(out.detach().flatten(0, 1)), False, is_disc=True)
            gan.opt_d.zero_grad(set_to_none=True)
            scaler.scale(real + fake).backward()
            scaler.step(gan.opt_d)
            losses["loss_d_real"], losses["loss_d_fake"] = real, fake
        scaler.update()
        if ema is not None:
            with torch.no_grad():
                for e, g in zip(ema.parameters(), generator.parameters()):
                    e.lerp_(g, 1.0 - s.ema_decay)
                for e, g in zip(ema.buffers(), generator.buffers()):
                    e.copy_(g)
        window_iters += 1
        bar.update(1)

        if iteration % s.log_interval == 0 or iteration == s.max_iters:
            elapsed = time.perf_counter() - window_start
            record = dist.mean_over_ranks({k: float(v.detach()) for k, v in losses.items()}, rank, device)
            record.update({
                "iteration": iteration, "lr": opt_g.param_groups[0]["lr"], "iters_per_s": window_iters / max(elapsed, 1e-9),
                "peak_memory_mb": peak_memory_mb(device),
            })
            history.append(record)
            bar.set_postfix(loss=f"{record['loss_pix']:.4f}")
            if on_log and rank.main:
                on_log({k: v for k, v in record.items() if k != "iteration"}, iteration)
            window_start, window_iters = time.perf_counter(), 0
        if (rank.main and on_sample and sample_batch is not None
                and (iteration % s.sample_interval == 0 or iteration == s.max_iters)):
            on_sample(_sample_grid(ema or generator, sample_batch, device, s.work_dir / f"sample_{iteration:06d}.png", iteration), iteration)
        if rank.main and (iteration % s.checkpoint_interval == 0 or iteration == s.max_iters):
            save(iteration, latest)
    bar.close()
    if rank.main and start >= s.max_iters and not latest.is_file():
        save(start, latest)
    # The others wait for rank 0's last checkpoint, which the stage body publishes.
    dist.barrier(rank)
    return TrainResult(
        checkpoint=latest, iterations=max(start, s.max_iters), resumed_from=start, history=history,
        seconds=time.perf_counter() - began, trainable_params=trainable, frozen_params=frozen, device=str(device),
        labels=labels, processes=rank.world,
    )


@torch.no_grad()
def _sample_grid(model: BasicVSRPlusPlusNet, batch, device: torch.device, dest: Path, iteration: int) -> Path:
    from assets import contact_sheet
    from training.geometry import to_frames

    was_training = model.training
    model.eval()
    out = model(batch.lq.to(device))[0]
    model.train(was_training)
    picks = contact_sheet.pick_indices(batch.lq.shape[1], 4)
    lq, gt, res = to_frames(batch.lq[0]), to_frames(batch.gt[0]), to_frames(out)
    sheet = contact_sheet.grid(
        {"LQ": [lq[i] for i in picks], "output": [res[i] for i in picks], "GT": [gt[i] for i in picks]},
        f"{batch.names[0]} | iteration {iteration}",
    )
    return contact_sheet.save_png(sheet, dest)


def write_curves(history: list[dict], dest: Path, title: str, x: str = "iteration") -> Path:
    """Loss curves as a PNG, for MLflow, Dagster and the report; `x` names the step field of the history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from assets.atomic import atomic_path

    keys = [k for k in (history[0] if history else {}) if k.startswith("loss")]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for key in keys:
        ax.plot([h[x] for h in history], [h.get(key, math.nan) for h in history], label=key)
    ax.set_xlabel(x)
    ax.set_yscale("log" if all(h[k] > 0 for h in history for k in keys) and keys else "linear")
    ax.set_title(title)
    if keys:
        ax.legend()
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest


def run_rate(done: float, seconds: float) -> float:
    """A whole run's average rate: what this process did over the seconds it spent, sampling, logging and
    checkpoints included (a logging window's rate leaves those out and swings with the last few steps)."""
    return done / seconds if done > 0 and seconds > 0 else math.nan


def summary(result: TrainResult) -> dict:
    last = result.history[-1] if result.history else {}
    return {
        "iterations": result.iterations,
        "resumed_from": result.resumed_from,
        "final_loss_pix": last.get("loss_pix", math.nan),
        "iters_per_s": run_rate(result.iterations - result.resumed_from, result.seconds),
        "iters_per_s_last_window": last.get("iters_per_s", math.nan),
        "peak_memory_mb": last.get("peak_memory_mb", math.nan),
        "trainable_params": result.trainable_params,
        "frozen_params": result.frozen_params,
        "train_seconds": round(result.seconds, 2),
        "processes": result.processes,
    }
