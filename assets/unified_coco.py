"""`unified_coco`: every face/plate source in one COCO set with stable category ids.

- Images are stored content-addressed (`images/<sha256[:20]><ext>`), so the same picture arriving from two
  sources is kept once (the first source in the configured order wins; the duplicate is reported).
- The split is by source group (a clip, a WIDER FACE event, a synthetic plate's background), decided by a
  hash of (source, group), never by image: frames of one clip never sit on both sides.
- `train.json` / `val.json` are plain COCO; plate annotations carry their text when it is known
  (`attributes.text`), which the OCR evaluation reads. `problems.json` lists every rejected line or entry.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assets.atomic import write_json
from assets.coco_records import CATEGORIES, CATEGORY_IDS, Conversion, ImageRecord, Problem

SPLITS = ("train", "val")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def split_of(source: str, group: str, val_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(f"{source}\x00{group}".encode()).digest()[:8], "little") / 2**64
    return "val" if h < val_fraction else "train"


def split_groups(source: str, names: list[str] | set[str], val_fraction: float) -> dict[str, str]:
    """group -> split for one source. A source with at least two groups always gets one group into each split, so
    a small sample set still has a val split per source (the group with the lowest hash goes to val)."""
    ordered = sorted(set(names), key=lambda g: hashlib.sha256(f"{source}\x00{g}".encode()).digest())
    chosen = {g: split_of(source, g, val_fraction) for g in ordered}
    if len(ordered) >= 2 and val_fraction > 0:
        if all(s == "train" for s in chosen.values()):
            chosen[ordered[0]] = "val"
        if all(s == "val" for s in chosen.values()):
            chosen[ordered[-1]] = "train"
    return chosen


def assign_splits(records: list[ImageRecord], val_fraction: float) -> dict[tuple[str, str], str]:
    """(source, group) -> split, by `split_groups` per source."""
    groups: dict[str, set[str]] = {}
    for r in records:
        groups.setdefault(r.source, set()).add(r.group)
    out: dict[tuple[str, str], str] = {}
    for source, names in groups.items():
        out.update({(source, g): s for g, s in split_groups(source, names, val_fraction).items()})
    return out


@dataclass
class Assembled:
    counts: dict
    problems: list[Problem]


def assemble(conversion: Conversion, out_dir: Path, val_fraction: float) -> Assembled:
    """Write images/, train.json, val.json and problems.json under `out_dir` (a fresh folder)."""
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    problems = list(conversion.problems)
    kept: list[tuple[ImageRecord, str, str]] = []  # record, sha, stored file name
    seen: dict[str, str] = {}
    for record in conversion.images:
        if not Path(record.path).is_file():
            problems.append(Problem(record.origin, "image", f"{record.path}: file not found"))
            continue
        sha = _sha256(Path(record.path))
        if sha in seen:
            problems.append(Problem(record.origin, "image", f"duplicate of {seen[sha]} (same content); kept once"))
            continue
        seen[sha] = record.origin
        name = f"images/{sha[:20]}{Path(record.path).suffix.lower() or '.png'}"
        shutil.copyfile(record.path, out_dir / name)
        kept.append((record, sha, name))

    splits = assign_splits([r for r, _, _ in kept if r.split is None], val_fraction)
    docs = {s: {"info": {"description": f"aubergine unified faces+plates, {s} split"}, "licenses": [],
                "categories": list(CATEGORIES), "images": [], "annotations": []} for s in SPLITS}
    image_id = ann_id = 0
    counts = {f"{s}_{k}": 0 for s in SPLITS for k in ("images", "faces", "plates")}
    by_source: dict[str, int] = {}
    # Stable ids: ordered by source, then where the image came from.
    for record, sha, name in sorted(kept, key=lambda t: (t[0].source, t[0].origin, t[1])):
        split = record.split or splits[(record.source, record.group)]
        image_id += 1
        docs[split]["images"].append({
            "id": image_id, "file_name": name, "width": record.width, "height": record.height,
            "source": record.source, "group": record.group, "origin": record.origin, "sha256": sha,
        })
        counts[f"{split}_images"] += 1
        by_source[record.source] = by_source.get(record.source, 0) + 1
        for box in record.boxes:
            ann_id += 1
            ann = {"id": ann_id, "image_id": image_id, "category_id": CATEGORY_IDS[box.category],
                   "bbox": [round(float(v), 3) for v in box.xywh], "area": round(float(box.w * box.h), 3), "iscrowd": 0}
            attributes = {"text": box.text} if box.text else {}
            if "person" in box.extra:  # synthetic people: who it is, for identity measures across images
                attributes["person"] = box.extra["person"]
            if attributes:
                ann["attributes"] = attributes
            docs[split]["annotations"].append(ann)
            counts[f"{split}_{box.category}s"] += 1
    for split in SPLITS:
        write_json(out_dir / f"{split}.json", docs[split])
    write_json(out_dir / "problems.json", [{"file": p.file, "where": p.where, "reason": p.reason} for p in problems])
    counts.update({f"images_from_{k}": v for k, v in sorted(by_source.items())})
    counts["duplicates_dropped"] = sum("same content" in p.reason for p in problems)
    counts["problems"] = len(problems)
    return Assembled(counts, problems)


def clean_background_frames(track_record: dict, count: int) -> list[int]:
    """Frames of a clip that no track covers: backgrounds for synthetic plates carry no unlabelled face or plate."""
    covered = np.zeros(track_record["frames"], dtype=bool)
    for t in track_record.get("tracks", []):
        covered[max(0, t["start"]) : t["stop"]] = True
    free = np.flatnonzero(~covered)
    if len(free) == 0:
        return []
    picks = np.linspace(0, len(free) - 1, min(count, len(free))).round().astype(int)
    return sorted({int(free[i]) for i in picks})


def coco_rows(doc: dict, root: Path) -> tuple[list[dict], list[dict]]:
    """Image rows and annotation rows for the Great Expectations suite."""
    images = {im["id"]: im for im in doc["images"]}
    image_rows = [{"id": im["id"], "file_name": im["file_name"], "width": im["width"], "height": im["height"],
                   "file_exists": (root / im["file_name"]).is_file()} for im in doc["images"]]
    ann_rows = []
    for a in doc["annotations"]:
        im = images.get(a["image_id"], {})
        x, y, w, h = a["bbox"]
        ann_rows.append({
            "id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"], "known_image": bool(im),
            "x": x, "y": y, "w": w, "h": h, "area": w * h,
            "right_margin": (im.get("width", 0) - (x + w)), "bottom_margin": (im.get("height", 0) - (y + h)),
        })
    return image_rows, ann_rows
