"""Image inputs shared by the evaluation backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A contiguous uint8 (H, W, 3) view of an RGB, RGBA or grayscale uint8 image; anything else is an error."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])


def read_rgb(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
