"""The detection track's stages: unified_coco, detector_checkpoint, detection_report.
Same contract as `lineage.py`: paths in, files out, a StageOutput back.

External datasets are read from drop folders under `coco.external_dir` (README: *Real face/plate datasets*):
    wider_face/wider_face_split/wider_face_{train,val}_bbx_gt.txt + wider_face/WIDER_{train,val}/images/
    pp4av/  (images with YOLO txt labels)
    coco/<name>/annotations.json + its images
Each is optional; the embedded default uses clip frames, synthetic plates and the synthetic people's faces.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from assets.atomic import atomic_dir, write_json
from assets.coco_records import Conversion
from orchestration import tracking
from orchestration.config import Params
from orchestration.stage_io import (
    RAW_CLIPS, REGION_TRACKS, StageInputError, StageOutput, fingerprint, hash_files, split_timings, without_timings, write_timings,
)

UNIFIED_COCO = Path("data/datasets/coco")
DETECTOR = Path("data/models/detector")
DETECTION_REPORT = Path("data/reports/detection")
COCO_METRICS = Path("data/metrics/unified_coco.json")
DETECTOR_METRICS = Path("data/metrics/detector.json")
DETECTION_METRICS = Path("data/metrics/detection.json")
WORK = Path(".cache/train")
REGISTERED_DETECTOR = "face-plate-detector"
BACKGROUNDS_PER_CLIP = 4


def _external(params: Params) -> Conversion:
    from assets.coco_sources import read_coco, read_pp4av, read_wider_face

    ext = Path(params.coco.external_dir)
    conv = Conversion()
    for split in ("train", "val"):
        txt = ext / "wider_face" / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
        if txt.is_file():
            conv.extend(read_wider_face(txt, ext / "wider_face" / f"WIDER_{split}" / "images"))
    if (ext / "pp4av").is_dir():
        conv.extend(read_pp4av(ext / "pp4av"))
    for folder in sorted(p for p in (ext / "coco").glob("*") if p.is_dir()):
        if (folder / "annotations.json").is_file():
            conv.extend(read_coco(folder / "annotations.json", folder, name=folder.name))
    return conv


def _backgrounds(manifest: dict, out: Path, cache) -> list[Path]:
    """Frames no track covers, from every usable clip: synthetic plates go on scenes without unlabelled regions;
    a clip's frames come from `cache` when the same frames of the same video were written before."""
    from assets.atomic import atomic_path
    from assets.unified_coco import clean_background_frames
    from assets.video import read_frames
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for clip in (c for c in manifest["clips"] if c["status"] == "ok"):
        record_path = REGION_TRACKS / f"{clip['clip_id']}.json"
        if not record_path.is_file():
            continue
        wanted = set(clean_background_frames(json.loads(record_path.read_text()), BACKGROUNDS_PER_CLIP))
        key = cache.key(["backgrounds", clip["sha256"], clip["clip_id"], sorted(wanted)])
        names = cache.fetch(key, out)
        if names is None:
            names = []
            for index, frame in enumerate(read_frames(clip["path"], stop=clip["frames"])):
                if index in wanted:
                    name = f"{clip['clip_id']}_{index:06d}.png"
                    with atomic_path(out / name) as tmp:
                        Image.fromarray(frame).save(tmp, format="PNG")
                    names.append(name)
                if index >= max(wanted, default=-1):
                    break
            cache.store(key, out, names, names, clip["clip_id"])
        paths += [out / name for name in names]
    return paths


def run_unified_coco(params: Params) -> StageOutput:
    from assets import contact_sheet
    from assets.coco_sources import frames_from_region_tracks
    from assets.content_groups import clip_groups
    from orchestration.stage_io import stage_cache
    from assets.synthetic_faces import render_synthetic_faces
    from assets.synthetic_plates import render_synthetic_plates
    from assets.unified_coco import assemble

    manifest_path = RAW_CLIPS / "manifest.json"
    if not (REGION_TRACKS / "index.json").is_file():
        raise StageInputError(f"{REGION_TRACKS / 'index.json'}: missing; materialize `region_tracks` first")
    manifest = json.loads(manifest_path.read_text())
    c = params.coco
    with atomic_dir(UNIFIED_COCO) as tmp:
        work = tmp / "_work"
        conv = _external(params)
        # Copies of a clip (re-encoded, cropped, edited) share one group, hence one split, as in restoration_dataset.
        groups = clip_groups(REGION_TRACKS, [m["clip_id"] for m in manifest.get("clips", []) if m.get("status") == "ok"])
        # Decoding the clips' frames is the per-clip part of this stage: it is done once per clip and frame choice.
        cache = stage_cache("unified_coco", run_unified_coco)
        cache.sweep()
        conv.extend(frames_from_region_tracks(REGION_TRACKS, manifest, work / "frames", c.frames_every_n, c.max_frames_per_clip,
                                              groups, cache))
        backgrounds = _backgrounds(manifest, work / "backgrounds", cache)
        if backgrounds and c.synthetic_plates.count:
            plates = render_synthetic_plates(backgrounds, work / "plates", c.synthetic_plates, params.seed)
            for record in plates.images:  # one group per source clip, not per frame: a scene never straddles the split
                record.group = "synthetic:" + Path(record.origin).stem.rsplit("_", 1)[0]
            conv.extend(plates)
        people_index = Path(c.synthetic_faces.people_index)
        if backgrounds and c.synthetic_faces.count:
            try:
                conv.extend(render_synthetic_faces(people_index, backgrounds, work / "faces", c.synthetic_faces,
                                                   params.seed, c.val_fraction))
            except ValueError as err:
                raise StageInputError(f"coco.synthetic_faces: {err}") from None
        assembled = assemble(conv, tmp, c.val_fraction)
        shutil.rmtree(work)
        sheet = _example_sheet(tmp)
        if sheet is not None:
            contact_sheet.save_png(sheet, tmp / "examples.png")
    counts = assembled.counts
    if counts["train_images"] == 0:
        raise StageInputError("unified_coco: no training images from any source (see problems.json)")
    write_json(COCO_METRICS, {k: v for k, v in counts.items() if isinstance(v, (int, float))})
    images = {"examples (boxes: face green, plate orange)": UNIFIED_COCO / "examples.png"} if (UNIFIED_COCO / "examples.png").is_file() else {}
    return StageOutput(
        metadata={**counts, "problems_list": "\n".join(str(p) for p in assembled.problems[:30]) or "none"},
        images=images,
        files=[UNIFIED_COCO / "problems.json", COCO_METRICS],
        input_hash=hash_files(manifest_path, REGION_TRACKS / "index.json",
                              *([people_index] if people_index.is_file() else [])),
    )


def _draw_boxes(image, boxes: list[tuple[str, list[float], str]]):
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    colours = {"face": (60, 220, 90), "plate": (255, 150, 30)}
    for category, (x, y, w, h), label in boxes:
        draw.rectangle([x, y, x + w, y + h], outline=colours.get(category, (255, 255, 255)), width=2)
        if label:
            draw.text((x + 2, max(0, y - 11)), label, fill=colours.get(category, (255, 255, 255)))
    return image


def _example_sheet(root: Path, per_source: int = 3):
    import numpy as np
    from PIL import Image

    from assets import contact_sheet

    names = {1: "face", 2: "plate"}
    rows: dict[str, list] = {}
    for split in ("train", "val"):
        path = root / f"{split}.json"
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        anns: dict[int, list] = {}
        for a in doc["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        for im in doc["images"]:
            row = rows.setdefault(im["source"], [])
            if len(row) >= per_source or im["id"] not in anns:
                continue
            image = Image.open(root / im["file_name"]).convert("RGB")
            boxes = [(names[a["category_id"]], a["bbox"], (a.get("attributes") or {}).get("text", "")) for a in anns[im["id"]]]
            row.append(np.asarray(_draw_boxes(image, boxes)))
    rows = {k: v for k, v in rows.items() if v}
    return contact_sheet.grid(rows, "unified_coco: examples per source") if rows else None




def coco_hash(root: Path = UNIFIED_COCO, stage: str = "unified_coco") -> str:
    """The identity of a COCO set (the unified one, or the mosaic one) that both splits' files make; a
    StageInputError naming the stage to materialize when it is missing."""
    for split in ("train", "val"):
        if not (root / f"{split}.json").is_file():
            raise StageInputError(f"{root / f'{split}.json'}: missing; materialize `{stage}` first")
    return hash_files(root / "train.json", root / "val.json")


def run_detector(params: Params) -> StageOutput:
    return train_detector_stage(params.detector, params.seed, UNIFIED_COCO, coco_hash(), DETECTOR, DETECTOR_METRICS, "detector")


def train_detector_stage(d, seed: int, coco_root: Path, data_hash: str, dest: Path, metrics_path: Path, name: str,
                         categories: dict[str, int] | None = None) -> StageOutput:
    """Train the detector that `d` (a `DetectorParams`) describes on `coco_root`'s train.json and publish it in
    `dest` (detector.pth, history, train.json, curves, last sample): the face/plate detector and the mosaic
    detector (`categories`, one class) are the same code."""
    from training.detector_loop import settings_from_params, train_detector
    from training.loop import run_rate, write_curves

    recipe = {k: v for k, v in d.model_dump().items()
              if k not in ("max_iters", "log_interval", "checkpoint_interval", "device", "amp", "score_threshold", "data")}
    if d.init_from:  # a re-made base (same path, new weights) is a new run
        if not Path(d.init_from).is_file():
            raise StageInputError(f"{d.init_from}: {name}.init_from is missing; `make setup` pretrains the embedded "
                                  f"default's base detector, or set {name}.init_from to null")
        recipe["init_file"] = hash_files(Path(d.init_from))
    extra = {} if categories is None else {"categories": dict(categories), "num_classes": max(categories.values()) + 1}
    run_key = fingerprint(name, recipe, seed, data_hash, *([extra] if extra else []))
    settings = settings_from_params(d, coco_root / "train.json", coco_root, WORK / name / run_key, run_key,
                                    val_json=coco_root / "val.json", val_images=coco_root, seed=seed, **extra)

    def on_log(metrics: dict, step: int) -> None:
        tracking.log_step({f"{name}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step)

    def on_sample(path: Path, step: int) -> None:
        tracking.log_image(path, f"samples/{name}")

    result = train_detector(settings, on_log, on_sample)
    from training import distributed as dist

    if not dist.current().main:  # under a launcher only rank 0 publishes
        return StageOutput()
    from training.detector import load_detector, save_detector

    model, meta = load_detector(result.checkpoint)
    last = result.history[-1] if result.history else {}
    window = {k: v for k, v in last.items() if isinstance(v, (int, float)) and k != "iteration"}
    window["images_per_s_last_window"] = window.pop("images_per_s", math.nan)
    done = result.iterations - result.resumed_from
    # The run's averages; the last logging window's figure keeps its own name.
    summary = {"iterations": result.iterations, "resumed_from": result.resumed_from,
               "train_seconds": round(result.seconds, 2), **window,
               "iters_per_s": run_rate(done, result.seconds), "images_per_s": run_rate(done * d.batch_size * result.processes, result.seconds),
               "processes": result.processes}
    kept, timings = split_timings(summary)
    images = {}
    with atomic_dir(dest) as tmp:
        save_detector(model, tmp / "detector.pth", meta={**meta, "fingerprint": run_key})
        write_json(tmp / "history.json", without_timings(result.history))
        write_json(tmp / "train.json", {**kept, "labels": result.labels, "config": d.model_dump(), "device": result.device})
        if result.history and any(k.startswith("loss") for k in result.history[0]):
            write_curves(result.history, tmp / "curves.png", f"{name.replace('_', ' ').capitalize()} ({d.arch})")
        if result.samples:
            shutil.copyfile(result.samples[-1], tmp / "sample_last.png")
    for file, label in (("curves.png", "loss curves"), ("sample_last.png", "detections on val (last sample)")):
        if (dest / file).is_file():
            images[label] = dest / file
    write_json(metrics_path, kept)
    write_timings(metrics_path.stem, timings, result.history)
    return StageOutput(
        metadata={**summary, "arch": d.arch, "init": result.labels.get("init", ""), "device": result.device},
        images=images, files=[dest / "train.json", dest / "history.json", metrics_path], input_hash=data_hash,
    )


def _init_label() -> str:
    """What `detector_checkpoint` started from (random, an ImageNet backbone, or the set-up-pretrained base)."""
    try:
        return json.loads((DETECTOR / "train.json").read_text())["labels"]["init"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown (no data/models/detector/train.json)"


def detection_split(root: Path = UNIFIED_COCO, needs: str = "images") -> str:
    """val, unless val has no `needs` (images; for the mosaic set, annotations): every source fell in one group
    (e.g. a single clip) and nothing is held out."""
    return "val" if json.loads((root / "val.json").read_text())[needs] else "train"


def detection_eval_data(root: Path = UNIFIED_COCO, needs: str = "images") -> tuple[str, str]:
    """(split, hash) of what a detector's numbers are measured on: that split's COCO file and its images."""
    split = detection_split(root, needs)
    doc = json.loads((root / f"{split}.json").read_text())
    return split, fingerprint(split, hash_files(root / f"{split}.json", *(root / im["file_name"] for im in doc["images"])))


def evaluate_detector(model, split: str, root: Path = UNIFIED_COCO):
    """(COCO evaluation, detections) of `model` on `root`'s `split`: the reports' figures and the champion
    re-scores', for the face/plate detector and the mosaic detector alike."""
    from evaluation.detection_map import evaluate
    from training.detector import evaluate_coco

    gt = json.loads((root / f"{split}.json").read_text())
    detections = evaluate_coco(model, root / f"{split}.json", root, score_threshold=0.0)
    return evaluate(gt, detections), detections


def run_detection_report(params: Params) -> StageOutput:
    import numpy as np
    from PIL import Image

    from evaluation.report import pr_curve_figure, write_report
    from training.detector import load_detector
    from training.detector_loop import draw_detections
    from training.restorer import pick_device

    source = DETECTOR / "detector.pth"
    if not source.is_file():
        raise StageInputError(f"{source}: missing; materialize `detector_checkpoint` first")
    data_hash = coco_hash()
    model, meta = load_detector(source, device=pick_device(params.detector.device))
    split, eval_hash = detection_eval_data()
    gt = json.loads((UNIFIED_COCO / f"{split}.json").read_text())
    if not gt["images"]:
        raise StageInputError(f"{UNIFIED_COCO}: no images in either split; nothing to evaluate")
    result, detections = evaluate_detector(model, split)
    tracking.set_tags({tracking.EVAL_DATA_TAG: eval_hash})
    flat = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    flat["evaluated_on_val"] = int(split == "val")
    embedded = params.detector.pretrained_backbone is None
    by_image: dict[int, list] = {}
    for det in detections:
        if det["score"] >= params.detector.score_threshold:
            by_image.setdefault(det["image_id"], []).append(det)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    examples = []
    for im in gt["images"][:8]:
        image = Image.open(UNIFIED_COCO / im["file_name"]).convert("RGB")
        dets = [{**d, "category": names[d["category_id"]]} for d in by_image.get(im["id"], [])]
        examples.append(np.asarray(draw_detections(np.asarray(image), dets)))
    with atomic_dir(DETECTION_REPORT) as tmp:
        figures = {}
        if result.curves:
            figures["Precision-recall at IoU 0.5"] = pr_curve_figure(result.curves, tmp / "_pr.png")
        per_category = [{"category": n, **{m: result.metrics.get(f"{m}_{n}") for m in ("AP", "AP50", "AP75", "AR100", "gt")}}
                        for n in names.values()]
        write_report(
            tmp, title=f"Detection report: faces and plates (COCO mAP on the {split} split)", metrics=flat,
            tables={"Per category": per_category}, grids=[(f"{split} detections (score ≥ threshold)", {split: examples})],
            figures=figures,
            notes=[f"Detector: {source} ({meta.get('arch')}); evaluated with {result.metrics.get('backend')} on "
                   f"{len(gt['images'])} {split} images; AP is COCO's mean over IoU 0.50:0.95, AP50 at IoU 0.5.",
                   f"Start of its training: {_init_label()}."]
            + ([] if split == "val" else ["The val split is empty (every source fell in one group), so these numbers "
                                          "are on the TRAIN split and say nothing about generalisation."]),
            embedded_default=embedded,
        )
        (tmp / "_pr.png").unlink(missing_ok=True)
        write_json(tmp / "detections.json", detections)
    write_json(DETECTION_METRICS, flat)
    tracking.log_dir(DETECTION_REPORT, "report")
    registration = tracking.register_pytorch_model(
        params, model.cpu().eval(), REGISTERED_DETECTOR, "challenger",
        {"stage": "detection_report", "embedded_default": str(embedded), **{k: f"{v:.6g}" for k, v in flat.items() if k.startswith("AP")}},
    )
    images = {f"report/{p.name}": p for p in sorted((DETECTION_REPORT / "images").glob("*.png"))[:4]}
    return StageOutput(
        metadata={**flat, "registered_model": registration.get("model", "no"), "model_version": registration.get("version", 0),
                  "report": str(DETECTION_REPORT / "report.html")},
        images=images, files=[DETECTION_METRICS], input_hash=hash_files(source) + data_hash[:8],
    )
