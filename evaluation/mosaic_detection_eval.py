"""How well mosaics are found: any region detector's boxes on a COCO mosaic set (for COCO mAP against the
trained mosaic detector's), and whether a whole-video pass finds every scene the lineage made.

`scene_recall`: a lineage scene counts as found when the scenes a detector pass built cover at least
`min_coverage` of its frames with a region overlapping the lineage's (IoU >= `min_iou` on each covered frame).
What `aubergine restore --regions mosaic` restores is exactly those scenes, so this is the figure the issue
asks for ("restores every scene the lineage made for it"), measured without paying for the restoration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from assets.tracks import Scene, iou


def region_detections(detector, coco: dict, image_root: Path, category_id: int = 1, progress: bool = False) -> list[dict]:
    """COCO results of `detector(frame, index) -> [Detection]` on every image of `coco`."""
    out = []
    for im in tqdm(coco["images"], desc="detect", unit="image", disable=not progress):
        frame = np.asarray(Image.open(image_root / im["file_name"]).convert("RGB"))
        for det in detector(frame, 0):
            x0, y0, x1, y1 = det.box
            out.append({"image_id": im["id"], "category_id": category_id,
                        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "score": round(float(det.score), 5)})
    return out


def scene_recall(lineage: list[Scene], found: list[Scene], min_iou: float = 0.3, min_coverage: float = 0.8) -> dict:
    """{"scenes", "found", "recall", "per_scene": [...]}: lineage scenes matched by the found scenes."""
    per_scene = []
    for scene in lineage:
        hits = 0
        for offset, region in enumerate(scene.regions):
            frame = scene.start + offset
            best = 0.0
            for other in found:
                if other.start <= frame < other.stop:
                    best = max(best, iou(tuple(region), tuple(other.regions[frame - other.start])))
            hits += best >= min_iou
        coverage = hits / max(1, scene.frames)
        per_scene.append({"scene": scene.id, "start": scene.start, "frames": scene.frames, "coverage": round(coverage, 3),
                          "found": coverage >= min_coverage})
    matched = sum(p["found"] for p in per_scene)
    return {"scenes": len(lineage), "found": matched, "recall": matched / len(lineage) if lineage else None,
            "per_scene": per_scene}
