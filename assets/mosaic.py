"""Lada-style mosaic of the original content inside a region, and optional LQ degradation.

The block grid is anchored at the frame's origin (not the crop's), so a static region gets a static grid
the way an editor's mosaic looks. Block size follows the idea of Lada's `mosaic_size_v1_normal`: it grows
with the region's area, normalised by the frame's short side.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

# Our mode names -> the names Lada stores in its metadata (`mosaic.mod`).
LADA_MODE_NAMES = {"square_mid": "squa_mid", "square_avg": "squa_avg", "rect_avg": "rect_avg"}


def scene_rng(seed: int, *keys) -> np.random.Generator:
    """A generator that depends only on the seed and the keys (clip name, scene id), not on run order."""
    digest = hashlib.sha256(":".join(str(k) for k in (seed, *keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def block_size_v1(mask_area: float, frame_shape: tuple[int, int], bounding_area: float | None = None) -> float:
    """Block size from region area on a 512-px reference frame; piecewise linear, 5 px for tiny regions up to
    12+ px for large ones (the shape of Lada's v1 rule). Pass `bounding_area` for the 'bounding' variant."""
    alpha = min(frame_shape) / 512.0
    area = (bounding_area if bounding_area is not None else mask_area) / (alpha * alpha)
    knots = ((50000, 50000, 12), (20000, 30000, 8), (5000, 20000, 7), (1000, 5000, 6))
    for low, span, base in knots:
        if area > low:
            return alpha * ((area - low) / span + base)
    return alpha * (area / 1000 + 5)


def block_size_v2(region_long_side: float, frame_shape: tuple[int, int]) -> float:
    """1.0%-1.8% of the frame's long side, rising with how much of it the region spans (20 steps)."""
    ratio = region_long_side / max(frame_shape)
    steps = np.linspace(0, 1, 20)
    sizes = np.linspace(0.01, 0.018, 20)
    return float(sizes[int(np.argmin(np.abs(steps - ratio)))] * max(frame_shape))


def block_size_v3(frame_shape: tuple[int, int]) -> int:
    """The Pixiv guideline: 1/100 of the long side, at least 4 px."""
    return max(4, max(frame_shape) // 100)


@dataclass(frozen=True)
class MosaicSpec:
    mode: str  # square_mid | square_avg | rect_avg
    block: int
    rect_ratio: float
    feather: int  # px of box blur on the mask edge; 0 = hard edge

    def lada_dict(self) -> dict:
        return {"mod": LADA_MODE_NAMES[self.mode], "rect_ratio": self.rect_ratio, "mosaic_size": self.block,
                "feather_size": self.feather if self.feather > 0 else -1}


def sample_spec(rng: np.random.Generator, base_block: float, params) -> MosaicSpec:
    mode = params.modes[int(rng.integers(len(params.modes)))]
    block = max(params.min_block_size, int(round(base_block * rng.uniform(*params.block_size_scale))))
    rect_ratio = float(round(rng.uniform(*params.rect_ratio), 3)) if mode == "rect_avg" else 1.0
    feather = int(round(rng.uniform(*params.feather) * block))
    return MosaicSpec(mode, block, rect_ratio, feather)


def apply_mosaic(frame: np.ndarray, mask: np.ndarray, spec: MosaicSpec) -> tuple[np.ndarray, np.ndarray]:
    """Return (mosaiced frame, mosaic mask). A block is mosaiced when its centre pixel lies in `mask`."""
    out = frame.copy()
    mosaic_mask = np.zeros(mask.shape, dtype=np.uint8)
    bx, by, bwidth, bheight = cv2.boundingRect(mask)
    if bwidth == 0 or bheight == 0:
        return out, mosaic_mask
    bh, bw = spec.block, max(1, int(spec.block * spec.rect_ratio))
    h, w = mask.shape
    # Work on the grid-aligned bounding box of the mask only.
    y0, x0 = (by // bh) * bh, (bx // bw) * bw
    y1, x1 = -(-(by + bheight) // bh) * bh, -(-(bx + bwidth) // bw) * bw
    region = frame[y0:min(y1, h), x0:min(x1, w)].astype(np.float32)
    pad_y, pad_x = (y1 - y0) - region.shape[0], (x1 - x0) - region.shape[1]
    if pad_y or pad_x:
        region = np.pad(region, ((0, pad_y), (0, pad_x), (0, 0)), mode="reflect" if min(region.shape[:2]) > 1 else "edge")
    ny, nx = (y1 - y0) // bh, (x1 - x0) // bw
    blocks = region.reshape(ny, bh, nx, bw, -1)
    if spec.mode == "square_mid":
        colours = blocks[:, bh // 2, :, bw // 2, :]
    else:
        colours = blocks.mean(axis=(1, 3))
    cy = np.clip(y0 + np.arange(ny) * bh + bh // 2, 0, h - 1)
    cx = np.clip(x0 + np.arange(nx) * bw + bw // 2, 0, w - 1)
    inside = mask[np.ix_(cy, cx)] > 0
    tile = np.repeat(np.repeat(colours, bh, axis=0), bw, axis=1)
    tile_in = np.repeat(np.repeat(inside, bh, axis=0), bw, axis=1)
    hh, ww = min(y1, h) - y0, min(x1, w) - x0
    tile, tile_in = tile[:hh, :ww], tile_in[:hh, :ww]
    target = out[y0 : y0 + hh, x0 : x0 + ww]
    mosaiced = np.where(tile_in[..., None], np.round(tile).astype(np.uint8), target)
    if spec.feather > 0:
        # The box filter on the mask around the block grid only (k px of context: the same values as on the
        # whole mask, whose float copy and blur per frame cost more than the mosaic itself).
        k = spec.feather
        wy0, wx0 = max(0, y0 - k), max(0, x0 - k)
        window = mask[wy0 : min(h, y0 + hh + k), wx0 : min(w, x0 + ww + k)].astype(np.float32) / 255.0
        soft = cv2.blur(window, (k, k))[y0 - wy0 : y0 - wy0 + hh, x0 - wx0 : x0 - wx0 + ww, None]
        mosaiced = np.round(target * (1 - soft) + mosaiced * soft).astype(np.uint8)
    out[y0 : y0 + hh, x0 : x0 + ww] = mosaiced
    mosaic_mask[y0 : y0 + hh, x0 : x0 + ww] = np.where(tile_in, 255, 0).astype(np.uint8)
    return out, mosaic_mask


@dataclass(frozen=True)
class DegradeSpec:
    crf: int
    blur_sigma: float
    noise_sigma: float


def sample_degrade(rng: np.random.Generator, params) -> DegradeSpec:
    return DegradeSpec(
        crf=int(rng.integers(params.crf[0], params.crf[1] + 1)),
        blur_sigma=float(rng.uniform(*params.blur_sigma)),
        noise_sigma=float(rng.uniform(*params.noise_sigma)),
    )


def degrade_frame(frame: np.ndarray, spec: DegradeSpec, rng: np.random.Generator) -> np.ndarray:
    out = frame.astype(np.float32)
    if spec.blur_sigma > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), spec.blur_sigma)
    if spec.noise_sigma > 0:
        out = out + rng.normal(0.0, spec.noise_sigma, out.shape).astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
