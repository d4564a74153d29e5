"""The restoration track's mosaic detector: mosaic_coco, mosaic_detector_checkpoint, mosaic_detection_report.
Same contract as `lineage.py`: paths in, files out, a StageOutput back.

Why a trained detector: `aubergine restore --regions mosaic` must find mosaics that are already in a video, and
the grid heuristic (inference/mosaic_detect.py) misses soft or small ones. The lineage knows where every mosaic
it drew is, so it trains the detection track's torchvision detector on them (assets/mosaic_coco.py) and
measures it against the heuristic with COCO mAP on the val clips, and by the scenes a whole-video pass finds.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from assets.atomic import atomic_dir, write_json
from orchestration import tracking
from orchestration.config import Params
from orchestration.detection_stages import coco_hash, detection_eval_data, evaluate_detector, train_detector_stage
from orchestration.lineage import encoder
from orchestration.stage_io import (
    RAW_CLIPS, REGION_TRACKS, RESTORATION_DATASET, StageInputError, StageOutput, batch_failures, clip_index, hash_files,
    read_json,
)

MOSAIC_COCO = Path("data/datasets/mosaic_coco")
MOSAIC_DETECTOR = Path("data/models/mosaic_detector")
MOSAIC_DETECTION_REPORT = Path("data/reports/mosaic_detection")
MOSAIC_COCO_METRICS = Path("data/metrics/mosaic_coco.json")
MOSAIC_DETECTOR_METRICS = Path("data/metrics/mosaic_detector.json")
MOSAIC_DETECTION_METRICS = Path("data/metrics/mosaic_detection.json")
REGISTERED_MOSAIC_DETECTOR = "mosaic-detector"


def mosaic_clip_entry(record: dict, split: str, out_root: Path, mosaic, data, mask_shape: str, seed: int, enc) -> dict:
    from assets.mosaic_coco import build_clip

    result = build_clip(record, split, out_root, mosaic, data, mask_shape, seed, enc)
    return {"split": result.split, "scenes": result.scenes, "frames": result.frames, "video": result.video,
            "images": [asdict(im) for im in result.images]}


def _splits() -> dict[str, str]:
    """clip id -> split, exactly as restoration_dataset made it (so val is what Stage 1 never saw)."""
    index = read_json(RESTORATION_DATASET / "index.json", "restoration_dataset")
    return {row["clip_id"]: row["split"] for row in index["scenes"]}


def run_mosaic_coco(params: Params) -> StageOutput:
    from assets import contact_sheet
    from assets.batch import map_clips
    from assets.mosaic_coco import MosaicImage, coco_document
    from assets.region_tracks import load_clip_tracks
    from assets.synthetic_scenes import is_synthetic

    tracks_index = read_json(REGION_TRACKS / "index.json", "region_tracks")
    splits = _splits()
    # The synthetic scenes are there for the restorer; here they would multiply the detector's frames (and its
    # report's whole-video passes) for a kind of content the detector does not need more of.
    clip_ids = [c["clip_id"] for c in tracks_index["clips"] if c["status"] == "ok" and not is_synthetic(c["clip_id"])]
    data = params.mosaic_detector.data
    with atomic_dir(MOSAIC_COCO) as tmp:
        jobs = [(cid, (load_clip_tracks(REGION_TRACKS, cid), splits.get(cid, "train"), tmp, params.mosaic, data,
                       params.tracking.mask_shape, params.seed, encoder(params)))
                for cid in clip_ids]
        index = clip_index(map_clips(mosaic_clip_entry, jobs, params.data.workers, "mosaic_coco"))
        failures = batch_failures(index)
        images = {"train": [], "val": []}
        for clip in index["clips"]:
            if clip["status"] == "ok":
                images[clip["split"]].extend(MosaicImage(**im) for im in clip.pop("images"))
        for split, ims in images.items():
            write_json(tmp / f"{split}.json", coco_document(ims))
        write_json(tmp / "index.json", index)
        sheet = _examples(tmp, images)
        if sheet is not None:
            contact_sheet.save_png(sheet, tmp / "examples.png")
    counts = {f"{split}_{what}": n for split, ims in images.items()
              for what, n in (("images", len(ims)), ("boxes", sum(len(i.boxes) for i in ims)))}
    counts.update({f"{split}_{source}_images": sum(i.source == source for i in ims)
                   for split, ims in images.items() for source in ("lineage", "pasted", "clean")})
    counts["val_videos"] = sum(1 for c in index["clips"] if c.get("video"))
    if not counts["train_boxes"]:
        raise StageInputError("mosaic_coco: no mosaic on any training image (no scenes and nothing pasted: see "
                              "mosaic_detector.data)")
    write_json(MOSAIC_COCO_METRICS, counts)
    shown = {"examples (mosaic boxes)": MOSAIC_COCO / "examples.png"} if (MOSAIC_COCO / "examples.png").is_file() else {}
    return StageOutput(
        metadata={**counts, **failures}, images=shown, files=[MOSAIC_COCO / "index.json", MOSAIC_COCO_METRICS],
        input_hash=hash_files(RAW_CLIPS / "manifest.json", REGION_TRACKS / "index.json", RESTORATION_DATASET / "index.json"),
    )


def _examples(root: Path, images: dict, per_source: int = 3):
    import numpy as np
    from PIL import Image, ImageDraw

    from assets import contact_sheet

    rows: dict[str, list] = {}
    for split, ims in images.items():
        for im in ims:
            row = rows.setdefault(f"{split} {im.source}", [])
            if len(row) >= per_source:
                continue
            picture = Image.open(root / im.file_name).convert("RGB")
            draw = ImageDraw.Draw(picture)
            for x, y, w, h in im.boxes:
                draw.rectangle([x, y, x + w, y + h], outline=(255, 220, 0), width=2)
            row.append(np.asarray(picture))
    rows = {k: v for k, v in rows.items() if v}
    return contact_sheet.grid(rows, "mosaic_coco: the lineage's mosaics, pasted ones, clean frames") if rows else None


def mosaic_coco_hash() -> str:
    return coco_hash(MOSAIC_COCO, "mosaic_coco")


def run_mosaic_detector(params: Params) -> StageOutput:
    from assets.mosaic_coco import CATEGORY_IDS

    return train_detector_stage(params.mosaic_detector, params.seed, MOSAIC_COCO, mosaic_coco_hash(), MOSAIC_DETECTOR,
                                MOSAIC_DETECTOR_METRICS, "mosaic_detector", categories=CATEGORY_IDS)


def mosaic_eval_data() -> tuple[str, str]:
    """(split, hash) of what the mosaic detector's numbers are measured on: val unless it holds no mosaic."""
    return detection_eval_data(MOSAIC_COCO, needs="annotations")


def _video_recall(params: Params, detectors: dict) -> list[dict]:
    """Per val video and detector: the lineage's scenes that a whole-video pass (restore's own find_scenes) finds."""
    from assets.region_tracks import load_clip_tracks
    from assets.video import probe_video
    from assets.detect import CombinedDetector
    from evaluation.mosaic_detection_eval import scene_recall
    from inference.restore_video import find_scenes, for_mosaic_regions

    index = json.loads((MOSAIC_COCO / "index.json").read_text())
    params = for_mosaic_regions(params)
    rows = []
    for clip in index["clips"]:
        if clip["status"] != "ok" or not clip.get("video"):
            continue
        path = MOSAIC_COCO / clip["video"]
        probe = probe_video(path)
        lineage = load_clip_tracks(REGION_TRACKS, clip["clip_id"])["scenes"]
        for name, detector in detectors.items():
            scenes = find_scenes(path, CombinedDetector([detector]), params, params.restore.max_clip_length, probe.fps,
                                 probe.width, probe.height, probe.frames, progress=False)[0]
            recall = scene_recall(lineage, scenes)
            rows.append({"clip": clip["clip_id"], "detector": name, "lineage_scenes": recall["scenes"],
                         "scenes_found": recall["found"], "scene_recall": recall["recall"], "restore_scenes": len(scenes)})
    return rows


def run_mosaic_detection_report(params: Params) -> StageOutput:
    import numpy as np
    from PIL import Image

    from evaluation.detection_map import evaluate
    from evaluation.mosaic_detection_eval import region_detections
    from evaluation.report import pr_curve_figure, write_report
    from inference.mosaic_detect import GridMosaicDetector
    from training.detector import DetectorRegions, load_detector
    from training.detector_loop import draw_detections

    source = MOSAIC_DETECTOR / "detector.pth"
    if not source.is_file():
        raise StageInputError(f"{source}: missing; materialize `mosaic_detector_checkpoint` first")
    mosaic_coco_hash()
    model, meta = load_detector(source, device="cpu")
    split, eval_hash = mosaic_eval_data()
    gt = json.loads((MOSAIC_COCO / f"{split}.json").read_text())
    result, detections = evaluate_detector(model, split, MOSAIC_COCO)
    grid = GridMosaicDetector()
    grid_detections = region_detections(grid, gt, MOSAIC_COCO)
    grid_result = evaluate(gt, grid_detections)
    flat = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    flat.update({f"grid_{k}": v for k, v in grid_result.metrics.items()
                 if k in ("AP", "AP50", "AP75", "AR100") and isinstance(v, (int, float))})
    if flat.get("AP50") is not None and flat.get("grid_AP50") is not None:
        flat["AP50_gain_over_grid"] = flat["AP50"] - flat["grid_AP50"]
    flat["evaluated_on_val"] = int(split == "val")
    threshold = params.mosaic_detector.score_threshold
    videos = _video_recall(params, {"trained": DetectorRegions(model, threshold, ("mosaic",)), "grid": grid})
    for name in ("trained", "grid"):
        mine = [r for r in videos if r["detector"] == name]
        total = sum(r["lineage_scenes"] for r in mine)
        prefix = "" if name == "trained" else "grid_"
        flat[f"{prefix}video_scene_recall"] = sum(r["scenes_found"] for r in mine) / total if total else None
    flat["val_videos"] = len({r["clip"] for r in videos})
    tracking.set_tags({tracking.EVAL_DATA_TAG: eval_hash})

    by_image: dict[int, dict[str, list]] = {}
    for who, dets in (("trained", detections), ("grid", grid_detections)):
        for d in dets:
            if who == "grid" or d["score"] >= threshold:
                by_image.setdefault(d["image_id"], {}).setdefault(who, []).append({**d, "category": "mosaic"})
    rows: dict[str, list] = {"trained": [], "grid": []}
    gt_by_image: dict[int, list] = {}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        gt_by_image.setdefault(a["image_id"], []).append(("mosaic", [x, y, x + w, y + h]))
    for im in [i for i in gt["images"] if i["id"] in gt_by_image][:6]:
        picture = np.asarray(Image.open(MOSAIC_COCO / im["file_name"]).convert("RGB"))
        for who in rows:
            rows[who].append(np.asarray(draw_detections(picture, by_image.get(im["id"], {}).get(who, []), gt_by_image[im["id"]])))
    embedded = params.mosaic_detector.pretrained_backbone is None
    with atomic_dir(MOSAIC_DETECTION_REPORT) as tmp:
        curves = {f"trained: {k}": v for k, v in result.curves.items()} | {f"grid: {k}": v for k, v in grid_result.curves.items()}
        figures = {"Precision-recall at IoU 0.5": pr_curve_figure(curves, tmp / "_pr.png")} if curves else {}
        write_report(
            tmp, title=f"Mosaic detection: the trained detector vs the grid heuristic (COCO mAP on the {split} split)",
            metrics=flat, tables={"Whole-video pass over each val clip's LQ video (restore's find_scenes)": videos},
            grids=[(f"{split}: trained (score >= {threshold}) | grid heuristic; GT in thin white", rows)] if rows["trained"] else [],
            figures=figures,
            notes=[f"Trained detector: {source} ({meta.get('arch')}, {_init_label()}); grid: inference/mosaic_detect.py. "
                   f"{len(gt['images'])} {split} images: the lineage's own mosaics over whole frames of clips Stage 1 "
                   "never saw, and clean frames (assets/mosaic_coco.py).",
                   "A lineage scene counts as found when the scenes of a whole-video pass cover 80 % of its frames with "
                   "a region of IoU >= 0.3 (evaluation/mosaic_detection_eval.py); `aubergine restore --regions mosaic` "
                   "restores exactly those scenes."],
            embedded_default=embedded,
        )
        (tmp / "_pr.png").unlink(missing_ok=True)
        write_json(tmp / "detections.json", {"trained": detections, "grid": grid_detections})
    write_json(MOSAIC_DETECTION_METRICS, flat)
    tracking.log_dir(MOSAIC_DETECTION_REPORT, "report")
    registration = tracking.register_pytorch_model(
        params, model.cpu().eval(), REGISTERED_MOSAIC_DETECTOR, "challenger",
        {"stage": "mosaic_detection_report", "embedded_default": str(embedded),
         **{k: f"{v:.6g}" for k, v in flat.items() if k.startswith(("AP", "grid_AP")) and isinstance(v, (int, float))}},
    )
    images = {f"report/{p.name}": p for p in sorted((MOSAIC_DETECTION_REPORT / "images").glob("*.png"))[:4]}
    return StageOutput(
        metadata={**flat, "registered_model": registration.get("model", "no"), "model_version": registration.get("version", 0),
                  "report": str(MOSAIC_DETECTION_REPORT / "report.html")},
        images=images, files=[MOSAIC_DETECTION_METRICS], input_hash=hash_files(source) + mosaic_coco_hash()[:8],
    )


def _init_label() -> str:
    try:
        return json.loads((MOSAIC_DETECTOR / "train.json").read_text())["labels"]["init"]
    except (OSError, ValueError, KeyError, TypeError):
        return "start unknown"
