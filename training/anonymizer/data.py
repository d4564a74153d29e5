"""Region crops for the anonymizer: every face / plate of a COCO file cut out square with context around it.

The generator inpaints one region at a time, so a sample is a square crop centred on the box, the box's
longer side plus `context_pad` of it on every side (the surroundings the inpainting UNet conditions on),
resized to `resolution`. Parts of the crop beyond the image repeat its edge pixels: not black (an edge region
would teach the model that faces sit next to black bars) and not mirrored (a mirror would copy the face or
the plate text itself into the context the UNet conditions on).

Category names, not ids, decide the kind (as training.detector_data does): a file that numbers face/plate
differently still reads the same.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

KINDS = ("face", "plate")


class RegionDataError(ValueError):
    """The COCO file or one of its images is unusable; the message names the file."""


@dataclass
class RegionSample:
    image: np.ndarray  # (R, R, 3) uint8 RGB crop with context, resized to the resolution
    mask: np.ndarray  # (R, R) bool, True inside the region to replace
    kind: str  # "face" | "plate"
    box: tuple[float, float, float, float]  # the region's box x0, y0, x1, y1 in crop pixels
    text: str | None  # the original plate text when known
    source: str  # "<file_name>#<annotation id>"
    person: str | None = None  # who the face shows, where the source knows (the synthetic people)


def region_mask(kind: str, box: tuple[float, float, float, float], resolution: int) -> np.ndarray:
    """Faces: the ellipse inscribed in the box (a box's corners are background, hair, shoulders, which
    the recipe keeps); plates: the whole box (a plate fills its box)."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[0:resolution, 0:resolution].astype(np.float64) + 0.5  # pixel centres
    if kind == "plate":
        return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def _read_doc(path: Path) -> dict:
    if not path.is_file():
        raise RegionDataError(f"{path}: COCO file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RegionDataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise RegionDataError(f"{path}: not a COCO detection file (needs images, annotations, categories lists)")
    return doc


def _load_rgb(path: Path, coco_json: Path) -> np.ndarray:
    if not path.is_file():
        raise RegionDataError(f"{coco_json}: image {path} is missing")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except (OSError, ValueError) as err:
        raise RegionDataError(f"{coco_json}: cannot read image {path} ({err})") from None


def crop_window(bbox_xywh: tuple[float, float, float, float], resolution: int,
                context_pad: float) -> tuple[float, float, float]:
    """(left, top, scale) of the square crop around a box with its context: image pixel (u, v) lands at
    ((u - left) * scale, (v - top) * scale) in the `resolution` px crop."""
    x, y, w, h = bbox_xywh
    side = max(w, h) * (1.0 + 2.0 * context_pad)
    return x + w / 2 - side / 2, y + h / 2 - side / 2, resolution / side


def crop_affine(left: float, top: float, scale: float) -> np.ndarray:
    return np.array([[scale, 0, -left * scale], [0, scale, -top * scale]], np.float64)


def crop_region(rgb: np.ndarray, bbox_xywh: tuple[float, float, float, float], resolution: int,
                context_pad: float) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The square crop around a box and the box in the crop's (resized) pixel coordinates."""
    x, y, w, h = bbox_xywh
    left, top, scale = crop_window(bbox_xywh, resolution, context_pad)
    # One affine warp crops, fills the outside and resizes. A linear warp aliases when it shrinks a lot; a
    # blur about the shrink factor wide first stands in for area averaging.
    if scale < 0.5:
        k = int(round(1 / scale)) | 1
        rgb = cv2.GaussianBlur(rgb, (k, k), 0)
    crop = cv2.warpAffine(rgb, crop_affine(left, top, scale), (resolution, resolution), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    box = ((x - left) * scale, (y - top) * scale, (x + w - left) * scale, (y + h - top) * scale)
    return crop, tuple(float(v) for v in box)


def load_region_samples(coco_json, images_root, resolution: int, context_pad: float, min_box: int = 8,
                        max_samples: int | None = None) -> list[RegionSample]:
    """Every face/plate annotation of `coco_json` as a RegionSample, in image order then annotation id.

    Boxes whose shorter side is under `min_box` px (in the source image) are skipped: at that size there is
    nothing identifying to replace and the crop would be mostly upsampling blur. `iscrowd` boxes are skipped.
    """
    coco_json, root = Path(coco_json), Path(images_root)
    if resolution < 8 or context_pad < 0:
        raise ValueError(f"resolution must be >= 8 and context_pad >= 0, got {resolution}, {context_pad}")
    doc = _read_doc(coco_json)
    kind_of: dict = {}
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or cat.get("name") not in KINDS:
            raise RegionDataError(f"{coco_json}: categories[{i}] {cat!r}: not one of {', '.join(KINDS)}")
        kind_of[cat["id"]] = cat["name"]
    images: dict = {}
    order: list = []
    for i, img in enumerate(doc["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise RegionDataError(f"{coco_json}: images[{i}]: needs an id and a file_name, got {img!r}")
        if img["id"] in images:
            raise RegionDataError(f"{coco_json}: images[{i}]: duplicate image id {img['id']}")
        images[img["id"]] = img
        order.append(img["id"])
    by_image: dict = {k: [] for k in order}
    for i, ann in enumerate(doc["annotations"]):
        name = f"{coco_json}: annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else None})"
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise RegionDataError(f"{name}: image_id is not in images")
        if ann.get("category_id") not in kind_of:
            raise RegionDataError(f"{name}: category_id {ann.get('category_id')!r} is not in categories")
        bbox = ann.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
            raise RegionDataError(f"{name}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
        if ann.get("iscrowd"):
            continue
        by_image[ann["image_id"]].append(ann)
    samples: list[RegionSample] = []
    for image_id in order:
        anns = sorted(by_image[image_id], key=lambda a: (str(type(a.get("id"))), a.get("id")))
        keep = [a for a in anns if min(float(a["bbox"][2]), float(a["bbox"][3])) >= min_box]
        if not keep:
            continue
        img = images[image_id]
        rgb = _load_rgb(root / img["file_name"], coco_json)
        for ann in keep:
            kind = kind_of[ann["category_id"]]
            crop, box = crop_region(rgb, tuple(float(v) for v in ann["bbox"]), resolution, context_pad)
            attributes = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
            text = attributes.get("text", ann.get("text")) if kind == "plate" else None
            person = attributes.get("person") if kind == "face" else None
            samples.append(RegionSample(crop, region_mask(kind, box, resolution), kind, box,
                                        str(text) if text else None, f"{img['file_name']}#{ann.get('id')}",
                                        str(person) if person else None))
            if max_samples is not None and len(samples) >= max_samples:
                return samples
    return samples


def balanced_subset(samples: list[RegionSample], n: int) -> list[RegionSample]:
    """`n` samples spread over the kinds (faces and plates alternate) and, within a kind, evenly over the
    file: a validation set that is not just the first images' faces."""
    by_kind: dict[str, list[RegionSample]] = {}
    for sample in samples:
        by_kind.setdefault(sample.kind, []).append(sample)
    kinds = sorted(by_kind)
    quota = {k: 0 for k in kinds}
    for i in range(min(n, len(samples))):
        open_kinds = [k for k in kinds if quota[k] < len(by_kind[k])]
        quota[open_kinds[i % len(open_kinds)]] += 1
    picked = []
    for kind in kinds:
        pool, q = by_kind[kind], quota[kind]
        picked += [pool[(j * len(pool)) // q] for j in range(q)] if q else []
    return picked
