"""Synthetic scenes for the restoration track: short clips in which a face of the lineage's synthetic people and a
rendered licence plate move through a slow pan/zoom over a picture, with their boxes as a sidecar COCO file.

Why: the sample clips give a handful of scenes, and they split by clip, so one split can hold only faces and the
other only plates; a small model then learns the clips rather than the task (paint the eggplant where the mosaic
is, at the region's place and scale). These scenes put both kinds of region in both splits, in numbers:

    clips/scene_<NNN>.mp4             H.264, `frames` frames at `fps`, `width` x `height`
    clips/scene_<NNN>.mp4.coco.json   the boxes of every frame (categories face, plate): `region_tracks` reads
                                      them instead of running detectors (the sidecar rule of `detection`)
    manifest.json                     per clip: split, person, plate text, background, seed

Splits are decided here, by source, and the restoration dataset keeps them: people by person (the rule
`synthetic_faces` uses for the COCO set, so a person is on one side in both tracks), backgrounds by picture
(TRAIN_PICTURES / VAL_PICTURES); plates carry random text, new in every clip. Val's share of the clips is val's
share of the people.

Backgrounds are scikit-image's bundled pictures that neither the set-up pretraining (`skimage_pictures`) nor
another lineage clip uses, public domain or CC0 by their docstrings (TRAIN_PICTURES, VAL_PICTURES). Faces come
from `data/media/people` (set-up, README *Sample media*); plates from `synthetic_plates.plate_sprite`.

Determinism: clip `i` draws everything from `np.random.default_rng([seed, i, SALT])` and is encoded with one
encoder thread, so the same people, params and seed give the same frames, and clips can be rendered alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from assets.atomic import write_json
from assets.synthetic_faces import SOURCE as FACES_SOURCE
from assets.synthetic_faces import face_patch, load_people
from assets.synthetic_plates import plate_sprite
from assets.unified_coco import split_groups
from assets.video import EncoderSettings, write_video

SALT = 0x5CE7E
# Each with the licence its scikit-image docstring states: hubble_deep_field (NASA, public domain),
# immunohistochemistry (no known copyright restrictions), clock (public domain), cell, retina and microaneurysms (CC0).
TRAIN_PICTURES = ("hubble_deep_field", "immunohistochemistry", "clock", "cell")
VAL_PICTURES = ("retina", "microaneurysms")
PAN_ROOM = 1.4  # the background is this much larger than the frame, per side: room for the camera to move
MARGIN = 0.04  # boxes keep this share of the frame's width from its edges
CATEGORIES = [{"id": 1, "name": "face"}, {"id": 2, "name": "plate"}]
CLIP_PATTERN = "scene_{index:03d}.mp4"
SIDECAR_SUFFIX = ".coco.json"


def _picture(name: str) -> np.ndarray:
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def _cover(image: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """`image` scaled to cover `width` x `height` and cut there at a random place."""
    h, w = image.shape[:2]
    scale = max(width / w, height / h) * float(rng.uniform(1.0, 1.5))
    big = cv2.resize(image, (math.ceil(w * scale), math.ceil(h * scale)), interpolation=cv2.INTER_AREA
                     if scale < 1 else cv2.INTER_LINEAR)
    y = int(rng.integers(0, big.shape[0] - height + 1))
    x = int(rng.integers(0, big.shape[1] - width + 1))
    return np.ascontiguousarray(big[y:y + height, x:x + width])


def _ease(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * t)


def _path(rng: np.random.Generator, lo: tuple[float, float], hi: tuple[float, float], reach: float
          ) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of a centre that stays inside [lo, hi] (per axis) and moves at most `reach`."""
    lo_, hi_ = np.array(lo, float), np.array(hi, float)
    hi_ = np.maximum(hi_, lo_)
    start = lo_ + rng.random(2) * (hi_ - lo_)
    step = rng.uniform(-1, 1, 2) * reach
    return start, np.clip(start + step, lo_, hi_)


def _paste(frame: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, left: int, top: int) -> None:
    """In place: `rgb` over `frame` with `alpha`, clipped to the frame (float32 frame)."""
    H, W = frame.shape[:2]
    h, w = alpha.shape
    x0, y0, x1, y1 = max(0, left), max(0, top), min(W, left + w), min(H, top + h)
    if x1 <= x0 or y1 <= y0:
        return
    a = alpha[y0 - top:y1 - top, x0 - left:x1 - left, None]
    frame[y0:y1, x0:x1] = a * rgb[y0 - top:y1 - top, x0 - left:x1 - left] + (1 - a) * frame[y0:y1, x0:x1]


def render_clip(index: int, person: dict, picture: str, settings, seed: int
                ) -> tuple[list[np.ndarray], list[list[dict]], dict]:
    """(frames RGB uint8, per-frame boxes [{category, bbox}], facts) of clip `index`; `settings` is an
    `orchestration.config.SyntheticScenesParams` (its fields say what each knob does)."""
    s = settings
    W, H = s.width, s.height
    rng = np.random.default_rng([seed, index, SALT])
    background = _cover(_picture(picture), math.ceil(W * PAN_ROOM), math.ceil(H * PAN_ROOM), rng)
    z0 = float(rng.uniform(1.0, 1.0 + s.zoom))
    z1 = float(np.clip(z0 + rng.uniform(-s.zoom, s.zoom), 1.0, 1.0 + s.zoom))
    # The camera window at zoom z is (W, H) / z px of the background; its centre keeps it inside.
    wmax = (W, H)
    c0, c1 = _path(rng, (wmax[0] / 2, wmax[1] / 2), (background.shape[1] - wmax[0] / 2, background.shape[0] - wmax[1] / 2),
                   s.pan * W)
    zmax = max(z0, z1)

    image = person["images"][int(rng.integers(len(person["images"])))]
    with Image.open(image["path"]) as im:
        portrait = im.convert("RGB")
    flip = bool(rng.random() < 0.5)
    face_w0 = float(rng.uniform(*s.face_width)) * W
    fb = image["face_box"]
    face_aspect = (fb[3] - fb[1]) / max(1e-6, fb[2] - fb[0])
    plate_w0 = float(rng.uniform(*s.plate_width)) * W
    plate_h0 = max(8.0, plate_w0 / float(rng.uniform(*s.plate_aspect)))
    plate_rgb, plate_alpha, text = plate_sprite(rng, round(plate_w0), round(plate_h0))

    # The face on one half of the frame, the plate on the other; sizes at the largest zoom bound their paths.
    face_left = bool(rng.random() < 0.5)
    m = MARGIN * W
    grow = zmax / z0
    fw, fh = face_w0 * grow, face_w0 * face_aspect * grow
    pw, ph = plate_w0 * grow, plate_h0 * grow
    halves = ((m, W / 2 - m / 2), (W / 2 + m / 2, W - m))
    fx, px = (halves[0], halves[1]) if face_left else (halves[1], halves[0])
    f0, f1 = _path(rng, (fx[0] + fw / 2, m + fh / 2), (fx[1] - fw / 2, H - m - fh / 2), s.drift * W)
    p0, p1 = _path(rng, (px[0] + pw / 2, m + ph / 2), (px[1] - pw / 2, H - m - ph / 2), s.drift * W)

    frames, boxes = [], []
    n = s.frames
    for i in range(n):
        t = _ease(i / max(1, n - 1))
        z = z0 + (z1 - z0) * t
        cx, cy = c0 + (c1 - c0) * t
        # Background: the window (W/z x H/z around the camera centre) scaled to the frame.
        matrix = np.array([[z, 0, W / 2 - z * cx], [0, z, H / 2 - z * cy]], np.float64)
        frame = cv2.warpAffine(background, matrix, (W, H), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        k = z / z0
        # The face, its box centred on its path.
        fc = f0 + (f1 - f0) * t
        rgb, alpha, (bx0, by0, bx1, by1) = face_patch(portrait, fb, face_w0 * k, flip)
        left = int(round(fc[0] - (bx0 + bx1) / 2))
        top = int(round(fc[1] - (by0 + by1) / 2))
        _paste(frame, rgb, alpha, left, top)
        face_box = [left + bx0, top + by0, bx1 - bx0, by1 - by0]
        # The plate, drawn over anything of the face's context that reaches it.
        pc = p0 + (p1 - p0) * t
        size = (max(4, round(plate_w0 * k)), max(4, round(plate_h0 * k)))
        prgb = cv2.resize(plate_rgb, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        palpha = cv2.resize(plate_alpha, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        pleft, ptop = int(round(pc[0] - size[0] / 2)), int(round(pc[1] - size[1] / 2))
        _paste(frame, prgb, palpha, pleft, ptop)
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
        boxes.append([{"category": "face", "bbox": [round(v, 2) for v in face_box]},
                      {"category": "plate", "bbox": [pleft, ptop, size[0], size[1]]}])
    facts = {"person": person["id"], "plate_text": text, "background": picture}
    return frames, boxes, facts


def sidecar(boxes: Sequence[Sequence[dict]], width: int, height: int) -> dict:
    """A COCO document of per-frame boxes, in the form `assets.detect.SidecarCoco` reads."""
    cat = {c["name"]: c["id"] for c in CATEGORIES}
    images, annotations = [], []
    for i, frame_boxes in enumerate(boxes):
        images.append({"id": i, "file_name": f"frame_{i:06d}.png", "frame_index": i, "width": width, "height": height})
        for b in frame_boxes:
            annotations.append({"id": len(annotations), "image_id": i, "category_id": cat[b["category"]],
                                "bbox": b["bbox"], "area": b["bbox"][2] * b["bbox"][3], "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def render_scenes(people_index: Path, out_dir: Path, settings, seed: int,
                  encoder: EncoderSettings, sidecar_suffix: str = SIDECAR_SUFFIX, progress=None) -> dict:
    """Write `settings.count` clips with sidecars under `out_dir/clips` and return the manifest (also written);
    `settings` as in `render_clip`."""
    out_dir = Path(out_dir)
    clips_dir = out_dir / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if settings.count:
        people = load_people(people_index)
        splits = split_groups(FACES_SOURCE, [p["id"] for p in people], settings.val_fraction)
        by_split = {s: [p for p in people if splits[p["id"]] == s] for s in ("train", "val")}
        if not by_split["train"] or not by_split["val"]:
            raise ValueError(f"{people_index}: synthetic scenes need people on both sides of the split "
                             f"({len(by_split['train'])} train, {len(by_split['val'])} val)")
        val_share = len(by_split["val"]) / len(people)
        pictures = {"train": TRAIN_PICTURES, "val": VAL_PICTURES}
        for index in range(settings.count):
            # Val clips evenly spaced, val's share of the people; people and pictures taken in turn.
            split = "val" if math.floor((index + 1) * val_share) > math.floor(index * val_share) else "train"
            turn = sum(r["split"] == split for r in rows)
            person = by_split[split][turn % len(by_split[split])]
            picture = pictures[split][turn % len(pictures[split])]
            frames, boxes, facts = render_clip(index, person, picture, settings, seed)
            name = CLIP_PATTERN.format(index=index)
            write_video(clips_dir / name, frames, settings.fps, encoder)
            write_json(clips_dir / (name + sidecar_suffix), sidecar(boxes, settings.width, settings.height))
            rows.append({"file": f"clips/{name}", "split": split, **facts})
            if progress is not None:
                progress(index + 1, settings.count)
    manifest = {"clips": rows, "counts": {s: sum(r["split"] == s for r in rows) for s in ("train", "val")},
                "settings": settings.model_dump()}
    write_json(out_dir / "manifest.json", manifest)
    return manifest


CLIP_PREFIX = "synthetic__"


def clip_id_of(file: str) -> str:
    """The clip id a manifest row's file gets in the lineage (`synthetic__scene_000`): apart from the user's."""
    return CLIP_PREFIX + Path(file).stem


def is_synthetic(clip_id: str) -> bool:
    return clip_id.startswith(CLIP_PREFIX)
