"""Lada's restoration-dataset layout (metadata version 2): the writer's record and the reader.

Layout under each split root (`train/`, `val/`):

    crop_unscaled_meta/<name>.json        one per scene, paths relative to this folder
    crop_unscaled_img/<name>.mp4          GT (eggplant composited), frames zero-padded to scene_shape
    crop_unscaled_mask/<name>.mkv         region mask, FFV1, 0/255
    crop_unscaled_mosaic/<name>.mp4       LQ (mosaic of the original)
    crop_unscaled_mask_mosaic/<name>.mkv  block-aligned mask of the mosaic, FFV1, 0/255

`<name>` is Lada's `<source file name>-<scene id, 6 digits>-`. Field order and types follow Lada's
RestorationDatasetMetadataV2 so that Lada's trainer reads what we write and we read what Lada writes.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

META_DIR, GT_DIR, MASK_DIR = "crop_unscaled_meta", "crop_unscaled_img", "crop_unscaled_mask"
LQ_DIR, LQ_MASK_DIR = "crop_unscaled_mosaic", "crop_unscaled_mask_mosaic"
SPLITS = ("train", "val")

V2_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "fps": (float, int),
    "frames_count": (int,),
    "orig_shape": (list,),
    "scene_shape": (list,),
    "base_mosaic_block_size": (dict,),
    "pad": (list,),
    "relative_nsfw_video_path": (str,),
    "relative_mask_video_path": (str,),
    "relative_mosaic_nsfw_video_path": (str, type(None)),
    "relative_mosaic_mask_video_path": (str, type(None)),
    "mosaic": (dict, type(None)),
    "video_quality": (dict, type(None)),
    "watermark_detected": (bool, type(None)),
    "nudenet_nsfw_detected": (bool, type(None)),
    "nudenet_nsfw_detected_classes": (dict, type(None)),
    "censoring_detected": (bool, type(None)),
    "version": (int,),
}
BLOCK_SIZE_KEYS = ("mosaic_size_v3", "mosaic_size_v2", "mosaic_size_v1_normal", "mosaic_size_v1_bounding")
MOSAIC_KEYS = ("mod", "rect_ratio", "mosaic_size", "feather_size")

PATH_KEYS = ("relative_nsfw_video_path", "relative_mask_video_path", "relative_mosaic_nsfw_video_path",
             "relative_mosaic_mask_video_path")


class DatasetFormatError(ValueError):
    pass


def scene_name(source_name: str, scene_id: int) -> str:
    return f"{source_name}-{scene_id:06d}-"


def meta_record(
    *, name: str, fps: float, frames_count: int, orig_shape, scene_shape, block_sizes: dict, pads, file_stem: str,
    mosaic: dict | None,
) -> dict:
    """A version-2 record in Lada's field order; detector fields we do not compute are null (unknown)."""
    return {
        "name": name,
        "fps": float(fps),
        "frames_count": int(frames_count),
        "orig_shape": [int(v) for v in orig_shape],
        "scene_shape": [int(v) for v in scene_shape],
        "base_mosaic_block_size": {k: float(block_sizes[k]) for k in BLOCK_SIZE_KEYS},
        "pad": [[int(v) for v in p] for p in pads],
        "relative_nsfw_video_path": f"../{GT_DIR}/{file_stem}.mp4",
        "relative_mask_video_path": f"../{MASK_DIR}/{file_stem}.mkv",
        "relative_mosaic_nsfw_video_path": f"../{LQ_DIR}/{file_stem}.mp4" if mosaic else None,
        "relative_mosaic_mask_video_path": f"../{LQ_MASK_DIR}/{file_stem}.mkv" if mosaic else None,
        "mosaic": {k: mosaic[k] for k in MOSAIC_KEYS} if mosaic else None,
        "video_quality": None,
        "watermark_detected": None,
        "nudenet_nsfw_detected": None,
        "nudenet_nsfw_detected_classes": None,
        "censoring_detected": None,
        "version": 2,
    }


def validate_record(record: dict, source: str) -> None:
    for key, types in V2_FIELDS.items():
        if key not in record:
            raise DatasetFormatError(f"{source}: missing field {key!r}")
        value = record[key]
        if isinstance(value, bool) and bool not in types:
            raise DatasetFormatError(f"{source}: field {key!r} must be {types}, got bool")
        if not isinstance(value, types):
            raise DatasetFormatError(f"{source}: field {key!r} must be {'/'.join(t.__name__ for t in types)}, got {type(value).__name__}")
    if record["version"] != 2:
        raise DatasetFormatError(f"{source}: version {record['version']} is not 2")
    for key in ("orig_shape", "scene_shape"):
        if len(record[key]) != 2 or not all(isinstance(v, int) for v in record[key]):
            raise DatasetFormatError(f"{source}: {key} must be [height, width] integers")
    missing = [k for k in BLOCK_SIZE_KEYS if k not in record["base_mosaic_block_size"]]
    if missing:
        raise DatasetFormatError(f"{source}: base_mosaic_block_size lacks {missing}")
    if record["mosaic"] is not None and (missing := [k for k in MOSAIC_KEYS if k not in record["mosaic"]]):
        raise DatasetFormatError(f"{source}: mosaic lacks {missing}")
    if len(record["pad"]) != record["frames_count"]:
        raise DatasetFormatError(f"{source}: {len(record['pad'])} pads for frames_count={record['frames_count']}")
    for i, pad in enumerate(record["pad"]):
        if len(pad) != 4 or any((not isinstance(v, int)) or v < 0 for v in pad):
            raise DatasetFormatError(f"{source}: pad[{i}] must be 4 non-negative integers [top, bottom, left, right]")


def dump_record(record: dict) -> str:
    # Lada writes compact JSON in field order; we indent for people reading diffs, which Lada's reader ignores.
    return json.dumps(record, indent=1) + "\n"


@dataclass(frozen=True)
class SceneItem:
    """One scene of a restoration dataset, with resolved paths."""

    meta_path: Path
    meta: dict

    def _resolve(self, key: str) -> Path | None:
        rel = self.meta.get(key)
        return (self.meta_path.parent / rel).resolve() if rel else None

    @property
    def gt_path(self) -> Path:
        return self._resolve("relative_nsfw_video_path")

    @property
    def mask_path(self) -> Path:
        return self._resolve("relative_mask_video_path")

    @property
    def lq_path(self) -> Path | None:
        return self._resolve("relative_mosaic_nsfw_video_path")

    @property
    def lq_mask_path(self) -> Path | None:
        return self._resolve("relative_mosaic_mask_video_path")

    @property
    def frames_count(self) -> int:
        return self.meta["frames_count"]

    @property
    def pads(self) -> list[tuple[int, int, int, int]]:
        return [tuple(p) for p in self.meta["pad"]]


class RestorationDataset:
    """Reads a Lada version-2 restoration dataset split (ours or Lada's). Frames come back RGB uint8 and,
    with `unpadded=True`, with each frame's zero pad removed (its original crop)."""

    def __init__(self, root: str | Path, split: str = "train", min_frames: int = 1):
        self.root = Path(root)
        meta_dir = self.root / split / META_DIR
        if not meta_dir.is_dir():
            raise DatasetFormatError(f"{meta_dir}: no such folder; materialize restoration_dataset first")
        self.items: list[SceneItem] = []
        self.rejected: list[str] = []  # one line per scene left out, naming its meta file, key and reason
        for meta_path in sorted(meta_dir.glob("*.json")):
            try:
                record = json.loads(meta_path.read_text())
            except json.JSONDecodeError as err:
                raise DatasetFormatError(f"{meta_path}: not valid JSON ({err})") from None
            validate_record(record, str(meta_path))
            problem = self._escaping_path(meta_path, record)
            item = SceneItem(meta_path, record)
            if problem is None:
                problem = next((f"{meta_path}: {key} -> {path} does not exist"
                                for key, path in (("relative_nsfw_video_path", item.gt_path),
                                                  ("relative_mask_video_path", item.mask_path))
                                if not path.is_file()), None)
            if problem is not None:
                # A shared dataset with one bad entry stays usable: that scene is left out, loudly.
                self.rejected.append(problem)
                warnings.warn(f"restoration dataset: scene left out: {problem}", stacklevel=2)
                continue
            if item.frames_count >= min_frames:
                self.items.append(item)

    def _escaping_path(self, meta_path: Path, record: dict) -> str | None:
        """Datasets travel between people: a meta entry may only name videos inside the dataset root. The check
        is on the normalised path (no symlink resolution), so a root whose folders are links still reads."""
        root = os.path.normpath(os.path.abspath(self.root))
        for key in PATH_KEYS:
            rel = record.get(key)
            if not rel:
                continue
            if os.path.isabs(rel):
                return f"{meta_path}: {key} = {rel!r} is absolute; paths must be relative to the meta file"
            target = os.path.normpath(os.path.join(os.path.abspath(meta_path.parent), rel))
            if os.path.commonpath([root, target]) != root:
                return f"{meta_path}: {key} = {rel!r} leads outside the dataset root {self.root}"
        return None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[SceneItem]:
        return iter(self.items)

    @staticmethod
    def read(item: SceneItem, which: str = "gt", start: int = 0, stop: int | None = None, unpadded: bool = False) -> list[np.ndarray]:
        from assets.tracks import unpad
        from assets.video import read_frames, read_gray_frames

        path = {"gt": item.gt_path, "lq": item.lq_path, "mask": item.mask_path, "lq_mask": item.lq_mask_path}[which]
        if path is None:
            raise DatasetFormatError(f"{item.meta_path}: has no {which} video (pre-generated mosaic missing)")
        if which.endswith("mask"):
            frames = [f for i, f in enumerate(read_gray_frames(path)) if i >= start and (stop is None or i < stop)]
        else:
            frames = list(read_frames(path, start, stop))
        if unpadded:
            pads = item.pads[start : start + len(frames)]
            frames = [unpad(f, p) for f, p in zip(frames, pads)]
        return frames
