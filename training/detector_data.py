"""Detector training data: a COCO file of faces/plates read into tensors, and a seeded, resumable sampler
with horizontal flips and scale jitter.

- `CocoBoxes(coco_json, image_root)`: images as float CHW tensors in [0, 1] (RGB), targets as
  `{"boxes": float32 (n, 4) xyxy pixels, "labels": int64 (n,)}`. Labels are our category ids
  (`assets.coco_records.CATEGORY_IDS`), matched by category *name*, so a file that numbers face/plate
  differently still trains the same labels. Images without boxes are kept (negatives); `iscrowd` boxes are
  left out of the targets (torchvision's detection reference does the same). Boxes reaching past the image
  are clipped; a malformed entry is an error naming the file and the entry.
- Scale jitter: torchvision's detectors resize every image so its short side is `min_size` (long side at
  most `max_size`), which would undo a plain resize. So the jitter is large-scale-jitter style: the image is
  resized to that nominal size times a random factor, then randomly cropped or padded (ImageNet mean, which
  is zero after the model's normalisation, like torchvision's own batch padding) back to the nominal canvas.
  Objects change size in the image the model sees; the canvas does not.
- Randomness: one `torch.Generator` draws the image order (a permutation per epoch) and every augmentation
  choice, in the main thread, before any worker decodes an image. Its state and the position in the epoch
  go into each checkpoint, so a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from assets.coco_records import CATEGORY_IDS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
MIN_VISIBLE = 0.4  # a box cropped to less than this fraction of its area is dropped from the target
MIN_SIDE = 2.0  # px: a box thinner than this after augmentation is dropped


class DetectorDataError(ValueError):
    pass


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class CocoBoxes:
    """A COCO detection file (+ image root) as (image tensor, target) pairs."""

    def __init__(self, coco_json: str | Path, image_root: str | Path, categories: dict[str, int] | None = None):
        self.json_path = Path(coco_json)
        self.root = Path(image_root)
        categories = dict(categories or CATEGORY_IDS)
        if not self.json_path.is_file():
            raise DetectorDataError(f"{self.json_path}: COCO file not found")
        try:
            doc = json.loads(self.json_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DetectorDataError(f"{self.json_path}: not valid JSON ({err})") from None
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
            raise DetectorDataError(f"{self.json_path}: not a COCO detection file (needs images, annotations, categories lists)")
        where = self.json_path
        self.label_of: dict[int, int] = {}  # the file's category id -> our label
        for i, cat in enumerate(doc["categories"]):
            if not isinstance(cat, dict) or "id" not in cat or cat.get("name") not in categories:
                raise DetectorDataError(f"{where}: categories[{i}] {cat!r}: not one of {', '.join(categories)}")
            self.label_of[cat["id"]] = categories[cat["name"]]
        self.images: list[dict] = []
        index: dict = {}
        root = Path(os.path.normpath(self.root.absolute()))
        for i, img in enumerate(doc["images"]):
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                raise DetectorDataError(f"{where}: images[{i}]: needs an id and a file_name, got {img!r}")
            if img["id"] in index:
                raise DetectorDataError(f"{where}: images[{i}]: duplicate image id {img['id']}")
            # Lexical check (not resolve()): DVC may link files into the root from its cache.
            path = Path(os.path.normpath(root / img["file_name"]))
            if Path(img["file_name"]).is_absolute() or not path.is_relative_to(root):
                raise DetectorDataError(f"{where}: images[{i}] (id {img['id']}): file_name {img['file_name']!r} leaves the image root {self.root}")
            index[img["id"]] = len(self.images)
            self.images.append({**img, "path": path})
        boxes: list[list[list[float]]] = [[] for _ in self.images]
        labels: list[list[int]] = [[] for _ in self.images]
        for i, ann in enumerate(doc["annotations"]):
            if not isinstance(ann, dict):
                raise DetectorDataError(f"{where}: annotations[{i}]: not a dict")
            name = f"{where}: annotations[{i}] (id {ann.get('id')})"
            if ann.get("image_id") not in index:
                raise DetectorDataError(f"{name}: image_id {ann.get('image_id')!r} is not in images")
            if ann.get("category_id") not in self.label_of:
                raise DetectorDataError(f"{name}: category_id {ann.get('category_id')!r} is not in categories")
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_num(v) for v in bbox):
                raise DetectorDataError(f"{name}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                raise DetectorDataError(f"{name}: bbox has non-positive size {bbox}")
            if ann.get("iscrowd"):
                continue
            k = index[ann["image_id"]]
            img = self.images[k]
            iw, ih = img.get("width"), img.get("height")
            x0, y0, x1, y1 = x, y, x + w, y + h
            if _is_num(iw) and _is_num(ih):
                x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(iw), x1), min(float(ih), y1)
                if x1 - x0 < 1 or y1 - y0 < 1:
                    raise DetectorDataError(f"{name}: bbox {bbox} lies outside the {iw}x{ih} image")
            boxes[k].append([x0, y0, x1, y1])
            labels[k].append(self.label_of[ann["category_id"]])
        self.targets = [
            {"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(l, dtype=torch.int64)}
            for b, l in zip(boxes, labels)
        ]

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, k: int) -> torch.Tensor:
        img = self.images[k]
        try:
            with Image.open(img["path"]) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as err:
            raise DetectorDataError(f"{self.json_path}: image id {img['id']}: cannot read {img['path']} ({err})") from None
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, dict]:
        image = self.load_image(k)
        target = {key: v.clone() for key, v in self.targets[k].items()}
        if len(target["boxes"]):
            h, w = image.shape[1:]
            target["boxes"][:, 0::2] = target["boxes"][:, 0::2].clamp(0, w)
            target["boxes"][:, 1::2] = target["boxes"][:, 1::2].clamp(0, h)
        return image, target

    def box_count(self) -> int:
        return sum(len(t["labels"]) for t in self.targets)


@dataclass(frozen=True)
class Aug:
    """One image's augmentation, drawn in the main thread: index, jitter factor, crop/pad placement, flip."""

    index: int
    factor: float
    u: float  # placement of the crop (or of the image in the padded canvas), 0..1, horizontal
    v: float  # vertical
    flip: bool


def nominal_scale(h: int, w: int, min_size: int, max_size: int) -> float:
    """The factor torchvision's GeneralizedRCNNTransform would resize an (h, w) image by."""
    return min(min_size / min(h, w), max_size / max(h, w))


def apply_aug(image: torch.Tensor, target: dict, aug: Aug, min_size: int, max_size: int) -> tuple[torch.Tensor, dict]:
    """Resize to nominal size x factor, crop/pad back to the nominal canvas, maybe flip; boxes follow."""
    _, h, w = image.shape
    s0 = nominal_scale(h, w, min_size, max_size)
    ch, cw = max(1, round(h * s0)), max(1, round(w * s0))
    rh, rw = max(1, round(h * s0 * aug.factor)), max(1, round(w * s0 * aug.factor))
    resized = F.interpolate(image[None], size=(rh, rw), mode="bilinear", align_corners=False,
                            antialias=rh < h or rw < w)[0].clamp_(0, 1)
    canvas = torch.tensor(IMAGENET_MEAN, dtype=image.dtype).view(3, 1, 1).expand(3, ch, cw).clone()
    # Crop when the resized image is larger than the canvas, pad (place it) when smaller, per axis.
    ox = math.floor(aug.u * (abs(rw - cw) + 1)) if rw != cw else 0
    oy = math.floor(aug.v * (abs(rh - ch) + 1)) if rh != ch else 0
    ox, oy = min(ox, abs(rw - cw)), min(oy, abs(rh - ch))
    sx0, dx0 = (ox, 0) if rw >= cw else (0, ox)
    sy0, dy0 = (oy, 0) if rh >= ch else (0, oy)
    cw_, ch_ = min(rw, cw), min(rh, ch)
    canvas[:, dy0:dy0 + ch_, dx0:dx0 + cw_] = resized[:, sy0:sy0 + ch_, sx0:sx0 + cw_]
    boxes, labels = target["boxes"].clone(), target["labels"].clone()
    if len(boxes):
        boxes[:, 0::2] = boxes[:, 0::2] * (rw / w) - sx0 + dx0
        boxes[:, 1::2] = boxes[:, 1::2] * (rh / h) - sy0 + dy0
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, cw)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ch)
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = (bw >= MIN_SIDE) & (bh >= MIN_SIDE) & (bw * bh >= MIN_VISIBLE * area)
        boxes, labels = boxes[keep], labels[keep]
    if aug.flip:
        canvas = canvas.flip(-1)
        if len(boxes):
            boxes = torch.stack([cw - boxes[:, 2], boxes[:, 1], cw - boxes[:, 0], boxes[:, 3]], dim=1)
    return canvas, {"boxes": boxes.reshape(-1, 4), "labels": labels}


class BoxSampler:
    """Batches of augmented (image, target) pairs: epochs of seeded permutations, resumable state."""

    def __init__(self, data: CocoBoxes, min_size: int, max_size: int, seed: int,
                 scale_range: tuple[float, float] = (0.75, 1.25), flip: bool = True, workers: int = 2):
        if len(data) == 0:
            raise DetectorDataError(f"{data.json_path}: no images to train on")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise DetectorDataError(f"scale jitter range must satisfy 0 < low <= high, got {scale_range}")
        self.data, self.min_size, self.max_size = data, min_size, max_size
        self.scale_range, self.flip = (float(lo), float(hi)), flip
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(data), generator=self.generator)
        self.pos = 0
        self.epoch = 0
        self.pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None

    def _next_index(self) -> int:
        if self.pos >= len(self.order):
            self.order = torch.randperm(len(self.data), generator=self.generator)
            self.pos, self.epoch = 0, self.epoch + 1
        k = int(self.order[self.pos])
        self.pos += 1
        return k

    def plan(self, batch_size: int) -> list[Aug]:
        out = []
        lo, hi = self.scale_range
        for _ in range(batch_size):
            k = self._next_index()
            r = torch.rand(4, generator=self.generator, dtype=torch.float64).tolist()
            out.append(Aug(k, lo + (hi - lo) * r[0], r[1], r[2], self.flip and r[3] < 0.5))
        return out

    def load(self, aug: Aug) -> tuple[torch.Tensor, dict]:
        image, target = self.data[aug.index]
        return apply_aug(image, target, aug, self.min_size, self.max_size)

    def sample(self, batch_size: int, part: range | None = None) -> tuple[list[torch.Tensor], list[dict], list[int]]:
        """With `part`: the whole batch is planned (the generator advances alike on every rank) and only the
        images at those positions are loaded (a rank's share of a global batch)."""
        plan = self.plan(batch_size)
        if part is not None:
            plan = [plan[i] for i in part]
        items = list(self.pool.map(self.load, plan)) if self.pool else [self.load(a) for a in plan]
        return [i for i, _ in items], [t for _, t in items], [a.index for a in plan]

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "pos": self.pos, "epoch": self.epoch}

    def load_state(self, state: dict) -> None:
        order = state["order"]
        if len(order) != len(self.data):
            raise DetectorDataError(f"sampler state is for {len(order)} images, the data has {len(self.data)}")
        self.generator.set_state(state["generator"])
        self.order, self.pos, self.epoch = order.clone(), int(state["pos"]), int(state.get("epoch", 0))

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=True)


def write_shapes_coco(dest: str | Path, count: int, seed: int = 0, size: tuple[int, int] = (320, 240),
                      negatives: float = 0.1, max_objects: int = 3) -> tuple[Path, Path]:
    """A synthetic face/plate set for tests, benches and smoke runs: `dest/images/*.png` + `dest/coco.json`.

    "Plates" are light rectangles (aspect 2-4.7) with a dark border and dark glyph bars; "faces" are
    skin-toned ellipses (aspect 0.7-0.9) with two dark eyes; backgrounds are smooth colour gradients with
    noise and a few distractor blobs and lines. `negatives` of the images carry no object."""
    from PIL import ImageDraw

    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    images, annotations = [], []
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        c0, c1 = rng.uniform(30, 200, 3), rng.uniform(30, 200, 3)
        t = ((xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / (w + h) + 1) / 2
        bg = c0 * t[..., None] + c1 * (1 - t[..., None]) + rng.normal(0, 8, (h, w, 3))
        im = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(rng.integers(1, 5)):  # distractors
            x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 30)
            color = tuple(int(v) for v in rng.uniform(0, 255, 3))
            if rng.random() < 0.5:
                draw.line([x, y, x + rng.uniform(-80, 80), y + rng.uniform(-80, 80)], fill=color, width=int(rng.integers(1, 5)))
            else:
                draw.ellipse([x - r, y - r * 0.5, x + r, y + r * 0.5], fill=color)
        boxes: list[tuple[int, list[float]]] = []
        n = 0 if rng.random() < negatives else int(rng.integers(1, max_objects + 1))
        for _ in range(n * 4):  # tries; overlapping placements are skipped
            if len(boxes) >= n:
                break
            if rng.random() < 0.5:  # plate
                bw = rng.uniform(0.12, 0.35) * w
                bh = bw / rng.uniform(2.0, 4.7)
                cat = CATEGORY_IDS["plate"]
            else:  # face
                bh = rng.uniform(0.12, 0.4) * h
                bw = bh * rng.uniform(0.7, 0.9)
                cat = CATEGORY_IDS["face"]
            x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            box = [x0, y0, x0 + bw, y0 + bh]
            if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for _, b in boxes):
                continue
            if cat == CATEGORY_IDS["plate"]:
                fill = (int(rng.uniform(215, 255)), int(rng.uniform(215, 255)), int(rng.choice([40, 230])))
                draw.rectangle(box, fill=fill, outline=(20, 20, 20), width=max(1, int(bh * 0.06)))
                for k in range(int(rng.integers(4, 8))):  # glyph bars
                    gx = x0 + bw * (0.08 + 0.84 * k / 8)
                    draw.rectangle([gx, y0 + bh * 0.25, gx + bw * 0.06, y0 + bh * 0.75], fill=(15, 15, 15))
            else:
                r = rng.uniform(150, 245)
                skin = (int(r), int(r * rng.uniform(0.68, 0.85)), int(r * rng.uniform(0.5, 0.7)))
                draw.ellipse(box, fill=skin, outline=tuple(max(0, c - 60) for c in skin))
                for ex in (0.33, 0.67):
                    cx, cy, r = x0 + bw * ex, y0 + bh * 0.4, max(1.0, bw * 0.07)
                    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(30, 20, 20))
                draw.line([x0 + bw * 0.35, y0 + bh * 0.72, x0 + bw * 0.65, y0 + bh * 0.72], fill=(120, 40, 40), width=2)
            boxes.append((cat, box))
        name = f"shape_{i:05d}.png"
        im.save(dest / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for cat, (x0, y0, x1, y1) in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat,
                                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0})
    from assets.coco_records import CATEGORIES

    doc = {"images": images, "annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}
    (dest / "coco.json").write_text(json.dumps(doc))
    return dest / "coco.json", dest / "images"
