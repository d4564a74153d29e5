"""Contact sheets: a PNG grid of aligned frames (rows = LQ mosaic input, GT eggplant target), for people to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from assets.atomic import atomic_path

TILE_H = 128
LABEL_W = 70


def _fit(frame: np.ndarray, height: int) -> Image.Image:
    image = Image.fromarray(frame)
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.Resampling.BILINEAR)


def grid(rows: dict[str, list[np.ndarray]], title: str = "") -> Image.Image:
    """Rows of equally many frames, labelled on the left; tiles keep their aspect ratio."""
    fitted = {label: [_fit(f, TILE_H) for f in frames] for label, frames in rows.items()}
    width = LABEL_W + max(sum(t.width + 4 for t in tiles) for tiles in fitted.values())
    top = 18 if title else 0
    sheet = Image.new("RGB", (width, top + len(rows) * (TILE_H + 4)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 3), title, fill=(230, 230, 230))
    for r, (label, tiles) in enumerate(fitted.items()):
        y = top + r * (TILE_H + 4)
        draw.text((4, y + TILE_H // 2 - 6), label, fill=(230, 230, 230))
        x = LABEL_W
        for tile in tiles:
            sheet.paste(tile, (x, y))
            x += tile.width + 4
    return sheet


def pick_indices(length: int, count: int) -> list[int]:
    if length <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, length - 1, min(count, length))})


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        # No timestamps or text chunks: the same pixels always give the same bytes.
        image.save(tmp, format="PNG", optimize=False)
    return path
