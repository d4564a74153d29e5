"""Scale/pad a clip to the model's square input and back, and convert frames to and from tensors.

Lada's model sees square 256x256 clips: a crop is resized so its longer side fits, then padded with zeros
(centred) to the square. The same function serves training, validation and whole-video restoration, so the
model never sees a geometry at inference that it did not see in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class Fit:
    """How a (h, w) clip was placed in a size x size square: resized to (rh, rw), then padded."""

    h: int
    w: int
    rh: int
    rw: int
    top: int
    left: int
    size: int


def plan_fit(h: int, w: int, size: int) -> Fit:
    scale = size / max(h, w)
    rh, rw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    return Fit(h, w, rh, rw, (size - rh) // 2, (size - rw) // 2, size)


def fit_frames(frames: list[np.ndarray], size: int, interpolation: int | None = None) -> tuple[np.ndarray, Fit]:
    """(t, size, size[, c]) uint8 with the clip centred; all frames must share one shape."""
    h, w = frames[0].shape[:2]
    fit = plan_fit(h, w, size)
    if interpolation is None:
        interpolation = cv2.INTER_AREA if fit.rh < h else cv2.INTER_CUBIC
    out = np.zeros((len(frames), size, size, *frames[0].shape[2:]), dtype=np.uint8)
    for i, frame in enumerate(frames):
        if frame.shape[:2] != (h, w):
            raise ValueError(f"frame {i} is {frame.shape[1]}x{frame.shape[0]}, expected {w}x{h} like frame 0")
        resized = cv2.resize(frame, (fit.rw, fit.rh), interpolation=interpolation) if (fit.rh, fit.rw) != (h, w) else frame
        out[i, fit.top : fit.top + fit.rh, fit.left : fit.left + fit.rw] = resized.reshape(fit.rh, fit.rw, *frame.shape[2:])
    return out, fit


def unfit_frames(squares: np.ndarray, fit: Fit) -> list[np.ndarray]:
    """Back to the clip's own size: cut the pad away and resize."""
    out = []
    for square in squares:
        inner = square[fit.top : fit.top + fit.rh, fit.left : fit.left + fit.rw]
        interpolation = cv2.INTER_AREA if fit.rh > fit.h else cv2.INTER_CUBIC
        out.append(cv2.resize(inner, (fit.w, fit.h), interpolation=interpolation) if (fit.rh, fit.rw) != (fit.h, fit.w) else inner.copy())
    return out


def to_tensor(frames_rgb: np.ndarray) -> torch.Tensor:
    """(t, h, w, 3) RGB uint8 → (t, 3, h, w) BGR float in [0, 1] (Lada's network works in OpenCV's BGR order)."""
    return torch.from_numpy(np.ascontiguousarray(frames_rgb[..., ::-1])).permute(0, 3, 1, 2).float().div_(255.0)


def to_frames(tensor: torch.Tensor) -> np.ndarray:
    """(t, 3, h, w) BGR float → (t, h, w, 3) RGB uint8, rounded and clipped as Lada does."""
    arr = tensor.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return np.ascontiguousarray(arr[..., ::-1])
