"""Blend a restored crop back into the full frame through a feathered region mask.

The mask is grown by the feather width before it is blurred, so every pixel of the region itself gets
weight 1 (nothing of the original region shows through the seam) and the soft edge lies outside it.
"""

from __future__ import annotations

import cv2
import numpy as np

from assets.tracks import region_mask, unpad


def feather_px(region, fraction: float) -> int:
    x0, y0, x1, y1 = region
    return int(round(fraction * min(x1 - x0, y1 - y0)))


def blend_weights(crop, region, kind: str, mask_shape: str, feather: float, frame_shape: tuple[int, int]) -> np.ndarray:
    """float32 (crop h, crop w) weights in [0, 1]: 1 on the region, fading to 0 over the feather width."""
    cx0, cy0, cx1, cy1 = crop
    rx0, ry0, rx1, ry1 = region
    local = (rx0 - cx0, ry0 - cy0, rx1 - cx0, ry1 - cy0)
    mask = region_mask((cy1 - cy0, cx1 - cx0), local, kind, mask_shape).astype(np.float32) / 255.0
    k = feather_px(region, feather)
    # The soft edge must end inside the crop, except where the crop is cut by the frame's edge.
    h, w = frame_shape
    room = [d for d, at_edge in ((rx0 - cx0, cx0 == 0), (ry0 - cy0, cy0 == 0), (cx1 - rx1, cx1 == w), (cy1 - ry1, cy1 == h))
            if not at_edge]
    if room:
        k = min(k, min(room) // 2)
    if k < 1:
        return mask
    mask = cv2.dilate(mask, np.ones((2 * k + 1, 2 * k + 1), np.uint8))
    return cv2.blur(mask, (2 * k + 1, 2 * k + 1), borderType=cv2.BORDER_REPLICATE)


def blend_into(frame: np.ndarray, restored_scene_frame: np.ndarray, crop, pad, region, kind: str, mask_shape: str,
               feather: float) -> None:
    """Paste one restored (padded, scene-shaped) crop into `frame` in place."""
    piece = unpad(restored_scene_frame, pad)
    cx0, cy0, cx1, cy1 = crop
    if piece.shape[:2] != (cy1 - cy0, cx1 - cx0):
        raise ValueError(f"restored crop is {piece.shape[1]}x{piece.shape[0]}, crop box is {cx1 - cx0}x{cy1 - cy0}")
    weights = blend_weights(crop, region, kind, mask_shape, feather, frame.shape[:2])[..., None]
    target = frame[cy0:cy1, cx0:cx1].astype(np.float32)
    frame[cy0:cy1, cx0:cx1] = np.clip(np.rint(target + (piece.astype(np.float32) - target) * weights), 0, 255).astype(np.uint8)
