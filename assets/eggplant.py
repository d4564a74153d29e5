"""Compositing an eggplant into a region: the ground truth of the restoration track.

The region's own pixels never survive into the GT: the mask is first filled from its surroundings
(OpenCV Telea inpainting), then the sprite goes on top. Otherwise pixels the sprite does not cover would
teach the model to undo the mosaic, which is exactly what must not happen.

Two fits (`eggplant.fit`). `contain` pastes the sprite as drawn, aspect kept, inside the region's box: the
emoji's diagonal body covers under half of its box, so most of a face ellipse showed the inpainted fill, a
bright wedge beside the sprite that the model learned as faithfully as the eggplant. `cover` (the default)
turns the sprite along the region's long axis (cap up, or cap left for a wide plate), stretches it to the
region's box and extends its colours past its outline, so every pixel of the mask is eggplant: a purple
body with a green cap at the region's place and scale, its outline kept as a faint shading.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# The fill is smooth by nature; inpainting a downscaled crop costs far less. 96 -> 64 px: 2.5 -> 1.4 ms a
# frame for a 130-px face, the composited GT looks the same (max pixel difference 31, mean 0.05, at the edge).
INPAINT_MAX_SIDE = 64


class SpriteError(FileNotFoundError):
    pass


def load_sprites(source: str, emoji_png: str | Path) -> list[np.ndarray]:
    """RGBA float32 sprites in [0, 1]: the provisioned emoji, or every PNG in a user folder."""
    paths = [Path(emoji_png)] if source == "emoji" else sorted(Path(source).glob("*.png"))
    if source == "emoji" and not paths[0].is_file():
        raise SpriteError(f"{paths[0]}: eggplant emoji not provisioned; run `make setup`")
    if source != "emoji" and not paths:
        raise SpriteError(f"{source}: eggplant.sprites names a folder with no PNG sprites")
    sprites = []
    for path in paths:
        image = Image.open(path).convert("RGBA")
        arr = np.asarray(image, dtype=np.float32) / 255.0
        ys, xs = np.nonzero(arr[..., 3] > 0.01)
        if len(ys) == 0:
            raise SpriteError(f"{path}: sprite is fully transparent")
        sprites.append(arr[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy())
    return sprites


def soften_alpha(sprite: np.ndarray, edge_feather: float) -> np.ndarray:
    out = sprite.copy()
    sigma = edge_feather * min(sprite.shape[:2]) / 2
    if sigma > 0.3:
        out[..., 3] = cv2.GaussianBlur(out[..., 3], (0, 0), sigma) * (sprite[..., 3] > 0)
    return out


def fill_region(frame: np.ndarray, mask: np.ndarray, bbox) -> None:
    """In place: replace the masked pixels inside `bbox` (x0, y0, x1, y1, with context) by an inpainted fill."""
    x0, y0, x1, y1 = bbox
    crop, m = frame[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    if not m.any():
        return
    h, w = m.shape
    scale = min(1.0, INPAINT_MAX_SIDE / max(h, w))
    small = cv2.resize(crop, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    small_m = cv2.resize(m, small.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    small_m = cv2.dilate(small_m, np.ones((3, 3), np.uint8))
    filled = cv2.inpaint(small, small_m, 3, cv2.INPAINT_TELEA)
    big = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
    cv2.copyTo(big, m, crop)  # into the frame's view (15x numpy's copyto with a broadcast `where`)


COVER_PAD = 0.35  # canvas around the turned sprite, per side, as a share of its size: what the colours extend into
OUTLINE_SHADE = 0.82  # brightness of the extended colours outside the sprite's own outline


def upright(sprite: np.ndarray) -> np.ndarray:
    """The sprite turned so that its cap (the green end; the alpha's principal axis when there is none) points
    up, cropped to its alpha's box."""
    alpha = sprite[..., 3]
    ys, xs = np.nonzero(alpha > 0.5)
    cy, cx = ys.mean(), xs.mean()
    green = (sprite[..., 1] > sprite[..., 0] + 0.1) & (alpha > 0.5)
    if green.sum() > 0.02 * len(ys):
        gy, gx = np.nonzero(green)
        angle = np.degrees(np.arctan2(gx.mean() - cx, cy - gy.mean()))
    else:
        m = cv2.moments((alpha > 0.5).astype(np.uint8))
        angle = 90.0 - np.degrees(0.5 * np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"]))
    h, w = alpha.shape
    side = int(np.ceil(np.hypot(h, w)))
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    matrix[:, 2] += (side / 2 - cx, side / 2 - cy)
    turned = cv2.warpAffine(sprite, matrix, (side, side), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    ys, xs = np.nonzero(turned[..., 3] > 0.01)
    return turned[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy()


def covering_canvas(sprite: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(RGB float canvas, the sprite's box in it): the sprite on a canvas COVER_PAD larger per side whose every
    pixel carries the sprite's colours (Telea inpainting from the sprite alone), shaded outside its outline."""
    h, w = sprite.shape[:2]
    py, px = int(round(h * COVER_PAD)), int(round(w * COVER_PAD))
    rgba = np.pad(sprite, ((py, py), (px, px), (0, 0)))
    inside = rgba[..., 3] > 0.5
    rgb = np.round(np.clip(rgba[..., :3], 0, 1) * 255).astype(np.uint8)
    extended = cv2.inpaint(rgb, (~inside).astype(np.uint8), 5, cv2.INPAINT_TELEA).astype(np.float32) / 255.0
    shade = OUTLINE_SHADE + (1 - OUTLINE_SHADE) * np.clip(rgba[..., 3:4], 0, 1)
    alpha = rgba[..., 3:4]
    canvas = np.clip(rgba[..., :3], 0, 1) * alpha + extended * shade * (1 - alpha)
    return canvas.astype(np.float32), (px, py, px + w, py + h)


@functools.lru_cache(maxsize=16)
def _cover_canvases(raw: bytes, shape: tuple[int, ...]) -> dict[bool, tuple[np.ndarray, tuple[int, int, int, int]]]:
    """The standing and lying canvases of a sprite (given as its bytes, so that equal sprites share them): each
    scene has its own compositor, and the canvases' inpainting cost 27 ms a scene, more than a scene's blending."""
    standing = upright(np.frombuffer(raw, dtype=np.float32).reshape(shape))
    lying = np.ascontiguousarray(np.rot90(standing))  # cap to the left, for regions wider than tall
    canvases = {}
    for lies, turned in ((False, standing), (True, lying)):
        canvas, box = covering_canvas(turned)
        canvas = np.rint(canvas * 255).astype(np.uint8)  # blended in uint8 (`_cover`)
        canvas.flags.writeable = False  # shared between compositors
        canvases[lies] = (canvas, box)
    return canvases


class EggplantCompositor:
    """Composites one sprite along one scene's smoothed regions, with a temporally smoothed colour match."""

    def __init__(self, sprite: np.ndarray, fill: float, color_match: float, edge_feather: float, fit: str = "cover"):
        if fit not in ("cover", "contain"):
            raise ValueError(f"eggplant.fit={fit!r}: expected cover or contain")
        self.fit, self.edge_feather = fit, edge_feather
        self.sprite = soften_alpha(sprite, edge_feather)
        opaque = self.sprite[..., 3] > 0.5
        self.sprite_mean = self.sprite[..., :3][opaque].mean(axis=0)
        self.fill, self.color_match = fill, color_match
        self._ring_mean: np.ndarray | None = None
        self._canvases: dict[bool, tuple[np.ndarray, tuple[int, int, int, int]]] = {}
        if fit == "cover":
            self._canvases = _cover_canvases(np.ascontiguousarray(sprite, dtype=np.float32).tobytes(), sprite.shape)

    def _surroundings(self, frame: np.ndarray, region) -> np.ndarray:
        x0, y0, x1, y1 = region
        h, w = frame.shape[:2]
        m = max(2, (x1 - x0) // 4)
        outer = frame[max(0, y0 - m) : min(h, y1 + m), max(0, x0 - m) : min(w, x1 + m)]
        # OpenCV's sums of the uint8 pixels: exact (float64 holds them), and no float copy of the crop.
        total = (np.array(cv2.sumElems(outer)[:3]) - np.array(cv2.sumElems(frame[y0:y1, x0:x1])[:3])).astype(np.float32)
        count = outer.shape[0] * outer.shape[1] - (y1 - y0) * (x1 - x0)
        mean = total / max(1, count) / 255.0
        # An exponential average keeps the tint from flickering with every frame's content.
        self._ring_mean = mean if self._ring_mean is None else 0.85 * self._ring_mean + 0.15 * mean
        return self._ring_mean

    def composite(self, frame: np.ndarray, region, mask: np.ndarray) -> np.ndarray:
        out = frame.copy()
        x0, y0, x1, y1 = region
        h, w = frame.shape[:2]
        ring = self._surroundings(frame, region)
        m = max(4, (x1 - x0) // 3)
        fill_region(out, mask, (max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m)))
        if self.fit == "cover":
            return self._cover(out, region, mask, ring)
        rw, rh = x1 - x0, y1 - y0
        sh, sw = self.sprite.shape[:2]
        scale = min(rw / sw, rh / sh) * self.fill
        tw, th = max(1, round(sw * scale)), max(1, round(sh * scale))
        sprite = cv2.resize(self.sprite, (tw, th), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        gain = 1.0 + self.color_match * (ring / np.maximum(self.sprite_mean, 1e-3) - 1.0)
        rgb = np.clip(sprite[..., :3] * gain, 0, 1)
        alpha = sprite[..., 3:4]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        px, py = int(round(cx - tw / 2)), int(round(cy - th / 2))
        # Clip the paste rectangle to the frame.
        sx0, sy0 = max(0, -px), max(0, -py)
        dx0, dy0 = max(0, px), max(0, py)
        dx1, dy1 = min(w, px + tw), min(h, py + th)
        if dx1 <= dx0 or dy1 <= dy0:
            return out
        rgb = rgb[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
        alpha = alpha[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
        base = out[dy0:dy1, dx0:dx1].astype(np.float32) / 255.0
        out[dy0:dy1, dx0:dx1] = np.round((rgb * alpha + base * (1 - alpha)) * 255).astype(np.uint8)
        return out

    def _cover(self, out: np.ndarray, region, mask: np.ndarray, ring: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = region
        h, w = out.shape[:2]
        rw, rh = max(1, x1 - x0), max(1, y1 - y0)
        canvas, (sx0, sy0, sx1, sy1) = self._canvases[rw > 1.2 * rh]
        # The sprite's own box goes onto the region's box (times `fill`), the canvas's margin around it.
        kx, ky = rw * self.fill / (sx1 - sx0), rh * self.fill / (sy1 - sy0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left = cx - ((sx0 + sx1) / 2) * kx
        top = cy - ((sy0 + sy1) / 2) * ky
        tw, th = max(1, round(canvas.shape[1] * kx)), max(1, round(canvas.shape[0] * ky))
        px, py = int(round(left)), int(round(top))
        dx0, dy0, dx1, dy1 = max(0, px), max(0, py), min(w, px + tw), min(h, py + th)
        if dx1 <= dx0 or dy1 <= dy0:
            return out
        big = cv2.resize(canvas, (tw, th), interpolation=cv2.INTER_AREA if kx < 1 else cv2.INTER_LINEAR)
        gain = 1.0 + self.color_match * (ring / np.maximum(self.sprite_mean, 1e-3) - 1.0)
        # uint8 throughout, in OpenCV's saturating arithmetic: the tint clips at 255 as np.clip did, and the
        # blend is one pass (half the compositing time of the float32 version; GT within 2 grey levels of it).
        rgb = cv2.multiply(big[dy0 - py : dy1 - py, dx0 - px : dx1 - px], (*map(float, gain), 0.0))
        alpha = mask[dy0:dy1, dx0:dx1].astype(np.float32) / 255.0
        sigma = self.edge_feather * min(rw, rh) / 4
        if sigma > 0.3:  # soften only inwards: the GT never paints outside the mask
            alpha = cv2.GaussianBlur(alpha, (0, 0), sigma) * (alpha > 0)
        base = out[dy0:dy1, dx0:dx1]
        out[dy0:dy1, dx0:dx1] = cv2.blendLinear(rgb, base, alpha, 1.0 - alpha)
        return out
