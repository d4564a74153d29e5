"""Synthetic licence plates: plate-like panels with rendered random valid text, composited into real backgrounds.

Each output image is one background (a frame of the sample media, a photo) scaled so its long side is
`image_side`, with `per_image` plates on it. A plate is drawn large (supersampled) and then brought to its size:

  panel    a light rounded rectangle (white, or yellow for some EU-style plates) with a dark border; EU-style
           formats get, sometimes, a blue strip on the left with a ring of yellow dots (no country letters: the
           panel carries no text but the annotated one, so OCR scores stay exact).
  text     a random valid string of one of PLATE_FORMATS, dark, in DejaVu Sans Bold or DejaVu Sans Mono Bold.
           Its cap height is `font_ratio` x the plate height; a line that does not fit the width is condensed
           horizontally (as plate fonts are), down to MIN_SQUEEZE_ONE_ROW; below that the text goes on two rows
           (split at the separator nearest the middle) whose block -- both rows and the gap between them -- is
           `font_ratio` x the plate height. Only if even two rows would need more than MIN_SQUEEZE_TWO_ROWS is
           the text made smaller; the annotation always records the ratio actually drawn (`extra.font_ratio`)
           and the number of rows (`extra.rows`). `max_rows=1` forbids two rows (the text is made smaller
           instead): EasyOCR's `read_plate` joins fragments left to right, which reads a two-row plate out of order.
  size     plate width = `width_ratio` x image width, width / height = `aspect`.
  realism  (the `realism` knob, 1 by default, 0 = clean flat panels for tests): a small perspective warp
           (yaw, pitch, roll, corner jitter), a soft vertical shading, brightness and colour matched a bit to
           the surroundings, a slight Gaussian blur, sensor noise and sometimes a JPEG round trip of the panel.
           All of it happens inside the panel: pixels outside the plates are the background's, unchanged.

The box of a plate is the axis-aligned bounding box of the warped panel as composited (every pixel the panel
touches, so nothing outside the boxes changes), inside the image by construction. Plates never overlap: a
placement that would is retried (PLACEMENT_TRIES times) and then skipped with a `Problem`. Regions the background
already shows (`known_boxes`, e.g. the real plates of the alpr photo) stay labelled and uncovered.

Determinism: image `i` draws everything from `np.random.default_rng([seed, i])`, drawing is PIL + OpenCV on
fixed-size arrays and PNGs are written without timestamps, so the same (backgrounds, params, seed) give
byte-identical files on one machine, and any image can be rendered alone (or in parallel) with the same result.
Background `i % n` of the n readable backgrounds is used for image `i`; the group of an image is
`synthetic:<background stem>`, so all images of one background land in the same split.

Fonts: DejaVu Sans Bold and DejaVu Sans Mono Bold as shipped inside matplotlib (`mpl-data/fonts/ttf/`; matplotlib is
a project dependency). Licence: the Bitstream Vera Fonts licence (Bitstream Vera glyphs, copyright Bitstream, Inc.)
with the DejaVu changes in the public domain -- free to use, embed and redistribute, also in rendered images.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from assets.coco_records import Box, Conversion, ImageRecord, Problem
from assets.contact_sheet import save_png

SOURCE = "synthetic_plates"
CATEGORY = "plate"
FILE_PATTERN = "plate_{index:05d}.png"

# Letters plate schemes use: A-Z without I, O and Q (easily mistaken for 1 and 0; most European schemes and many
# US states leave them out).
PLATE_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
PLATE_DIGITS = "0123456789"


class PlateFormat(NamedTuple):
    pattern: str  # L = letter of PLATE_LETTERS, D = digit, N = digit 1-9; anything else is literal
    region: str  # "eu" (may carry the blue strip, may be yellow) | "us"
    example: str

    @property
    def regex(self) -> re.Pattern:
        parts = {"L": f"[{PLATE_LETTERS}]", "D": "[0-9]", "N": "[1-9]"}
        return re.compile("".join(parts.get(c, re.escape(c)) for c in self.pattern))


PLATE_FORMATS: dict[str, PlateFormat] = {
    "eu_2l4d": PlateFormat("LL DDDD", "eu", "AB 1234"),  # e.g. Italian/Greek-like: two letters, four digits
    "eu_3l3d": PlateFormat("LLL-DDD", "eu", "ABC-123"),  # e.g. older Swedish/Polish-like
    "eu_sidecode": PlateFormat("DD-LL-DD", "eu", "12-AB-34"),  # Dutch sidecode-like
    "us_7": PlateFormat("NLLLDDD", "us", "7ABC123"),  # California-like
}

FONT_FILES = {"DejaVuSans-Bold": "DejaVuSans-Bold.ttf", "DejaVuSansMono-Bold": "DejaVuSansMono-Bold.ttf"}

PLACEMENT_TRIES = 60
SUPERSAMPLE_HEIGHT = 96  # the panel is drawn at least this tall, then scaled down to its size
MIN_PLATE_WIDTH, MIN_PLATE_HEIGHT = 12, 5  # pixels; smaller draws are raised to this
MIN_SQUEEZE_ONE_ROW = 0.68  # narrowest horizontal condensing of a one-row text before it goes on two rows
MIN_SQUEEZE_TWO_ROWS = 0.5
ROW_GAP = 0.25  # gap between two rows, in row cap heights

# Colours (RGB, 0-255) before jitter and brightness matching.
WHITE = (238, 238, 232)
YELLOW = (246, 196, 24)
EU_BLUE = (0, 51, 153)
STAR_YELLOW = (255, 204, 0)


# --------------------------------------------------------------------------------------------------- text


def random_plate(rng: np.random.Generator, format: str | None = None) -> tuple[str, str]:
    """(format name, text): a random valid string of `format` (a key of PLATE_FORMATS; random when None)."""
    names = list(PLATE_FORMATS)
    if format is None:
        format = names[int(rng.integers(len(names)))]
    if format not in PLATE_FORMATS:
        raise ValueError(f"unknown plate format {format!r}; formats: {names}")
    out = []
    for c in PLATE_FORMATS[format].pattern:
        if c == "L":
            out.append(PLATE_LETTERS[int(rng.integers(len(PLATE_LETTERS)))])
        elif c == "D":
            out.append(PLATE_DIGITS[int(rng.integers(10))])
        elif c == "N":
            out.append(PLATE_DIGITS[int(rng.integers(1, 10))])
        else:
            out.append(c)
    return format, "".join(out)


def random_plate_text(rng: np.random.Generator, format: str | None = None) -> str:
    """A random valid plate string of one of PLATE_FORMATS ("AB 1234", "ABC-123", "12-AB-34", "7ABC123")."""
    return random_plate(rng, format)[1]


def plate_format_of(text: str) -> str | None:
    """The name of the format `text` is a valid string of, or None."""
    for name, fmt in PLATE_FORMATS.items():
        if fmt.regex.fullmatch(text):
            return name
    return None


# --------------------------------------------------------------------------------------------------- fonts


def font_path(name: str) -> Path:
    import matplotlib

    if name not in FONT_FILES:
        raise ValueError(f"unknown plate font {name!r}; fonts: {list(FONT_FILES)}")
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONT_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: matplotlib's DejaVu font is missing (reinstall matplotlib)")
    return path


@lru_cache(maxsize=512)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(name)), size)


_MEASURE_SIZE = 200


def _text_mask(text: str, font: str, cap_height: int) -> np.ndarray:
    """Float32 [0, 1] coverage of `text` whose ink is exactly `cap_height` px tall (width natural)."""
    probe = _font(font, _MEASURE_SIZE)
    left, top, right, bottom = probe.getbbox(text)
    size = max(4, round(_MEASURE_SIZE * cap_height / max(1, bottom - top)))
    f = _font(font, size)
    left, top, right, bottom = f.getbbox(text)
    image = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(image).text((-left, -top), text, font=f, fill=255)
    if image.height != cap_height:
        width = max(1, round(image.width * cap_height / image.height))
        image = image.resize((width, cap_height), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0


def _squeeze(mask: np.ndarray, factor: float) -> np.ndarray:
    if factor >= 1.0:
        return mask
    width = max(1, round(mask.shape[1] * factor))
    return cv2.resize(mask, (width, mask.shape[0]), interpolation=cv2.INTER_AREA)


def _split_rows(text: str) -> tuple[str, str]:
    """Two rows: split at the separator nearest the middle, or in the middle when there is none."""
    seps = [i for i, c in enumerate(text) if c in " -"]
    if seps:
        cut = min(seps, key=lambda i: abs(i - (len(text) - 1) / 2))
        return text[:cut], text[cut + 1:]
    half = (len(text) + 1) // 2
    return text[:half], text[half:]


# --------------------------------------------------------------------------------------------------- panel


class _Panel(NamedTuple):
    rgb: np.ndarray  # float32 HxWx3, 0-255 (outside the rounded shape: the border colour)
    alpha: np.ndarray  # float32 HxW, 0-1
    font_ratio: float
    rows: int
    style: str


def _rounded_mask(width: int, height: int, inset: int, radius: int) -> np.ndarray:
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).rounded_rectangle(
        (inset, inset, width - 1 - inset, height - 1 - inset), radius=max(0, radius), fill=255)
    return np.asarray(image) > 127


def _draw_panel(text: str, fmt: str, font: str, font_ratio: float, width: int, height: int,
                rng: np.random.Generator, max_rows: int = 2) -> _Panel:
    """The plate drawn at `width` x `height` px (the supersampled size)."""
    region = PLATE_FORMATS[fmt].region
    yellow = region == "eu" and rng.random() < 0.3
    strip = region == "eu" and rng.random() < 0.6
    base = np.array(YELLOW if yellow else WHITE, np.float32) + rng.uniform(-10, 8, 3).astype(np.float32)
    border_color = np.full(3, rng.uniform(15, 55), np.float32)
    ink = np.full(3, rng.uniform(8, 40), np.float32)
    if not yellow and rng.random() < 0.25:  # some plates print in dark blue
        ink = np.array([20, 30, 80], np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)

    border = max(1, round(height * rng.uniform(0.03, 0.06)))
    radius = round(height * rng.uniform(0.06, 0.16))
    outer = _rounded_mask(width, height, 0, radius)
    inner = _rounded_mask(width, height, border, max(0, radius - border))
    rgb = np.empty((height, width, 3), np.float32)
    rgb[...] = border_color
    rgb[inner] = base

    strip_w = 0
    if strip:
        strip_w = max(2, round(min(0.38 * height, 0.14 * width)))
        region_mask = np.zeros_like(inner)
        region_mask[:, border:border + strip_w] = True
        rgb[inner & region_mask] = EU_BLUE
        # The ring of twelve stars, as yellow dots, in the upper part of the strip.
        image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        cx, cy = border + strip_w / 2, border + (height - 2 * border) * 0.32
        ring, dot = strip_w * 0.3, max(0.6, strip_w * 0.055)
        for k in range(12):
            a = 2 * math.pi * k / 12
            x, y = cx + ring * math.cos(a), cy + ring * math.sin(a)
            draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=STAR_YELLOW)
        rgb = np.asarray(image, np.float32).copy()

    pad = round(height * 0.06)
    x0, x1 = border + strip_w + pad, width - border - pad
    avail_w, avail_h = max(1, x1 - x0), height - 2 * border
    cap = max(2, min(round(font_ratio * height), avail_h))
    line = _text_mask(text, font, cap)
    squeeze = min(1.0, avail_w / line.shape[1])
    if squeeze < MIN_SQUEEZE_ONE_ROW and max_rows < 2:  # one row only: smaller text
        cap = max(2, math.floor(cap * squeeze / MIN_SQUEEZE_ONE_ROW))
        line = _text_mask(text, font, cap)
        squeeze = min(1.0, avail_w / line.shape[1])
    if squeeze >= MIN_SQUEEZE_ONE_ROW or max_rows < 2:
        masks, rows = [_squeeze(line, squeeze)], 1
        drawn_ratio = cap / height
    else:
        top, bottom = _split_rows(text)
        row_cap = max(2, round(cap / (2 + ROW_GAP)))
        pair = [_text_mask(top, font, row_cap), _text_mask(bottom, font, row_cap)]
        squeeze = min(1.0, avail_w / max(m.shape[1] for m in pair))
        if squeeze < MIN_SQUEEZE_TWO_ROWS:  # too long even on two rows: smaller text
            row_cap = max(2, math.floor(row_cap * squeeze / MIN_SQUEEZE_TWO_ROWS))
            pair = [_text_mask(top, font, row_cap), _text_mask(bottom, font, row_cap)]
            squeeze = min(1.0, avail_w / max(m.shape[1] for m in pair))
        masks, rows = [_squeeze(m, squeeze) for m in pair], 2
        drawn_ratio = (2 + ROW_GAP) * row_cap / height

    coverage = np.zeros((height, width), np.float32)
    block_h = sum(m.shape[0] for m in masks) + (len(masks) - 1) * round(ROW_GAP * masks[0].shape[0])
    y = (height - block_h) // 2
    for m in masks:
        mw = min(m.shape[1], avail_w)
        mx = x0 + (avail_w - mw) // 2
        coverage[y:y + m.shape[0], mx:mx + mw] = np.maximum(coverage[y:y + m.shape[0], mx:mx + mw], m[:, :mw])
        y += m.shape[0] + round(ROW_GAP * m.shape[0])
    rgb = rgb * (1 - coverage[..., None]) + ink * coverage[..., None]
    rgb[~outer] = border_color  # outside the rounded corners: a neutral colour for resampling (alpha 0 there)
    style = ("eu-yellow" if yellow else "eu") + ("-strip" if strip else "") if region == "eu" else "us"
    return _Panel(rgb, outer.astype(np.float32), round(drawn_ratio, 4), rows, style)


# ---------------------------------------------------------------------------------------------- geometry


def _panel_quad(pw: int, ph: int, rng: np.random.Generator, realism: float) -> np.ndarray:
    """The panel's four corners (TL, TR, BR, BL) after the warp, relative to its centre."""
    hw, hh = pw / 2, ph / 2
    if realism <= 0:
        return np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]], np.float64)
    yaw = rng.uniform(-0.12, 0.12) * realism  # one side nearer the camera: taller
    pitch = rng.uniform(-0.06, 0.06) * realism  # top or bottom edge nearer: wider
    roll = math.radians(rng.uniform(-5.0, 5.0) * realism)
    quad = np.array([
        [-hw * (1 + pitch), -hh * (1 + yaw)],
        [hw * (1 + pitch), -hh * (1 - yaw)],
        [hw * (1 - pitch), hh * (1 - yaw)],
        [-hw * (1 - pitch), hh * (1 + yaw)],
    ], np.float64)
    quad += rng.uniform(-0.03, 0.03, (4, 2)) * ph * realism
    c, s = math.cos(roll), math.sin(roll)
    return quad @ np.array([[c, s], [-s, c]])


def rects_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# ---------------------------------------------------------------------------------------------- background


def load_background(path: str | Path, image_side: int) -> np.ndarray:
    """RGB uint8 of the image at `path` (EXIF orientation applied) scaled so its long side is `image_side`."""
    return _load_scaled(path, image_side)[0]


def _load_scaled(path: str | Path, image_side: int) -> tuple[np.ndarray, float, float]:
    """(scaled RGB, x scale, y scale) -- the scales map original pixel coordinates to the scaled image's."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    scale = image_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    sx, sy = size[0] / image.width, size[1] / image.height
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image).copy(), sx, sy


def _scale_box(box: Box, sx: float, sy: float, width: int, height: int) -> Box | None:
    """A box of the original background in the scaled image's coordinates, clipped to it; None when empty."""
    x0, y0 = max(0.0, box.x * sx), max(0.0, box.y * sy)
    x1, y1 = min(float(width), (box.x + box.w) * sx), min(float(height), (box.y + box.h) * sy)
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(box.category, x0, y0, x1 - x0, y1 - y0, text=box.text, extra={**box.extra, "from_background": True})


def _match_surroundings(rgb: np.ndarray, background: np.ndarray, reserved: tuple[int, int, int, int], ph: int,
                        realism: float) -> np.ndarray:
    x0, y0, x1, y1 = reserved
    H, W = background.shape[:2]
    m = max(2, ph)
    around = background[max(0, y0 - m):min(H, y1 + m), max(0, x0 - m):min(W, x1 + m)].reshape(-1, 3).astype(np.float32)
    mean = around.mean(0)
    luma = float(mean @ np.array([0.299, 0.587, 0.114], np.float32))
    gain = float(np.clip((luma + 70.0) / 190.0, 0.45, 1.05))
    gain = 1.0 + 0.6 * realism * (gain - 1.0)
    cast = (mean + 8.0) / (luma + 8.0)  # the surroundings' colour, relative to their grey
    cast = np.clip(cast, 0.75, 1.25) ** (0.2 * realism)
    return rgb * gain * cast


def _finish_panel(rgb: np.ndarray, rng: np.random.Generator, realism: float) -> np.ndarray:
    """Shading, blur, noise and maybe a JPEG round trip, on the small panel (never outside it)."""
    if realism <= 0:
        return rgb
    h = rgb.shape[0]
    shade = 1.0 + realism * rng.uniform(-0.08, 0.08) * np.linspace(-1, 1, h, dtype=np.float32)
    rgb = rgb * shade[:, None, None]
    sigma = rng.uniform(0.0, 0.9) * realism
    if sigma > 0.15:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigmaX=float(sigma))
    noise = rng.uniform(0.0, 4.0) * realism
    rgb = rgb + rng.normal(0.0, 1.0, rgb.shape).astype(np.float32) * noise
    if rng.random() < 0.5 * realism:
        quality = int(rng.integers(35, 90))
        ok, data = cv2.imencode(".jpg", rgb.clip(0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            rgb = cv2.imdecode(data, cv2.IMREAD_UNCHANGED).astype(np.float32)
    return rgb


def plate_sprite(rng: np.random.Generator, width: int, height: int, font_ratio: Sequence[float] = (0.55, 0.8),
                 realism: float = 1.0) -> tuple[np.ndarray, np.ndarray, str]:
    """(RGB float32 0-255, alpha float32 0-1, text): one flat plate of `width` x `height` px with random valid
    text, drawn supersampled and finished like the composited ones (shading, blur, noise), for callers that
    move it themselves (the synthetic scenes)."""
    fmt, text = random_plate(rng)
    font = list(FONT_FILES)[int(rng.integers(len(FONT_FILES)))]
    scale = max(1, math.ceil(SUPERSAMPLE_HEIGHT / height))
    panel = _draw_panel(text, fmt, font, float(rng.uniform(*font_ratio)), width * scale, height * scale, rng)
    rgb = cv2.resize(panel.rgb, (width, height), interpolation=cv2.INTER_AREA) if scale > 1 else panel.rgb
    alpha = cv2.resize(panel.alpha, (width, height), interpolation=cv2.INTER_AREA) if scale > 1 else panel.alpha
    return _finish_panel(rgb, rng, realism).clip(0, 255).astype(np.float32), alpha.astype(np.float32), text


# ---------------------------------------------------------------------------------------------- rendering


class _Placed(NamedTuple):
    box: Box
    reserved: tuple[int, int, int, int]


def _place_plate(image: np.ndarray, occupied: list[tuple[int, int, int, int]], params, rng: np.random.Generator,
                 realism: float, max_rows: int = 2) -> _Placed | None:
    """Draw one plate into `image` (in place) where it overlaps nothing in `occupied`; None when no place."""
    H, W = image.shape[:2]
    fmt, text = random_plate(rng)
    font = list(FONT_FILES)[int(rng.integers(len(FONT_FILES)))]
    font_ratio = float(rng.uniform(*params.font_ratio))
    pw = max(MIN_PLATE_WIDTH, round(float(rng.uniform(*params.width_ratio)) * W))
    ph = max(MIN_PLATE_HEIGHT, round(pw / float(rng.uniform(*params.aspect))))
    quad = _panel_quad(pw, ph, rng, realism)
    lo, hi = quad.min(0), quad.max(0)
    # Centres that keep the whole warped panel (plus a one-pixel rim) inside the image.
    cx_range = (1 - lo[0] + 1, W - hi[0] - 2)
    cy_range = (1 - lo[1] + 1, H - hi[1] - 2)
    if cx_range[0] > cx_range[1] or cy_range[0] > cy_range[1]:
        return None
    for _ in range(PLACEMENT_TRIES):
        cx, cy = rng.uniform(*cx_range), rng.uniform(*cy_range)
        corners = quad + (cx, cy)
        reserved = (math.floor(corners[:, 0].min()) - 1, math.floor(corners[:, 1].min()) - 1,
                    math.ceil(corners[:, 0].max()) + 1, math.ceil(corners[:, 1].max()) + 1)
        if not any(rects_overlap(reserved, other) for other in occupied):
            break
    else:
        return None

    scale = max(1, math.ceil(SUPERSAMPLE_HEIGHT / ph))
    panel = _draw_panel(text, fmt, font, font_ratio, pw * scale, ph * scale, rng, max_rows)
    rgb = cv2.resize(panel.rgb, (pw, ph), interpolation=cv2.INTER_AREA) if scale > 1 else panel.rgb
    alpha = cv2.resize(panel.alpha, (pw, ph), interpolation=cv2.INTER_AREA) if scale > 1 else panel.alpha
    rgb = _match_surroundings(rgb, image, reserved, ph, realism)
    rgb = _finish_panel(rgb, rng, realism).clip(0, 255)

    # Homography from panel pixel indices to indices of the reserved patch (pixel centres at +0.5 in continuous
    # coordinates, as OpenCV samples them).
    x0, y0, x1, y1 = reserved
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float32)
    dst = (corners - (x0, y0)).astype(np.float32)
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    M = np.linalg.inv(half) @ cv2.getPerspectiveTransform(src, dst).astype(np.float64) @ half
    size = (x1 - x0, y1 - y0)
    premult = cv2.warpPerspective(rgb * alpha[..., None], M, size, flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    cover = cv2.warpPerspective(alpha, M, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    cover = cover.clip(0, 1)
    ys, xs = np.nonzero(cover > 0)
    if len(ys) == 0:
        return None
    patch = image[y0:y1, x0:x1].astype(np.float32)
    out = patch * (1 - cover[..., None]) + premult
    image[y0:y1, x0:x1] = np.where(cover[..., None] > 0, out.round().clip(0, 255), patch).astype(np.uint8)
    bx0, by0, bx1, by1 = x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1
    box = Box(CATEGORY, float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0), text=text,
              extra={"font": font, "font_ratio": panel.font_ratio, "format": fmt, "rows": panel.rows,
                     "style": panel.style})
    return _Placed(box, reserved)


def render_plate_image(background: np.ndarray, params, rng: np.random.Generator, realism: float = 1.0,
                       keep_clear: Sequence[Box] = (), max_rows: int = 2) -> tuple[np.ndarray, list[Box], int]:
    """(image, boxes, skipped): `per_image` plates drawn on a copy of `background` (already scaled), none of them
    overlapping a box of `keep_clear` (regions already labelled in the background)."""
    image = background.copy()
    low, high = params.per_image
    wanted = int(rng.integers(max(0, low), max(0, high) + 1))
    occupied = [(math.floor(b.x) - 1, math.floor(b.y) - 1, math.ceil(b.x + b.w) + 1, math.ceil(b.y + b.h) + 1)
                for b in keep_clear]
    boxes: list[Box] = []
    for _ in range(wanted):
        placed = _place_plate(image, occupied, params, rng, realism, max_rows)
        if placed is not None:
            occupied.append(placed.reserved)
            boxes.append(placed.box)
    return image, boxes, wanted - len(boxes)


def render_synthetic_plates(backgrounds: Sequence[Path], out_dir: Path, params, seed: int, *,
                            realism: float = 1.0, max_rows: int = 2,
                            known_boxes: Mapping[str | Path, Sequence[Box]] | None = None) -> Conversion:
    """`params.count` images `out_dir/plate_<index:05d>.png` with plates on the backgrounds, and their records.

    `params` is an `orchestration.config.SyntheticPlatesParams`; image `index` uses background `index % n` of the
    n readable ones. `realism` in [0, 1] scales warp, shading, brightness matching, blur and noise (0 = flat,
    axis-aligned, sharp panels). `max_rows` = 1 keeps every text on one row (made smaller where it would not fit;
    `extra.font_ratio` says by how much) -- for OCR scoring that joins text fragments left to right.
    `known_boxes` (background path -> boxes in its original pixels) names faces/plates the
    background already shows (the alpr photo's two real plates): they are kept, scaled, in every record of that
    background (extra `from_background`) and no synthetic plate covers them -- otherwise they would be unlabelled
    positives. An unreadable background is a Problem and is left out of the rotation; a plate that finds no free
    place is a Problem and is skipped. Files `plate_*.png` of an earlier, larger run are removed, so `out_dir`
    holds exactly the images returned.
    """
    if not 0.0 <= realism <= 1.0:
        raise ValueError(f"realism must lie in [0, 1], got {realism}")
    if max_rows not in (1, 2):
        raise ValueError(f"max_rows must be 1 or 2, got {max_rows}")
    out_dir = Path(out_dir)
    conversion = Conversion()
    if params.count > 0 and not backgrounds:
        raise ValueError("synthetic plates need at least one background image")
    known = {Path(k): list(v) for k, v in (known_boxes or {}).items()}
    usable: list[tuple[Path, list[Box]]] = []
    cache: dict[int, np.ndarray] = {}
    for path in map(Path, backgrounds):
        try:
            scaled, sx, sy = _load_scaled(path, params.image_side)
        except Exception as err:  # noqa: BLE001 -- any unreadable file is one Problem, not a failed run
            conversion.problems.append(Problem(str(path), "background", f"unreadable image ({err})"))
            continue
        kept = [_scale_box(b, sx, sy, scaled.shape[1], scaled.shape[0]) for b in known.get(path, [])]
        if len(cache) < 256:
            cache[len(usable)] = scaled
        usable.append((path, [b for b in kept if b is not None]))
    out_dir.mkdir(parents=True, exist_ok=True)
    names = set()
    if usable:
        for index in range(params.count):
            slot = index % len(usable)
            background_path, existing = usable[slot]
            background = cache.get(slot)
            if background is None:
                background = load_background(background_path, params.image_side)
            rng = np.random.default_rng([seed, index])
            image, boxes, skipped = render_plate_image(background, params, rng, realism, keep_clear=existing,
                                                       max_rows=max_rows)
            name = FILE_PATTERN.format(index=index)
            names.add(name)
            path = save_png(Image.fromarray(image), out_dir / name)
            if skipped:
                conversion.problems.append(Problem(
                    str(out_dir / name), f"image {index}",
                    f"{skipped} plate(s) skipped: no place for a plate of this size that overlaps no other plate "
                    f"(background {background_path})"))
            conversion.images.append(ImageRecord(
                path=path, width=image.shape[1], height=image.shape[0], boxes=[*existing, *boxes], source=SOURCE,
                group=f"synthetic:{background_path.stem}", origin=str(background_path)))
    for stale in out_dir.glob("plate_*.png"):
        if stale.name not in names and re.fullmatch(r"plate_\d{5,}\.png", stale.name):
            stale.unlink()
    return conversion
