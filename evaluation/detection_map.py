"""COCO-style box mAP for the face/plate detectors, with a second implementation to cross-check against.

`coco_map(gt, detections)` runs pycocotools' `COCOeval` (bbox) and returns one flat dict: the twelve
standard summary numbers under short names, per-category AP read from COCOeval's precision array, the
summary text COCOeval prints (captured, never printed), and what produced it. `backend="faster-coco-eval"`
runs the same evaluation with faster-coco-eval's C++ `COCOeval_faster`; both agree to 2.2e-16 on the
cases in tests/test_eval_map.py.

Inputs are checked before either library sees them, because both fail on bad input with a bare
`AssertionError` or `KeyError`: a detection that names an image or category the ground truth lacks, a
malformed box or a missing score raises `DetectionInputError` naming the entry (`detections[12] ...`).

Conventions:
- A number COCOeval reports as -1 (nothing to average: no ground truth in that category, area range or
  at all) is returned as None, which is JSON null.
- Per-category keys use the category name (`AP_face`, `AP50_plate`), with characters other than letters,
  digits, `-` and `_` replaced by `_`.
- Ground truth annotations without `iscrowd` get 0 and without `area` get the box area w*h (COCOeval
  needs both). The caller's dicts are never modified; both libraries mutate what they are given, so they
  get deep copies.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("pycocotools", "faster-coco-eval")

# Order of COCOeval.stats for bbox evaluation (both libraries; faster-coco-eval appends AR50/AR75).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

PR_IOU = 0.5


class DetectionInputError(ValueError):
    """Ground truth or detections that COCOeval cannot evaluate; the message names the offending entry."""


@dataclass
class MapResult:
    """One evaluation: the flat metrics of `coco_map` and the PR curves of `pr_curves`."""

    metrics: dict[str, Any]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- input


def _load_json(source: str | Path, what: str) -> Any:
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DetectionInputError(f"{what} file {path} is not valid JSON: {err}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_bbox(bbox: Any, where: str) -> list[float]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise DetectionInputError(f"{where}: bbox must be 4 numbers [x, y, width, height], got {bbox!r}")
    box = [float(v) for v in bbox]
    if not all(math.isfinite(v) for v in box):
        raise DetectionInputError(f"{where}: bbox has a non-finite value: {bbox!r}")
    if box[2] < 0 or box[3] < 0:
        raise DetectionInputError(f"{where}: bbox width and height must be >= 0, got {bbox!r}")
    return box


def _describe(entry: dict) -> str:
    keys = ("id", "image_id", "category_id")
    return ", ".join(f"{k}={entry[k]!r}" for k in keys if k in entry)


def prepare_gt(gt: dict | str | Path) -> dict:
    """A validated deep copy of a COCO ground-truth dict (or JSON file), with iscrowd/area filled in."""
    source = gt if isinstance(gt, dict) else _load_json(gt, "ground truth")
    if not isinstance(source, dict):
        raise DetectionInputError(f"ground truth must be a COCO dict, got {type(source).__name__}")
    for key in ("images", "categories", "annotations"):
        if not isinstance(source.get(key), list):
            raise DetectionInputError(f"ground truth has no '{key}' list")
    data = copy.deepcopy(source)
    image_ids: set = set()
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            raise DetectionInputError(f"ground truth images[{i}]: needs an integer 'id', got {image!r}")
        if image["id"] in image_ids:
            raise DetectionInputError(f"ground truth images[{i}]: duplicate image id {image['id']}")
        image_ids.add(image["id"])
    cat_ids: set = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise DetectionInputError(f"ground truth categories[{i}]: needs an integer 'id' and a 'name', got {cat!r}")
        if cat["id"] in cat_ids:
            raise DetectionInputError(f"ground truth categories[{i}]: duplicate category id {cat['id']}")
        cat_ids.add(cat["id"])
    ann_ids: set = set()
    for i, ann in enumerate(data["annotations"]):
        where = f"ground truth annotations[{i}]"
        if not isinstance(ann, dict):
            raise DetectionInputError(f"{where}: must be a dict, got {ann!r}")
        where = f"{where} ({_describe(ann)})"
        if not _is_int(ann.get("id")):
            raise DetectionInputError(f"{where}: needs an integer 'id'")
        if ann["id"] in ann_ids:
            raise DetectionInputError(f"{where}: duplicate annotation id {ann['id']}")
        ann_ids.add(ann["id"])
        if ann.get("image_id") not in image_ids:
            raise DetectionInputError(f"{where}: image_id {ann.get('image_id')!r} is not in the ground truth images")
        if ann.get("category_id") not in cat_ids:
            raise DetectionInputError(f"{where}: category_id {ann.get('category_id')!r} is not a ground truth category")
        box = _check_bbox(ann.get("bbox"), where)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = box[2] * box[3]
    return data


def prepare_detections(detections: list[dict] | str | Path, gt: dict) -> list[dict]:
    """Validated copies of COCO result entries {image_id, category_id, bbox, score} against `gt`.

    A JSON file may hold the list itself or a dict with an "annotations" list."""
    source = detections
    if isinstance(detections, (str, Path)):
        source = _load_json(detections, "detections")
        if isinstance(source, dict) and isinstance(source.get("annotations"), list):
            source = source["annotations"]
    if not isinstance(source, list):
        raise DetectionInputError(f"detections must be a list of dicts, got {type(source).__name__}")
    image_ids = {image["id"] for image in gt["images"]}
    cat_ids = {cat["id"] for cat in gt["categories"]}
    out = []
    for i, det in enumerate(source):
        if not isinstance(det, dict):
            raise DetectionInputError(f"detections[{i}]: must be a dict, got {det!r}")
        where = f"detections[{i}] ({_describe(det)})"
        if det.get("image_id") not in image_ids:
            raise DetectionInputError(f"{where}: image_id {det.get('image_id')!r} is not in the ground truth images")
        if det.get("category_id") not in cat_ids:
            raise DetectionInputError(f"{where}: category_id {det.get('category_id')!r} is not a ground truth category")
        box = _check_bbox(det.get("bbox"), where)
        score = det.get("score")
        if not _is_number(score) or not math.isfinite(float(score)):
            raise DetectionInputError(f"{where}: needs a finite numeric 'score', got {score!r}")
        out.append({"image_id": det["image_id"], "category_id": det["category_id"], "bbox": box, "score": float(score)})
    return out


# ------------------------------------------------------------------------------------------ backends


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover - both are project dependencies
        return "unknown"


def _detections_dataset(gt: dict, dets: list[dict]) -> dict:
    """What COCO.loadRes builds for box results, built here so an empty result list works in both libraries."""
    anns = []
    for index, det in enumerate(dets):
        x, y, w, h = det["bbox"]
        anns.append({**det, "area": w * h, "id": index + 1, "iscrowd": 0,
                     "segmentation": [[x, y, x, y + h, x + w, y + h, x + w, y]]})
    return {"images": copy.deepcopy(gt["images"]), "categories": copy.deepcopy(gt["categories"]), "annotations": anns}


def _run_pycocotools(gt: dict, dets: list[dict]):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = _detections_dataset(gt, dets)
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return evaluator, summary.getvalue(), f"pycocotools COCOeval {_version('pycocotools')}"


def _run_faster(gt: dict, dets: list[dict]):
    from faster_coco_eval import COCO, COCOeval_faster

    lines: list[str] = []
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        coco_gt = COCO(gt, print_function=lambda *a: None)
        coco_dt = COCO(_detections_dataset(gt, dets), print_function=lambda *a: None)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *a: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.print_function = lambda *a: lines.append(" ".join(str(x) for x in a))
        evaluator.summarize()
    summary = "\n".join(lines) + ("\n" if lines else "")
    return evaluator, summary, f"faster-coco-eval COCOeval_faster {_version('faster-coco-eval')}"


# ------------------------------------------------------------------------------------------- results


def metric_key(name: str) -> str:
    """A category name as it appears in metric keys: letters, digits, '-' and '_' kept, others '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name.strip()) or "_"


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else None


def _from_stat(value: float) -> float | None:
    value = float(value)
    return None if value <= -1 or not math.isfinite(value) else value


def _category_keys(categories: list[dict]) -> dict[int, str]:
    keys: dict[int, str] = {}
    used: set[str] = set()
    for cat in sorted(categories, key=lambda c: c["id"]):
        key = metric_key(cat["name"])
        if key in used:
            key = f"{key}_{cat['id']}"
        used.add(key)
        keys[cat["id"]] = key
    return keys


def evaluate(gt: dict | str | Path, detections: list[dict] | str | Path, backend: str = "pycocotools") -> MapResult:
    """Run one COCO bbox evaluation; `coco_map` and `pr_curves` are views of its result."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown mAP backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    gt_data = prepare_gt(gt)
    dets = prepare_detections(detections, gt_data)
    runner = _run_pycocotools if backend == "pycocotools" else _run_faster
    evaluator, summary, backend_name = runner(gt_data, dets)

    params = evaluator.params
    precision = np.asarray(evaluator.eval["precision"])  # [T iou, R recall, K cat, A area, M maxDets]
    recall = np.asarray(evaluator.eval["recall"])  # [T, K, A, M]
    stats = np.asarray(evaluator.stats)
    metrics: dict[str, Any] = {name: _from_stat(stats[i]) for i, name in enumerate(STAT_NAMES)}

    iou_thrs = np.asarray(params.iouThrs)
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    t75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
    area_all = list(params.areaRngLbl).index("all")
    max_det = len(params.maxDets) - 1  # 100
    cat_index = {cat_id: k for k, cat_id in enumerate(params.catIds)}
    keys = _category_keys(gt_data["categories"])
    names = {cat["id"]: cat["name"] for cat in gt_data["categories"]}
    gt_counts = {cat_id: 0 for cat_id in keys}
    for ann in gt_data["annotations"]:
        if not ann.get("iscrowd"):
            gt_counts[ann["category_id"]] += 1

    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rec_grid = np.asarray(params.recThrs, dtype=np.float64)
    for cat_id, key in keys.items():
        k = cat_index[cat_id]
        p = precision[:, :, k, area_all, max_det]
        metrics[f"AP_{key}"] = _mean_valid(p)
        metrics[f"AP50_{key}"] = _mean_valid(p[t50])
        metrics[f"AP75_{key}"] = _mean_valid(p[t75])
        metrics[f"AR100_{key}"] = _mean_valid(recall[:, k, area_all, max_det])
        metrics[f"gt_{key}"] = gt_counts[cat_id]
        curve = p[t50].astype(np.float64)
        if np.any(curve > -1):
            curves[names[cat_id]] = (rec_grid.copy(), np.where(curve > -1, curve, np.nan))

    metrics.update({
        "backend": backend_name,
        "images": len(gt_data["images"]),
        "detections": len(dets),
        "gt_boxes": sum(gt_counts.values()),
        "summary": summary,
    })
    return MapResult(metrics=metrics, curves=curves)


def coco_map(gt: dict | str | Path, detections: list[dict] | str | Path, backend: str = "pycocotools") -> dict:
    """Flat COCO bbox metrics.

    Keys: AP AP50 AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl (COCOeval.stats, maxDets 100 for the AP and
    area entries); per category `AP_<name>` (mean over IoU .50:.95), `AP50_<name>`, `AP75_<name>`,
    `AR100_<name>` (from the precision/recall arrays, area "all", maxDets 100) and `gt_<name>` (non-crowd
    GT boxes); `backend` ("pycocotools COCOeval 2.0.11"), `images`, `detections`, `gt_boxes` (counts), and
    `summary` (COCOeval's printed summary, as text). Numbers COCOeval leaves at -1 are None.
    """
    return evaluate(gt, detections, backend).metrics


def pr_curves(
    gt: dict | str | Path, detections: list[dict] | str | Path, backend: str = "pycocotools"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per category name: (recall grid 0..1 in 101 steps, interpolated precision at IoU 0.5, area all,
    maxDets 100). Precision is 0 beyond the highest recall reached. Categories with no GT are left out."""
    return evaluate(gt, detections, backend).curves
