"""Plate-text anchoring: a plate is replaced by one that carries a random, valid, FAKE text.

An inpainting model asked to fill a plate box draws plate-like smudges; nothing makes it write legible,
non-original characters. So the recipe anchors plates: render a random valid plate string (assets.
synthetic_plates' text generator and DejaVu fonts) on a light panel inside the plate mask, then let the
LoRA UNet denoise from that render noised only part of the way (img2img): the low-noise start keeps the
characters, the denoising makes them look photographed. `plate_text_anchor_strength` is that noise level
(1 = pure noise, the render is forgotten; lower keeps more of the text), `plate_steps` the number of
denoising steps actually run (more = crisper characters).

The same DDIM sampler (deterministic given its starting noise) serves faces at strength 1 (`denoise_region`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from assets.synthetic_plates import FONT_FILES, font_path, random_plate_text

PANEL_RGB = (236, 236, 228)
_RENDER_CAP = 64  # characters are drawn this tall, then resized: tiny fonts hint badly in FreeType
MAX_TEXT_WIDTH = 0.9  # of the plate box width


def _ink_mask(text: str, font_name: str) -> np.ndarray:
    """Float [0, 1] coverage of `text`, cropped to its ink, about _RENDER_CAP px tall."""
    font = ImageFont.truetype(str(font_path(font_name)), _RENDER_CAP)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(image).text((2 - left, 2 - top), text, font=font, fill=255)
    ink = np.asarray(image, np.float32) / 255.0
    rows, cols = np.nonzero(ink > 0.05)
    return ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def render_anchor(crop: np.ndarray, mask: np.ndarray, rng: np.random.Generator, font_ratio_min: float,
                  font_ratio_max: float) -> tuple[np.ndarray, str]:
    """(crop with a light panel and a dark random plate text drawn inside `mask`, that text).

    The character height is drawn uniformly between font_ratio_min and font_ratio_max of the mask's box
    height; a text too wide for the box is condensed horizontally (as plate fonts are), never cut.
    """
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8 or mask.shape != crop.shape[:2]:
        raise ValueError(f"render_anchor: expected an (R, R, 3) uint8 crop and an (R, R) mask, "
                         f"got {crop.shape} {crop.dtype} and {mask.shape}")
    if not 0 < font_ratio_min <= font_ratio_max <= 1:
        raise ValueError(f"plate_text_font_ratio_min/max must satisfy 0 < min <= max <= 1, got "
                         f"{font_ratio_min}, {font_ratio_max}")
    text = random_plate_text(rng)
    out = crop.astype(np.float32)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return crop.copy(), text
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bw, bh = x1 - x0, y1 - y0
    panel = np.array(PANEL_RGB, np.float32) + rng.uniform(-12, 8, 3).astype(np.float32)
    out[mask] = panel
    fonts = sorted(FONT_FILES)
    ink = _ink_mask(text, fonts[int(rng.integers(len(fonts)))])
    ratio = float(rng.uniform(font_ratio_min, font_ratio_max))
    th = max(2, int(round(ratio * bh)))
    tw = max(2, int(round(ink.shape[1] * th / ink.shape[0])))
    tw = min(tw, max(2, int(math.floor(MAX_TEXT_WIDTH * bw))))
    coverage = np.asarray(Image.fromarray((ink * 255).astype(np.uint8)).resize((tw, th), Image.LANCZOS),
                          np.float32) / 255.0
    ty, tx = y0 + (bh - th) // 2, x0 + (bw - tw) // 2
    canvas = np.zeros(mask.shape, np.float32)
    canvas[ty:ty + th, tx:tx + tw] = coverage  # th <= bh and tw < bw: inside the box by construction
    canvas *= mask
    ink_rgb = np.full(3, rng.uniform(10, 45), np.float32)
    out = out * (1 - canvas[..., None]) + ink_rgb * canvas[..., None]
    return out.round().clip(0, 255).astype(np.uint8), text


# ------------------------------------------------------------------------------------------ sampling


def mask_latent(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    # Nearest, as the stock inpainting pipeline resizes its mask to the latent grid.
    return F.interpolate(mask, size=latent_hw, mode="nearest")


def masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inpainting conditioning: the region blanked (0 in [-1, 1] = mid grey), as the stock pipeline does."""
    return image * (mask < 0.5)


def encode(vae, image: torch.Tensor) -> torch.Tensor:
    """Scaled latent of an image in [-1, 1]; the posterior mean, so encoding draws no random numbers."""
    return vae.encode(image.to(vae.dtype)).latent_dist.mean * vae.config.scaling_factor


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample


def denoise_region(unet, vae, scheduler_config, encoder_hidden_states: torch.Tensor, original: torch.Tensor,
                   init: torch.Tensor, mask: torch.Tensor, *, strength: float, steps: int,
                   generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """img2img inpainting: `init` (N, 3, R, R in [-1, 1]) noised to `strength`, `steps` DDIM steps of the
    inpainting UNet conditioned on `original` with `mask` (N, 1, R, R) blanked, decoded and composited into
    `original`. strength 1: from pure noise (`init` is ignored). Returns (N, 3, R, R) in [-1, 1].
    A list of N generators draws each item's noise from its own (a region keeps its noise in any batch)."""
    from diffusers import DDIMScheduler

    if not 0 < strength <= 1:
        raise ValueError(f"plate_text_anchor_strength must be in (0, 1], got {strength}")
    if steps < 1:
        raise ValueError(f"plate_steps must be >= 1, got {steps}")
    scheduler = DDIMScheduler.from_config(scheduler_config)
    # The schedule is spaced for steps/strength steps and entered `steps` from its end: exactly `steps`
    # UNet calls run whatever the strength, starting at the noise level `strength` names.
    total = max(steps, int(round(steps / strength)))
    scheduler.set_timesteps(total, device=original.device)
    timesteps = scheduler.timesteps[total - steps:]
    dtype = next(unet.parameters()).dtype
    cond = encode(vae, masked_image(original, mask))
    m = mask_latent(mask, cond.shape[-2:]).to(cond.dtype)
    if isinstance(generator, (list, tuple)):
        noise = torch.cat([torch.randn((1, *cond.shape[1:]), generator=g, device="cpu", dtype=torch.float32)
                           for g in generator]).to(cond.device, cond.dtype)
    else:
        noise = torch.randn(cond.shape, generator=generator, device="cpu", dtype=torch.float32).to(cond.device, cond.dtype)
    if strength >= 1:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(encode(vae, init), noise, timesteps[:1].repeat(len(noise)))
    for t in timesteps:
        model_in = torch.cat([scheduler.scale_model_input(latents, t), m, cond], dim=1).to(dtype)
        pred = unet(model_in, t, encoder_hidden_states=encoder_hidden_states.to(dtype)).sample
        latents = scheduler.step(pred.to(latents.dtype), t, latents).prev_sample
    out = decode(vae, latents).float().clamp(-1, 1)
    return original * (1 - mask) + out * mask


def anchored_denoise(unet, vae, scheduler_config, encoder_hidden_states: torch.Tensor, original: torch.Tensor,
                     anchored: torch.Tensor, mask: torch.Tensor, *, plate_text_anchor_strength: float,
                     plate_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The plate path: start from the anchor's latent (render_anchor's crop, [-1, 1]) noised to
    plate_text_anchor_strength, run plate_steps denoising steps, composite into `original`."""
    return denoise_region(unet, vae, scheduler_config, encoder_hidden_states, original, anchored, mask,
                          strength=plate_text_anchor_strength, steps=plate_steps, generator=generator)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (R, R, 3) RGB list -> (N, 3, R, R) float in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(N, 3, R, R) in [-1, 1] -> uint8 (R, R, 3) RGB list."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).cpu().numpy())
