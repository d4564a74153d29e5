"""Synthetic-people faces composited into frames of the sample media: the embedded default's face source.

The people (`assets.synthetic_people`, made at set-up) are split into train and val BY PERSON before anything is
drawn, and every composite holds people of one split only, so no val identity is ever seen in training -- the
rule a re-identification measure needs. Each face is cut from its portrait with head and hair context, scaled
to `width_ratio` of the image, feathered in with an elliptical mask, its brightness pulled toward the spot it
lands on, and labelled with the YuNet box the portrait carries, scaled (the box convention of clip frames).
Plain functions over paths, like `assets.synthetic_plates`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from assets.coco_records import Box, Conversion, ImageRecord, Problem
from assets.contact_sheet import save_png
from assets.synthetic_people import PeopleError, read_index_file
from assets.synthetic_plates import load_background, rects_overlap
from assets.unified_coco import split_groups

SOURCE = "synthetic_faces"
FILE_PATTERN = "face_{index:05d}.png"
CONTEXT_W, CONTEXT_H, HAIR_SHIFT = 1.7, 1.9, 0.12  # patch = face box widened, heightened and moved up this much
FEATHER = 0.08  # mask blur, in patch widths
PLACEMENT_TRIES = 40


def load_people(index_path: Path) -> list[dict]:
    """[{id, images: [{path, face_box}]}] from people.json, each image checked against its recorded sha256
    (`synthetic_people.read_index_file`); a missing or unreadable index or image is a ValueError naming the file."""
    index_path = Path(index_path)
    try:
        doc = read_index_file(index_path)
    except PeopleError as err:
        raise ValueError(str(err)) from None
    return [{"id": p["id"], "images": [{"path": index_path.parent / im["file"], "face_box": im["face_box"]}
                                       for im in p["images"]]} for p in doc["people"]]


def _patch(portrait: Image.Image, face_box: Sequence[float], face_width: float, flip: bool
           ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """(RGB patch, alpha in [0, 1], face box inside the patch) for a face `face_width` px wide."""
    x0, y0, x1, y1 = face_box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - HAIR_SHIFT * h
    px0, px1 = max(0.0, cx - CONTEXT_W * w / 2), min(portrait.width, cx + CONTEXT_W * w / 2)
    py0, py1 = max(0.0, cy - CONTEXT_H * h / 2), min(portrait.height, cy + CONTEXT_H * h / 2)
    scale = face_width / w
    size = (max(2, round((px1 - px0) * scale)), max(2, round((py1 - py0) * scale)))
    crop = portrait.crop((round(px0), round(py0), round(px1), round(py1))).resize(size, Image.Resampling.LANCZOS)
    mask = Image.new("L", size, 0)
    inset = FEATHER * size[0]
    ImageDraw.Draw(mask).ellipse([inset, inset, size[0] - 1 - inset, size[1] - 1 - inset], fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(max(0.5, FEATHER * size[0] / 2)))
    box = ((x0 - px0) * scale, (y0 - py0) * scale, (x1 - px0) * scale, (y1 - py0) * scale)
    rgb, alpha = np.asarray(crop, dtype=np.float32), np.asarray(mask, dtype=np.float32) / 255.0
    if flip:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
        box = (size[0] - box[2], box[1], size[0] - box[0], box[3])
    return rgb, alpha, box


def face_patch(portrait: Image.Image, face_box: Sequence[float], face_width: float, flip: bool
               ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """(RGB float patch, alpha in [0, 1], face box inside the patch): a portrait's face with its context, cut to an
    ellipse, `face_width` px wide; what `composite_faces` pastes, for callers that move it themselves."""
    return _patch(portrait, face_box, face_width, flip)


def composite_faces(background: np.ndarray, faces: Sequence[tuple[Image.Image, Sequence[float], str]], params,
                    rng: np.random.Generator) -> tuple[np.ndarray, list[Box], int]:
    """(image, face boxes, skipped): each (portrait, face box, person id) pasted where it overlaps no other."""
    image = background.astype(np.float32).copy()
    H, W = image.shape[:2]
    occupied: list[tuple[int, int, int, int]] = []
    boxes: list[Box] = []
    skipped = 0
    for portrait, face_box, person in faces:
        width = float(rng.uniform(*params.width_ratio)) * W
        rgb, alpha, (bx0, by0, bx1, by1) = _patch(portrait, face_box, width, flip=bool(rng.random() < 0.5))
        ph, pw = alpha.shape
        for _ in range(PLACEMENT_TRIES):
            # The face box must lie inside the image; the context around it may be cut by the frame edge.
            left = int(rng.integers(math.floor(-bx0), max(math.floor(-bx0) + 1, math.floor(W - bx1))))
            top = int(rng.integers(math.floor(-by0), max(math.floor(-by0) + 1, math.floor(H - by1))))
            rect = (left, top, left + pw, top + ph)
            if not any(rects_overlap(rect, o) for o in occupied) and left + bx0 >= 0 and top + by0 >= 0 \
                    and left + bx1 <= W and top + by1 <= H:
                break
        else:
            skipped += 1
            continue
        sx0, sy0, sx1, sy1 = max(0, left), max(0, top), min(W, left + pw), min(H, top + ph)
        src = rgb[sy0 - top:sy1 - top, sx0 - left:sx1 - left]
        a = alpha[sy0 - top:sy1 - top, sx0 - left:sx1 - left, None]
        under = image[sy0:sy1, sx0:sx1]
        # Pull the face's brightness part of the way toward the spot it covers (a studio portrait in a dark car).
        gain = (under.mean() + 1.0) / (src.mean() + 1.0)
        src = src * (1.0 + float(rng.uniform(0.0, 0.5)) * (gain - 1.0))
        image[sy0:sy1, sx0:sx1] = a * src + (1 - a) * under
        occupied.append(rect)
        boxes.append(Box("face", left + bx0, top + by0, bx1 - bx0, by1 - by0, extra={"person": person}))
    return image.round().clip(0, 255).astype(np.uint8), boxes, skipped


def render_synthetic_faces(people_index: Path, backgrounds: Sequence[Path], out_dir: Path, params, seed: int,
                           val_fraction: float) -> Conversion:
    """`params.count` images `out_dir/face_<index:05d>.png` and their records (each with its split set).

    `params` is an `orchestration.config.SyntheticFacesParams`. People are split by person (the same rule
    `unified_coco` uses for every other source's groups); image `index` uses background `index % n` and
    `per_image` faces of distinct people of one split; val's share of the images is its share of the people.
    """
    out_dir = Path(out_dir)
    conversion = Conversion()
    if params.count == 0:
        return conversion
    people = load_people(people_index)
    if not backgrounds:
        raise ValueError("synthetic faces need at least one background image")
    splits = split_groups(SOURCE, [p["id"] for p in people], val_fraction)
    by_split = {s: [p for p in people if splits[p["id"]] == s] for s in ("train", "val")}
    val_share = len(by_split["val"]) / len(people) if people else 0.0
    out_dir.mkdir(parents=True, exist_ok=True)
    portraits: dict[Path, Image.Image] = {}
    names = set()
    for index in range(params.count):
        rng = np.random.default_rng([seed, index, 0xFACE])
        # Val images evenly spaced, as many as val's share of the people (each person about equally often).
        split = "val" if math.floor((index + 1) * val_share) > math.floor(index * val_share) else "train"
        pool = by_split[split]
        low, high = params.per_image
        wanted = min(len(pool), int(rng.integers(low, high + 1)))
        chosen = [pool[i] for i in rng.choice(len(pool), size=wanted, replace=False)]
        faces = []
        for person in chosen:
            shot = person["images"][int(rng.integers(len(person["images"])))]
            if shot["path"] not in portraits:
                with Image.open(shot["path"]) as im:
                    portraits[shot["path"]] = im.convert("RGB")
            faces.append((portraits[shot["path"]], shot["face_box"], person["id"]))
        background_path = Path(backgrounds[index % len(backgrounds)])
        try:
            background = load_background(background_path, params.image_side)
        except Exception as err:  # noqa: BLE001 -- an unreadable background loses one image, not the run
            conversion.problems.append(Problem(str(background_path), "background", f"unreadable image ({err})"))
            continue
        image, boxes, skipped = composite_faces(background, faces, params, rng)
        name = FILE_PATTERN.format(index=index)
        names.add(name)
        path = save_png(Image.fromarray(image), out_dir / name)
        if skipped:
            conversion.problems.append(Problem(str(path), f"image {index}", f"{skipped} face(s) skipped: no free place"))
        conversion.images.append(ImageRecord(
            path=path, width=image.shape[1], height=image.shape[0], boxes=boxes, source=SOURCE,
            group=f"person:{chosen[0]['id']}" if chosen else f"background:{background_path.stem}",
            origin=f"{background_path.name}+{'+'.join(p['id'] for p in chosen)}", split=split))
    for stale in out_dir.glob("face_*.png"):
        if stale.name not in names and re.fullmatch(r"face_\d{5,}\.png", stale.name):
            stale.unlink()
    return conversion
