"""How much a faster region_tracks (detection on a subset of frames, boxes carried between them) loses against
detection on every frame: scene recall and box IoU, from the two runs' records (`<clip>.json`)."""

from __future__ import annotations

import numpy as np

from assets.tracks import iou


def _frame_boxes(record: dict) -> dict[int, list[tuple[str, list[float]]]]:
    out: dict[int, list] = {}
    for track in record["tracks"]:
        for offset, box in enumerate(track["boxes"]):
            if box is not None:
                out.setdefault(track["start"] + offset, []).append((track["kind"], box))
    return out


def _scene_regions(scene: dict) -> dict[int, list[float]]:
    return {scene["start"] + i: r for i, r in enumerate(scene["regions"])}


def compare(reference: dict, fast: dict, min_iou: float = 0.5) -> dict:
    """Reference scenes found by the fast run (same kind, their regions overlapping with mean IoU >= `min_iou`
    over the reference scene's frames), the mean region IoU of the found ones, and the mean IoU of each
    reference box with the best box of its kind in the fast run on that frame (0 when none)."""
    fast_scenes = [(s["kind"], _scene_regions(s)) for s in fast["scenes"]]
    found, region_ious = 0, []
    for scene in reference["scenes"]:
        regions = _scene_regions(scene)
        best = 0.0
        for kind, other in fast_scenes:
            if kind != scene["kind"]:
                continue
            best = max(best, float(np.mean([iou(r, other[f]) if f in other else 0.0 for f, r in regions.items()])))
        if best >= min_iou:
            found += 1
            region_ious.append(best)
    ref_boxes, fast_boxes = _frame_boxes(reference), _frame_boxes(fast)
    box_ious = [max([iou(box, b) for k, b in fast_boxes.get(frame, []) if k == kind], default=0.0)
                for frame, boxes in ref_boxes.items() for kind, box in boxes]
    return {
        "scenes": len(reference["scenes"]), "scenes_found": found,
        "region_iou_sum": float(sum(region_ious)),
        "boxes": len(box_ious), "box_iou_sum": float(sum(box_ious)),
    }


def summarize(rows: list[dict]) -> dict:
    scenes = sum(r["scenes"] for r in rows)
    found = sum(r["scenes_found"] for r in rows)
    boxes = sum(r["boxes"] for r in rows)
    return {
        "scene_recall": found / scenes if scenes else 1.0,
        "mean_region_iou": sum(r["region_iou_sum"] for r in rows) / found if found else 0.0,
        "mean_box_iou": sum(r["box_iou_sum"] for r in rows) / boxes if boxes else 1.0,
        "scenes": scenes, "boxes": boxes,
    }
