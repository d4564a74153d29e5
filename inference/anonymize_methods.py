"""How a face or a plate is made unrecognisable: the trained anonymizer and the three methods people use today.

Every method takes an RGB uint8 image and its regions and returns a new image in which only pixels inside the
regions changed (faces: the ellipse inscribed in the box, the training recipe's mask; plates: the box) -- the
property the anonymization report and `aubergine anonymize` rely on, and a test checks for each method.

  blur      Gaussian blur, sigma a fixed share of the region's short side (scale-free: a large face gets a
            proportionally strong blur)
  pixelate  Lada's mosaic (`assets.mosaic`, the block size rule that makes the restoration pairs)
  fill      a solid box in the region's mean colour
  lora      the trained anonymizer: each region cropped with context at the model's resolution, faces
            denoised from pure noise, plates from a rendered fake text (`plate_anchor.render_anchor`) at the
            anchor strength; the crop is warped back and blended inside the region only. A region's `seed`
            fixes its replacement face and its fake text (one seed per track keeps a person's face and a
            plate's text from changing between video frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

METHODS = ("lora", "blur", "pixelate", "fill")
BASELINES = ("blur", "pixelate", "fill")
BLUR_SIGMA_RATIO = 0.25  # of the region's short side: features of a 100-px face are gone, its outline stays
FEATHER_RATIO = 0.08  # the anonymizer's blend ramp inside the region, of its short side


class AnonymizeError(ValueError):
    pass


@dataclass(frozen=True)
class Region:
    kind: str  # "face" | "plate"
    box: tuple[float, float, float, float]  # x, y, w, h in image pixels (COCO's convention)
    seed: int = 0


@dataclass
class Anonymized:
    image: np.ndarray
    fake_texts: list[str | None] = field(default_factory=list)  # per region: the plate text painted, else None


def region_mask(kind: str, box: Sequence[float], shape: tuple[int, ...]) -> np.ndarray:
    """bool (H, W): the ellipse inscribed in a face box, a plate's whole box (pixel centres inside)."""
    x, y, w, h = (float(v) for v in box)
    H, W = shape[:2]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    if kind == "plate":
        return (xs >= x) & (xs <= x + w) & (ys >= y) & (ys <= y + h)
    rx, ry = max(w / 2, 0.5), max(h / 2, 0.5)
    return ((xs - x - w / 2) / rx) ** 2 + ((ys - y - h / 2) / ry) ** 2 <= 1.0


def _check(image: np.ndarray, regions: Sequence[Region]) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise AnonymizeError(f"images must be RGB uint8 (H, W, 3), got {got}")
    for r in regions:
        if r.kind not in ("face", "plate"):
            raise AnonymizeError(f"region kind must be face or plate, got {r.kind!r}")


def _paste(image: np.ndarray, changed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None], changed, image)


def blur(image: np.ndarray, regions: Sequence[Region], sigma_ratio: float = BLUR_SIGMA_RATIO) -> Anonymized:
    _check(image, regions)
    out = image.copy()
    for r in regions:
        sigma = max(1.0, sigma_ratio * min(r.box[2], r.box[3]))
        out = _paste(out, cv2.GaussianBlur(out, (0, 0), sigma), region_mask(r.kind, r.box, image.shape))
    return Anonymized(out, [None] * len(regions))


def pixelate(image: np.ndarray, regions: Sequence[Region]) -> Anonymized:
    from assets.mosaic import MosaicSpec, apply_mosaic, block_size_v1

    _check(image, regions)
    out = image.copy()
    for r in regions:
        mask = region_mask(r.kind, r.box, image.shape)
        block = max(4, int(round(block_size_v1(float(mask.sum()), image.shape[:2]))))
        mosaiced, _ = apply_mosaic(out, mask.astype(np.uint8) * 255, MosaicSpec("square_avg", block, 1.0, 0))
        out = _paste(out, mosaiced, mask)  # a block whose centre is inside may reach past the region: cut it
    return Anonymized(out, [None] * len(regions))


def fill(image: np.ndarray, regions: Sequence[Region]) -> Anonymized:
    _check(image, regions)
    out = image.copy()
    for r in regions:
        mask = region_mask(r.kind, r.box, image.shape)
        if mask.any():
            out[mask] = np.round(out[mask].reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    return Anonymized(out, [None] * len(regions))


BASELINE_FUNCS: dict[str, Callable[[np.ndarray, Sequence[Region]], Anonymized]] = {
    "blur": blur, "pixelate": pixelate, "fill": fill}


class LoraAnonymizer:
    """The trained anonymizer on whole images: a stock `StableDiffusionInpaintPipeline` from the base folder
    with the LoRA folder loaded (`generator.load_lora_into_pipeline`), sampled as validation samples it."""

    def __init__(self, base_dir: str | Path, lora_dir: str | Path, *, resolution: int, context_pad: float,
                 face_steps: int, plate_steps: int, plate_text_anchor_strength: float, font_ratio: tuple[float, float],
                 prompt_face: str, prompt_plate: str, device: str = "cpu", separate_adapters: bool = False,
                 batch_size: int = 4):
        import torch
        from diffusers import StableDiffusionInpaintPipeline

        from training.anonymizer.generator import check_model_dir, load_lora_into_pipeline

        check_model_dir(base_dir, "sd2")
        self.pipe = StableDiffusionInpaintPipeline.from_pretrained(str(base_dir), safety_checker=None,
                                                                   requires_safety_checker=False)
        try:
            self.adapters = load_lora_into_pipeline(self.pipe, lora_dir)
        except (ValueError, RuntimeError, KeyError) as err:  # another base's shapes / module names
            raise AnonymizeError(f"{lora_dir}: this LoRA does not fit the base model {base_dir} ({err})") from None
        self.pipe.to(device)
        self.device = torch.device(device)
        self.base_dir, self.lora_dir = Path(base_dir), Path(lora_dir)
        self.resolution, self.context_pad = int(resolution), float(context_pad)
        self.face_steps, self.plate_steps = int(face_steps), int(plate_steps)
        self.strength, self.font_ratio = float(plate_text_anchor_strength), tuple(font_ratio)
        self.separate = separate_adapters and {"face", "plate"} <= set(self.adapters)
        self.batch_size = max(1, int(batch_size))
        with torch.no_grad():
            self.prompts = {k: self._encode(p) for k, p in (("face", prompt_face), ("plate", prompt_plate))}

    def _encode(self, prompt: str):
        tok = self.pipe.tokenizer([prompt], padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.pipe.text_encoder(tok)[0]

    def region_crop(self, image: np.ndarray, region: Region):
        """(crop, mask, forward affine) of one region at the model's resolution."""
        from training.anonymizer.data import crop_affine, crop_region, crop_window
        from training.anonymizer.data import region_mask as crop_mask

        crop, box = crop_region(image, region.box, self.resolution, self.context_pad)
        forward = crop_affine(*crop_window(region.box, self.resolution, self.context_pad))
        return crop, crop_mask(region.kind, box, self.resolution), forward

    def __call__(self, image: np.ndarray, regions: Sequence[Region]) -> Anonymized:
        painted, texts = self.paint(image, regions)
        return Anonymized(painted, texts)

    def _job(self, image: np.ndarray, region: Region, start: np.ndarray | None, track_strength: float) -> dict:
        """What one region needs: its crop, mask and warp, where denoising starts, how far and how many steps.
        Fresh: a face from pure noise, a plate from its rendered fake text. With `start` (the previous output
        frame, the region barely moved): from `start`'s pixels there, re-noised to the share `track_strength`
        of the fresh path's noise level, with that share of its steps (the same schedule spacing)."""
        from training.anonymizer.plate_anchor import render_anchor

        crop, mask, forward = self.region_crop(image, region)
        text, init = None, crop
        if region.kind == "plate":
            init, text = render_anchor(crop, mask, np.random.default_rng(int(region.seed)), *self.font_ratio)
            strength, steps = self.strength, self.plate_steps
        else:
            strength, steps = 1.0, self.face_steps
        if start is not None:
            init = self.region_crop(start, region)[0]
            share = min(1.0, max(1e-3, float(track_strength)))
            strength, steps = strength * share, max(1, int(round(steps * share)))
        return {"region": region, "crop": crop, "mask": mask, "forward": forward, "init": init, "text": text,
                "strength": strength, "steps": steps}

    def _denoise(self, jobs: list[dict]) -> list[np.ndarray]:
        import torch

        from training.anonymizer.plate_anchor import denoise_region, to_tensor, to_uint8

        kind, strength, steps = jobs[0]["region"].kind, jobs[0]["strength"], jobs[0]["steps"]
        if self.separate:
            self.pipe.set_adapters(kind)
        masks = torch.from_numpy(np.stack([j["mask"] for j in jobs])).float()[:, None].to(self.device)
        prompt = self.prompts[kind].expand(len(jobs), -1, -1)
        generators = [torch.Generator().manual_seed(int(j["region"].seed)) for j in jobs]
        with torch.no_grad():
            painted = denoise_region(self.pipe.unet, self.pipe.vae, self.pipe.scheduler.config, prompt,
                                     to_tensor([j["crop"] for j in jobs]).to(self.device),
                                     to_tensor([j["init"] for j in jobs]).to(self.device), masks,
                                     strength=strength, steps=steps, generator=generators)
        return to_uint8(painted)

    def paint(self, image: np.ndarray, regions: Sequence[Region], starts: Sequence[np.ndarray | None] | None = None,
              strength: float = 0.5) -> tuple[np.ndarray, list[str | None]]:
        """(image with every region replaced, fake text per region). Regions of one kind and schedule are
        denoised `batch_size` at a time; each keeps its own seed's noise, so batching does not pick faces."""
        _check(image, regions)
        starts = list(starts) if starts is not None else [None] * len(regions)
        jobs = [self._job(image, r, s, strength) for r, s in zip(regions, starts)]
        groups: dict[tuple, list[int]] = {}
        for i, j in enumerate(jobs):
            groups.setdefault((j["region"].kind, j["strength"], j["steps"]), []).append(i)
        results: dict[int, np.ndarray] = {}
        for members in groups.values():
            for k in range(0, len(members), self.batch_size):
                chunk = members[k:k + self.batch_size]
                results.update(zip(chunk, self._denoise([jobs[i] for i in chunk])))
        out = image.copy()
        H, W = image.shape[:2]
        for i, j in enumerate(jobs):  # pasted in region order: a later region wins where two overlap
            r = j["region"]
            back = cv2.warpAffine(results[i], j["forward"], (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE)
            inside = region_mask(r.kind, r.box, image.shape)
            k = max(1, int(round(FEATHER_RATIO * min(r.box[2], r.box[3])))) * 2 + 1
            alpha = cv2.GaussianBlur(inside.astype(np.float32), (k, k), 0) * inside  # ramps up inside, 0 outside
            out = np.round(out * (1 - alpha[..., None]) + back * alpha[..., None]).astype(np.uint8)
        return out, [j["text"] for j in jobs]


def anonymize(image: np.ndarray, regions: Sequence[Region], method: str, anonymizer: LoraAnonymizer | None = None
              ) -> Anonymized:
    """One image with one method (`METHODS`); `lora` needs the loaded anonymizer."""
    if method == "lora":
        if anonymizer is None:
            raise AnonymizeError("method lora needs a trained anonymizer (materialize lora_checkpoint)")
        return anonymizer(image, regions)
    if method not in BASELINE_FUNCS:
        raise AnonymizeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return BASELINE_FUNCS[method](image, regions)
