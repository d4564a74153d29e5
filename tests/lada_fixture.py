"""A tiny Lada version-2 restoration dataset written directly (no lineage run), for training-loop tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from assets.lada_meta import GT_DIR, LQ_DIR, LQ_MASK_DIR, MASK_DIR, META_DIR, meta_record
from assets.video import MASK_ENCODER, EncoderSettings, write_video

ENC = EncoderSettings(codec="libx264", crf=12, preset="ultrafast", threads=1)


def _scene(rng: np.random.Generator, frames: int, h: int, w: int):
    base = rng.integers(40, 200, size=(h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    gts, lqs, masks = [], [], []
    for t in range(frames):
        cy, cx = h // 2 + int(3 * np.sin(t / 3)), w // 2 + t % 5
        mask = (((yy - cy) / (h / 4)) ** 2 + ((xx - cx) / (w / 4)) ** 2 <= 1).astype(np.uint8) * 255
        gt = base.copy()
        gt[mask > 0] = (110, 40, 140)  # the "eggplant": a purple blob
        lq = base.copy()
        block = 8
        small = base[::block, ::block].repeat(block, 0).repeat(block, 1)[:h, :w]
        lq[mask > 0] = small[mask > 0]
        gts.append(gt), lqs.append(lq), masks.append(mask)
    return gts, lqs, masks


def write_tiny_dataset(root: Path, scenes: dict[str, int] | None = None, h: int = 72, w: int = 96, seed: int = 0) -> Path:
    """scenes: "<split>/<name>" -> frame count."""
    scenes = scenes or {"train/a": 14, "train/b": 12, "val/c": 12}
    rng = np.random.default_rng(seed)
    for key, frames in scenes.items():
        split, name = key.split("/")
        stem = f"{name}-000001-"
        base = root / split
        gts, lqs, masks = _scene(rng, frames, h, w)
        write_video(base / GT_DIR / f"{stem}.mp4", gts, 25, ENC)
        write_video(base / LQ_DIR / f"{stem}.mp4", lqs, 25, ENC)
        write_video(base / MASK_DIR / f"{stem}.mkv", masks, 25, MASK_ENCODER)
        write_video(base / LQ_MASK_DIR / f"{stem}.mkv", masks, 25, MASK_ENCODER)
        record = meta_record(
            name=name, fps=25, frames_count=frames, orig_shape=[h * 2, w * 2], scene_shape=[h, w],
            block_sizes={"mosaic_size_v3": 4, "mosaic_size_v2": 5, "mosaic_size_v1_normal": 8, "mosaic_size_v1_bounding": 8},
            pads=[[0, 0, 0, 0]] * frames, file_stem=stem,
            mosaic={"mod": "squa_avg", "rect_ratio": 1.0, "mosaic_size": 8, "feather_size": -1},
        )
        (base / META_DIR).mkdir(parents=True, exist_ok=True)
        (base / META_DIR / f"{stem}.json").write_text(json.dumps(record))
    return root
