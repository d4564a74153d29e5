"""Pretraining of the embedded inpainting stand-in, once, at SET-UP (`python -m training.anonymizer.tiny_base`).

Why: a randomly initialised VAE and UNet inpaint noise, and a warm-up inside `lora_checkpoint` long enough to
change that would cost most of the demo's 15 minutes on every retraining. SD2 itself arrives pretrained; its
stand-in now does too -- on data the lineage never shows it:

- faces: one portrait each of 64 synthetic people drawn only for this (`data/media/pretrain_people`, none of
  them in the unified COCO set, so the base has seen nobody it is later judged on), cropped as
  `training.anonymizer.data` crops regions (context_pad 0.5), with the ellipse mask over the YuNet box;
- plates-like holes: random rectangles (plate aspects) over random crops of scikit-image's sample pictures
  (`GENERIC_IMAGES`: photos, textures, printed text; not the astronaut, which is a lineage clip).

Steps: the VAE learns to reconstruct (L1 + a tiny KL, SD's autoencoder recipe without its GAN), its
`scaling_factor` is set to 1 / std of the latents (how SD's 0.18215 was found), then the UNet learns inpainting
with the plain diffusion loss. The stand-in predicts x0 (`prediction_type: sample`, DDIM): trained for a few
minutes on a CPU, an epsilon-predicting UNet left its sampling errors in the fill as coloured noise, an
x0-predicting one gives a smooth, face-coloured fill with faint eyes and mouth (looked at on val crops, 300
steps each way). The joint loop and the samplers support epsilon (SD2-inpainting), v_prediction and sample.

Deterministic for a seed on one machine; the marker records steps, seed, data hashes and final losses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from assets.skimage_pictures import GENERIC_IMAGES, generic_images
from assets.weights import sha256_file
from training.anonymizer.data import crop_region, region_mask
from training.anonymizer.plate_anchor import encode, mask_latent, masked_image, to_tensor

VAE_KL_WEIGHT = 1e-6  # SD's autoencoder recipe: the KL term only keeps the latent from drifting


@dataclass(frozen=True)
class PretrainRecipe:
    resolution: int = 64
    vae_steps: int = 200
    unet_steps: int = 600
    batch_size: int = 8
    lr: float = 1e-3
    context_pad: float = 0.5
    seed: int = 0


def _portraits(index_path: Path) -> list[tuple[np.ndarray, tuple[float, float, float, float]]]:
    from PIL import Image

    doc = json.loads(index_path.read_text())
    out = []
    for person in doc["people"]:
        for image in person["images"]:
            with Image.open(index_path.parent / image["file"]) as im:
                out.append((np.asarray(im.convert("RGB")), tuple(float(v) for v in image["face_box"])))
    return out


class _Examples:
    """Seeded (image, mask, kind) examples: half face crops, half rectangles on frame crops."""

    def __init__(self, portraits, frames, recipe: PretrainRecipe):
        self.portraits, self.frames, self.r = portraits, frames, recipe
        self.rng = np.random.default_rng(recipe.seed)

    def face(self):
        rgb, (x0, y0, x1, y1) = self.portraits[int(self.rng.integers(len(self.portraits)))]
        jitter = self.rng.uniform(-0.08, 0.08, 2) * (x1 - x0)
        scale = self.rng.uniform(0.9, 1.1)
        w, h = (x1 - x0) * scale, (y1 - y0) * scale
        cx, cy = (x0 + x1) / 2 + jitter[0], (y0 + y1) / 2 + jitter[1]
        crop, box = crop_region(rgb, (cx - w / 2, cy - h / 2, w, h), self.r.resolution, self.r.context_pad)
        if self.rng.random() < 0.5:
            crop = crop[:, ::-1].copy()
            box = (self.r.resolution - box[2], box[1], self.r.resolution - box[0], box[3])
        return crop, region_mask("face", box, self.r.resolution), "face"

    def hole(self):
        frame = self.frames[int(self.rng.integers(len(self.frames)))]
        H, W = frame.shape[:2]
        side = int(self.rng.uniform(0.4, 1.0) * min(H, W))
        top, left = int(self.rng.integers(0, H - side + 1)), int(self.rng.integers(0, W - side + 1))
        R = self.r.resolution
        crop = cv2.resize(frame[top:top + side, left:left + side], (R, R), interpolation=cv2.INTER_AREA)
        w = self.rng.uniform(0.3, 0.6) * R
        h = w / self.rng.uniform(2.0, 4.7)
        bx, by = (R - w) / 2, (R - h) / 2
        return crop, region_mask("plate", (bx, by, bx + w, by + h), R), "plate"

    def batch(self, n: int):
        items = [self.face() if self.rng.random() < 0.5 else self.hole() for _ in range(n)]
        image = to_tensor([i[0] for i in items])
        mask = torch.from_numpy(np.stack([i[1] for i in items])).float()[:, None]
        return image, mask, [i[2] for i in items]


def _update(opt: torch.optim.Optimizer, loss: torch.Tensor, module: torch.nn.Module, grad_clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    opt.step()


def fit_vae(vae, next_images: Callable[[], torch.Tensor], steps: int, lr: float, grad_clip: float,
            generator: torch.Generator, desc: str, progress: bool = True) -> float:
    """Train `vae` in place to reconstruct `next_images()` batches ([-1, 1]): L1 + a tiny KL, SD's autoencoder
    recipe without its GAN. Returns the last loss; a non-finite loss stops it with an error naming `desc`."""
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    last = float("nan")
    for step in tqdm(range(1, steps + 1), desc=desc, unit="step", disable=not progress):
        image = next_images()
        posterior = vae.encode(image).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(image.device)
        loss = (vae.decode(z).sample - image).abs().mean() + VAE_KL_WEIGHT * posterior.kl().mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss is {loss.item()} at step {step}")
        _update(opt, loss, vae, grad_clip)
        last = float(loss.detach())
    vae.eval().requires_grad_(False)
    return last


@torch.no_grad()
def calibrate_latent_scale(vae, images: Iterable[torch.Tensor]) -> float:
    """Set `scaling_factor` to 1 / std of the latents of `images`, as SD's 0.18215 was found, so the noise
    schedule sees unit-variance latents; returns it."""
    latents = torch.cat([vae.encode(x).latent_dist.mean for x in images])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std().clamp_min(1e-6)))
    return vae.config.scaling_factor


def pretrain_stand_in(pipe, portraits_index: Path, recipe: PretrainRecipe = PretrainRecipe()) -> dict:
    """Train `pipe`'s VAE and UNet in place and switch it to an x0-predicting DDIM scheduler (see the module
    docstring); returns what the marker records."""
    from diffusers import DDIMScheduler

    torch.manual_seed(recipe.seed)
    portraits, frames = _portraits(portraits_index), generic_images()
    if not portraits:
        raise ValueError(f"{portraits_index}: no portraits; run `make setup`")
    examples = _Examples(portraits, frames, recipe)
    vae, unet, sched = pipe.vae, pipe.unet, pipe.scheduler
    noise_gen = torch.Generator().manual_seed(recipe.seed + 1)

    vae_loss = fit_vae(vae, lambda: examples.batch(recipe.batch_size)[0], recipe.vae_steps, recipe.lr, 1.0,
                       noise_gen, "stand-in pretraining: VAE")
    calibrate_latent_scale(vae, [examples.batch(16)[0] for _ in range(4)])

    tokens = {k: pipe.tokenizer([p], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids
              for k, p in (("face", "a photo of a person's face"), ("plate", "a car license plate"))}
    with torch.no_grad():
        states = {k: pipe.text_encoder(ids)[0] for k, ids in tokens.items()}
    # clip_sample off: x0 here is a latent, not an image in [-1, 1].
    pipe.scheduler = sched = DDIMScheduler.from_config(sched.config, prediction_type="sample", clip_sample=False)
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=0.0)
    unet_loss = float("nan")
    for _ in tqdm(range(recipe.unet_steps), desc="stand-in pretraining: UNet", unit="step"):
        image, mask, kinds = examples.batch(recipe.batch_size)
        with torch.no_grad():
            lat, cond = encode(vae, image), encode(vae, masked_image(image, mask))
        t = torch.randint(0, sched.config.num_train_timesteps, (len(kinds),), generator=noise_gen)
        noisy = sched.add_noise(lat, torch.randn(lat.shape, generator=noise_gen), t)
        ehs = torch.cat([states[k] for k in kinds])
        pred = unet(torch.cat([noisy, mask_latent(mask, lat.shape[-2:]), cond], 1), t, encoder_hidden_states=ehs).sample
        loss = F.mse_loss(pred, lat)
        _update(opt, loss, unet, 1.0)
        unet_loss = float(loss.detach())
    unet.eval().requires_grad_(False)
    return {
        "recipe": asdict(recipe), "prediction_type": "sample",
        "portraits": {"index": str(portraits_index), "count": len(portraits),
                      "index_sha256": sha256_file(portraits_index)},
        "generic_images": [f"skimage.data.{n}" for n in GENERIC_IMAGES],
        "final_loss": {"vae_l1_kl": round(vae_loss, 5), "unet_x0_mse": round(unet_loss, 5)},
        "scaling_factor": vae.config.scaling_factor,
    }
