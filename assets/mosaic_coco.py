"""`mosaic_coco`: where every mosaic is, as a COCO detection set (one category, `mosaic`) for the mosaic detector.

The lineage knows every mosaic it drew: for each scene, `mosaic_lq` draws a seeded Lada-style mosaic over the
region (`assets.mosaic_lq.scene_specs`). Here the very same mosaics are drawn over WHOLE frames, the way a
user's already-pixelated video shows them, and boxed by their block-aligned mosaic mask:

- `lineage` images: every `frames_every_n`-th frame that a scene covers (at most `max_frames_per_clip` per clip),
  with every scene active on it mosaicked;
- `pasted` images (train clips only): other frames, as they are (no lineage mosaic), with 1..n random mosaics
  (random place, size, shape, block size and mode from the `mosaic` section) pasted on them, so the detector
  learns pixelation rather than "a face" or "a plate";
- `clean` images: other frames as they are, without any box (clean faces and plates included), so both the
  detector and the grid heuristic pay for what they find on natural content.

Every image is stored as a JPEG of random quality (`jpeg_quality`): mosaics reach users re-compressed, and a
detector that only knows pristine blocks fails there. The split is the restoration dataset's (by clip), so the detector is measured on the clips Stage 1 never saw.
Each val clip also gets its whole LQ video (`videos/<clip>`: every scene mosaicked, every frame), which
`aubergine restore --regions mosaic` must restore scene for scene. Degradation (`mosaic.degrade`, off in the
recipe) is not applied: the detector sees the mosaic as drawn, then the video encoder's compression.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from assets.atomic import atomic_path
from assets.mosaic import apply_mosaic, block_size_v1, sample_spec, scene_rng
from assets.mosaic_lq import scene_specs
from assets.region_tracks import full_frame_mask, scenes_by_frame
from assets.video import EncoderSettings, VideoWriter, read_frames

CATEGORY = {"id": 1, "name": "mosaic", "supercategory": "privacy"}
CATEGORY_IDS = {"mosaic": 1}
SOURCES = ("lineage", "pasted", "clean")


@dataclass
class MosaicImage:
    file_name: str  # relative to the dataset root
    width: int
    height: int
    clip_id: str
    frame: int
    source: str  # lineage | pasted | clean
    boxes: list[list[int]] = field(default_factory=list)  # [x, y, w, h]


@dataclass
class ClipResult:
    clip_id: str
    split: str
    images: list[MosaicImage]
    video: str | None = None  # the val clip's whole LQ video, relative to the dataset root
    scenes: int = 0
    frames: int = 0


def mask_box(mask: np.ndarray) -> list[int] | None:
    x, y, w, h = cv2.boundingRect(mask)
    return [int(x), int(y), int(w), int(h)] if w > 0 and h > 0 else None


def lineage_mosaic(frame: np.ndarray, scenes, index: int, specs: dict, mask_shape: str) -> tuple[np.ndarray, list[list[int]]]:
    """`frame` with the mosaic of every scene active on it, as `mosaic_lq` draws it; the mosaics' boxes."""
    shape = frame.shape[:2]
    out, boxes = frame, []
    for scene in scenes:
        mask = full_frame_mask(scene, index - scene.start, shape, mask_shape)
        out, lq_mask = apply_mosaic(out, mask, specs[scene.id])
        box = mask_box(lq_mask)
        if box:
            boxes.append(box)
    return out, boxes


def overlaps(a: list[int], b: list[int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def pasted_mosaics(frame: np.ndarray, rng: np.random.Generator, mosaic, data,
                   taken: list[list[int]] | None = None) -> tuple[np.ndarray, list[list[int]]]:
    """1..n random mosaics that do not overlap each other or the boxes in `taken` (rectangles or ellipses), block
    size by Lada's area rule; the boxes returned are `taken`'s and the new ones."""
    h, w = frame.shape[:2]
    out, boxes = frame, list(taken or [])
    wanted = len(boxes) + int(rng.integers(data.pasted_per_frame[0], data.pasted_per_frame[1] + 1))
    for _ in range(wanted * 5):  # a few tries per mosaic to find a free place
        if len(boxes) == wanted:
            break
        side = rng.uniform(*data.paste_side) * min(h, w)
        aspect = rng.uniform(*data.paste_aspect)
        bw, bh = int(min(w - 2, side * math.sqrt(aspect))), int(min(h - 2, side / math.sqrt(aspect)))
        if bw < 8 or bh < 8:
            continue
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        mask = np.zeros((h, w), np.uint8)
        if rng.random() < 0.5:
            mask[y0 : y0 + bh, x0 : x0 + bw] = 255
        else:
            cv2.ellipse(mask, (x0 + bw // 2, y0 + bh // 2), (bw // 2, bh // 2), 0, 0, 360, 255, -1)
        spec = sample_spec(rng, block_size_v1(float((mask > 0).sum()), (h, w)), mosaic)
        candidate, lq_mask = apply_mosaic(out, mask, spec)
        box = mask_box(lq_mask)
        if box is None or any(overlaps(box, b) for b in boxes):
            continue
        inside = lq_mask > 0
        if np.abs(candidate[inside].astype(np.int16) - out[inside].astype(np.int16)).mean() < data.min_visible_change:
            continue  # a mosaic over flat content looks like the content: labelling it would teach noise
        out = candidate
        boxes.append(box)
    return out, boxes


def save_jpeg(image: np.ndarray, dest: Path, quality: int) -> None:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError(f"{dest}: could not encode the JPEG")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data.tobytes())


def _every(indices: list[int], step: int, limit: int) -> set[int]:
    return set(indices[::max(1, step)][:max(0, limit)])


def build_clip(record: dict, split: str, out_root: Path, mosaic, data, mask_shape: str, seed: int,
               encoder: EncoderSettings) -> ClipResult:
    """Images (and for a val clip its whole LQ video) of one clip; `record` is its region_tracks record with
    `Scene` objects (`assets.region_tracks.load_clip_tracks`) and the video's `path`."""
    clip_id = record["clip_id"]
    scenes = record["scenes"]
    specs = scene_specs(record, mosaic, mask_shape, seed)[0]
    active = scenes_by_frame(scenes)
    total = int(record.get("frames") or 0)
    lineage = _every(sorted(active), data.frames_every_n, data.max_frames_per_clip)
    # Pasted and clean images show the ORIGINAL frame (no lineage mosaic), so any other frame serves: a clean
    # face there is a negative the detector must learn to leave alone.
    others = [i for i in range(total) if i not in lineage]
    pasted = _every(others, data.frames_every_n, data.pasted_frames_per_clip) if split == "train" else set()
    rest = [i for i in others if i not in pasted]
    clean = _every(rest, max(1, len(rest) // max(1, data.clean_frames_per_clip)), data.clean_frames_per_clip)
    rng = scene_rng(seed, clip_id, "mosaic_coco")
    result = ClipResult(clip_id, split, [], scenes=len(scenes))
    stem = Path(clip_id).stem
    with ExitStack() as stack:
        writer = None
        if split == "val" and scenes:
            result.video = f"videos/{clip_id}"
            writer = stack.enter_context(VideoWriter(out_root / result.video, record["fps_fraction"], encoder))
        for index, frame in enumerate(read_frames(record["path"], stop=total or None)):
            result.frames = index + 1
            lq, boxes = lineage_mosaic(frame, active.get(index, ()), index, specs, mask_shape)
            if writer is not None:
                writer.write(lq)
            source = "lineage" if index in lineage else "pasted" if index in pasted else "clean" if index in clean else None
            if source is None:
                continue
            if source == "pasted":
                lq, boxes = pasted_mosaics(frame, rng, mosaic, data)
            elif source == "clean":
                lq, boxes = frame, []
            name = f"images/{split}/{stem}_{index:06d}_{source}.jpg"
            save_jpeg(lq, out_root / name, int(rng.integers(data.jpeg_quality[0], data.jpeg_quality[1] + 1)))
            h, w = lq.shape[:2]
            result.images.append(MosaicImage(name, w, h, clip_id, index, source, boxes))
    return result


def coco_document(images: list[MosaicImage]) -> dict:
    doc = {"images": [], "annotations": [], "categories": [dict(CATEGORY)]}
    for k, im in enumerate(images, start=1):
        doc["images"].append({"id": k, "file_name": im.file_name, "width": im.width, "height": im.height,
                              "clip_id": im.clip_id, "frame": im.frame, "source": im.source})
        for box in im.boxes:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": k, "category_id": CATEGORY["id"],
                                       "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0})
    return doc
