"""`aubergine anonymize INPUT -o OUTPUT`: faces and plates of an image, a folder of images or a video made
unrecognisable by the trained anonymizer or a baseline (`inference.anonymize_methods`).

Images: regions from the `detection` section's detectors (or a `<image>.coco.json` sidecar), each region
anonymized with a seed derived from `seed` and its index, written in the output's format.

Videos, two decoding passes as `aubergine restore` does:
1. detect on every frame (`anonymize.video_detection: every_frame`), or on the detection section's keyframes
   with flow between and local looks (`detection`, `assets.sparse_detection`), link detections into tracks (`assets.tracks`), fill a
   track's missed frames by interpolation (privacy first: a face the detector lost for a frame is still
   replaced) and widen each box by `anonymize.box_margin`;
2. anonymize every frame. Temporal consistency: each track has one seed (`track_seed`), so a person keeps
   one replacement face and a plate one fake text; and where a track's box barely moved since the previous
   frame (IoU >= `anonymize.reuse_iou`), the anonymizer starts from the previous output frame's pixels
   there, re-noised to `anonymize.track_strength` (and that share of the denoising steps), instead of from
   noise. Frames are encoded at the input's fps, size and frame count; the audio is carried over.

Beside every output, `<output>.coco.json` lists what was anonymized (boxes, kinds, track ids, seeds, the fake
plate texts); for videos the summary holds the flicker measure (`evaluation.flicker`). Outputs appear
atomically: on any error nothing is left at the output path. One unreadable image in a folder is recorded
in the summary and does not stop the others.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from assets.atomic import atomic_dir, atomic_path, write_json
from assets.sparse_detection import every_frame, sparse_detection
from assets.tracks import associate, fill_gaps, iou
from assets.video import VideoError, probe_video, read_frames
from evaluation.flicker import FlickerMeter
from inference.anonymize_methods import METHODS, AnonymizeError, LoraAnonymizer, Region, anonymize
from inference.media import OUTPUT_SUFFIXES, OutputWriter, check_encoder, mux_audio, output_settings
from inference.restore_video import bar_disabled

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")
COCO_SUFFIX = ".coco.json"
CATEGORIES = [{"id": 1, "name": "face"}, {"id": 2, "name": "plate"}]
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}


@dataclass(frozen=True)
class Options:
    method: str
    device: str
    batch_size: int
    reuse_iou: float
    track_strength: float
    box_margin: float
    seed: int


def track_seed(seed: int, track_id: int, kind: str) -> int:
    """One seed per track, stable across runs and machines (not Python's salted hash)."""
    digest = hashlib.sha256(f"{seed}:{kind}:{track_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def options_from(params, method: str | None = None, device: str | None = None, batch_size: int | None = None) -> Options:
    p = params.anonymize
    method = method or p.method
    if method not in METHODS:
        raise AnonymizeError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    batch_size = int(batch_size or p.batch_size)
    if batch_size < 1:
        raise AnonymizeError(f"--batch-size {batch_size}: must be at least 1")
    return Options(method, device or p.device, batch_size, p.reuse_iou, p.track_strength, p.box_margin, params.seed)


def anonymizer_settings(params) -> dict:
    """LoraAnonymizer's keyword arguments from the `anonymization` section (what training validated with)."""
    a = params.anonymization
    return {"resolution": a.resolution, "context_pad": a.context_pad, "face_steps": a.report.face_steps,
            "plate_steps": a.plate_steps, "plate_text_anchor_strength": a.plate_text_anchor_strength,
            "font_ratio": [a.plate_text_font_ratio_min, a.plate_text_font_ratio_max],
            "prompt_face": a.generator.prompt_face, "prompt_plate": a.generator.prompt_plate,
            "separate_adapters": a.separate_adapters}


def load_lora_anonymizer(params, device: str, lora_dir: str | Path | None = None, base_dir: str | Path | None = None,
                         batch_size: int | None = None) -> LoraAnonymizer:
    """The anonymizer `lora_checkpoint` published (or the given LoRA folder), with the base it was trained on:
    `--base`, else `anonymize.base_dir`, else the `base_dir` its train.json beside the LoRA records."""
    from training.restorer import pick_device

    lora = Path(lora_dir or params.anonymize.lora_dir)
    if not lora.is_dir():
        raise AnonymizeError(f"{lora}: no LoRA folder there; materialize `lora_checkpoint` or pass --lora")
    base = base_dir or params.anonymize.base_dir
    if not base:
        train_json = lora.parent / "train.json"
        if not train_json.is_file():
            raise AnonymizeError(f"{lora}: no train.json beside it saying which base model it adapts; pass --base")
        base = json.loads(train_json.read_text())["base_dir"]
    return LoraAnonymizer(base, lora, **anonymizer_settings(params), device=str(pick_device(device)),
                          batch_size=batch_size or params.anonymize.batch_size)


def _widen(box, margin: float, width: int, height: int) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 widened by `margin` of its size on each side, clipped to the frame, as COCO x, y, w, h."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    x0, y0 = max(0.0, x0 - dx), max(0.0, y0 - dy)
    x1, y1 = min(float(width), x1 + dx), min(float(height), y1 + dy)
    return (x0, y0, x1 - x0, y1 - y0)


def _xyxy(box) -> tuple[float, float, float, float]:
    x, y, w, h = box
    return (x, y, x + w, y + h)


def _coco_doc(images: list[dict], annotations: list[dict], method: str, source: Path) -> dict:
    return {"info": {"description": f"regions anonymized by aubergine ({method})", "source": str(source)},
            "images": images, "annotations": annotations, "categories": CATEGORIES}


def _annotation(ann_id: int, image_id: int, region: Region, track: int | None, method: str, text: str | None) -> dict:
    x, y, w, h = (round(float(v), 2) for v in region.box)
    attributes = {"method": method, "seed": region.seed}
    if track is not None:
        attributes["track_id"] = track
    if text is not None:
        attributes["fake_text"] = text
    return {"id": ann_id, "image_id": image_id, "category_id": CATEGORY_ID[region.kind], "bbox": [x, y, w, h],
            "area": round(w * h, 2), "iscrowd": 0, "attributes": attributes}


def _check_paths(input_path: Path, output_path: Path) -> str:
    """'image' | 'folder' | 'video' from the input; errors name the path and the reason."""
    if not input_path.exists():
        raise AnonymizeError(f"{input_path}: no such file or folder")
    if output_path.resolve() == input_path.resolve():
        raise AnonymizeError(f"{output_path}: the output must not overwrite the input")
    if input_path.is_dir():
        if output_path.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
            raise AnonymizeError(f"{input_path} is a folder: the output {output_path} must be a folder too, not a file")
        return "folder"
    suffix = input_path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        if output_path.suffix.lower() not in IMAGE_SUFFIXES:
            raise AnonymizeError(f"{output_path}: an image's output must be one of {', '.join(IMAGE_SUFFIXES)}")
        return "image"
    if suffix in VIDEO_SUFFIXES:
        if output_path.is_dir() or output_path.suffix.lower() not in OUTPUT_SUFFIXES:
            raise AnonymizeError(f"{output_path}: a video's output must be a file ending in {', '.join(OUTPUT_SUFFIXES)}")
        return "video"
    raise AnonymizeError(f"{input_path}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a video "
                         f"({', '.join(VIDEO_SUFFIXES)})")


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise AnonymizeError(f"{path}: not a readable image ({err})") from None


def _write_image(image: np.ndarray, dest: Path) -> None:
    from PIL import Image

    with atomic_path(dest) as tmp:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions()[dest.suffix.lower()])


def _detector(path: Path, params):
    from assets.detect import build_detector
    from training.detector import trained_regions

    return build_detector(path, params.detection, trained_regions)


def _image_regions(image: np.ndarray, path: Path, params, opts: Options) -> list[Region]:
    h, w = image.shape[:2]
    found = _detector(path, params)(image, 0)
    return [Region(d.kind, _widen(d.box, opts.box_margin, w, h), track_seed(opts.seed, i + 1, d.kind))
            for i, d in enumerate(found) if d.box[2] > d.box[0] and d.box[3] > d.box[1]]


def _anonymize_one_image(src: Path, dest: Path, params, opts: Options, anonymizer, image_id: int, first_ann: int
                         ) -> tuple[dict, list[dict]]:
    image = _read_image(src)
    regions = _image_regions(image, src, params, opts)
    out = anonymize(image, regions, opts.method, anonymizer) if regions else None
    if out is None and src.suffix.lower() == dest.suffix.lower():
        with atomic_path(dest) as tmp:  # nothing to hide: the very file, not a re-encoded copy
            shutil.copyfile(src, tmp)
    else:
        _write_image(out.image if out else image, dest)
    texts = out.fake_texts if out else []
    anns = [_annotation(first_ann + k, image_id, r, None, opts.method, t) for k, (r, t) in enumerate(zip(regions, texts))]
    h, w = image.shape[:2]
    return {"id": image_id, "file_name": dest.name, "width": w, "height": h, "source": str(src)}, anns


def anonymize_images(input_path: Path, output_path: Path, params, opts: Options, anonymizer, kind: str,
                     progress: bool | None) -> dict:
    coco_path = output_path.with_name(output_path.name + COCO_SUFFIX)
    if kind == "image":
        image, anns = _anonymize_one_image(input_path, output_path, params, opts, anonymizer, 1, 1)
        write_json(coco_path, _coco_doc([image], anns, opts.method, input_path))
        return {"images": 1, "regions": len(anns), "failed": [], "coco": str(coco_path), "output": str(output_path)}
    files = sorted(p for p in input_path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AnonymizeError(f"{input_path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    images, annotations, failed = [], [], []
    with atomic_dir(output_path) as tmp:
        for src in tqdm(files, desc=f"anonymize {input_path.name}", unit="image", disable=bar_disabled(progress)):
            try:
                image, anns = _anonymize_one_image(src, tmp / src.name, params, opts, anonymizer, len(images) + 1,
                                                   len(annotations) + 1)
            except AnonymizeError as err:  # one bad image is recorded, the others go on
                failed.append({"file": str(src), "error": str(err)})
                continue
            images.append(image)
            annotations.extend(anns)
        if not images:
            raise AnonymizeError(f"{input_path}: no image could be read: " + "; ".join(f["error"] for f in failed))
    write_json(coco_path, _coco_doc(images, annotations, opts.method, input_path))
    return {"images": len(images), "regions": len(annotations), "failed": failed, "coco": str(coco_path),
            "output": str(output_path)}


@dataclass
class FrameRegion:
    track: int
    region: Region
    reuse: bool  # the box barely moved: start from the previous output frame


def video_regions(path: Path, params, opts: Options, total: int, width: int, height: int,
                  progress: bool | None, stop: int | None = None) -> tuple[dict[int, list[FrameRegion]], int, int]:
    """Pass 1: per frame, the tracked regions to anonymize (of the first `stop` frames when given).
    Returns (regions by frame, detections, frames decoded)."""
    detector = _detector(path, params)
    frames = tqdm(read_frames(path, stop=stop), total=total if stop is None else min(stop, total),
                  desc=f"detect {path.name}", unit="frame", leave=False, disable=bar_disabled(progress))
    detection = params.detection
    if params.anonymize.video_detection == "every_frame":
        detection = every_frame(detection)
    sparse = sparse_detection(detector, detection, params.tracking.max_gap_frames)
    for frame in frames:
        sparse.push(frame)
    detections = sparse.finish()
    tracks = associate(detections, params.tracking.iou_threshold, params.tracking.max_gap_frames + sparse.every - 1)
    by_frame: dict[int, list[FrameRegion]] = {}
    for track in tracks:
        boxes = fill_gaps(track.boxes)
        seed = track_seed(opts.seed, track.id, track.kind)
        previous = None
        for offset, box in enumerate(boxes):
            region = Region(track.kind, _widen(tuple(box), opts.box_margin, width, height), seed)
            reuse = previous is not None and iou(_xyxy(previous.box), _xyxy(region.box)) >= opts.reuse_iou
            by_frame.setdefault(track.start + offset, []).append(FrameRegion(track.id, region, reuse))
            previous = region
    return by_frame, int(sum(len(d) for d in detections)), len(detections)


def _anonymize_frame(frame: np.ndarray, here: list[FrameRegion], previous_out: np.ndarray | None, opts: Options,
                     anonymizer):
    if not here:
        return frame, []
    regions = [fr.region for fr in here]
    if opts.method == "lora":
        starts = [previous_out if (fr.reuse and previous_out is not None) else None for fr in here]
        return anonymizer.paint(frame, regions, starts=starts, strength=opts.track_strength)
    out = anonymize(frame, regions, opts.method)
    return out.image, out.fake_texts


def anonymize_video(input_path: Path, output_path: Path, params, opts: Options, anonymizer, progress: bool | None,
                    max_frames: int | None = None, regions=None, probe=None) -> dict:
    """Both passes; `max_frames` keeps only the first frames (the anonymization report's short samples),
    `regions` (video_regions' result) lets several methods share one detection pass, and `probe` one probe."""
    codec = params.anonymize.codec
    check_encoder(codec)
    probe = probe or probe_video(input_path)  # VideoError names the file and the reason
    width, height = probe.width, probe.height
    if regions is None:
        regions = video_regions(input_path, params, opts, probe.frames, width, height, progress, max_frames)
    by_frame, n_detections, decoded = regions
    tracks = {fr.track for regions in by_frame.values() for fr in regions}
    summary = {"input": str(input_path), "output": str(output_path), "frames": decoded, "fps": probe.fps,
               "size": [width, height], "method": opts.method, "detections": n_detections, "tracks": len(tracks),
               "region_frames": int(sum(len(v) for v in by_frame.values()))}
    coco_path = output_path.with_name(output_path.name + COCO_SUFFIX)
    if not tracks and max_frames is None:
        with atomic_path(output_path) as tmp:
            shutil.copyfile(input_path, tmp)
        write_json(coco_path, _coco_doc([], [], opts.method, input_path))
        summary.update({"copied": True, "audio": "copied" if probe.has_audio else None, "coco": str(coco_path),
                        "message": f"no faces or plates found in {input_path}: copied it unchanged to {output_path}"})
        return summary
    settings = output_settings(codec, params.anonymize.crf, params.anonymize.preset, height, width)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".tmp-anonymize-", dir=output_path.parent)) if probe.has_audio else None
    video_dest = (workdir / f"video{output_path.suffix}") if workdir else output_path
    meter = FlickerMeter()
    images, annotations = [], []
    limit = decoded
    try:
        with OutputWriter(video_dest, probe.fps_fraction, settings) as writer:
            previous_in = previous_out = None
            frames = tqdm(read_frames(input_path, stop=limit), total=limit, desc=f"anonymize {input_path.name}",
                          unit="frame", leave=False, disable=bar_disabled(progress))
            index = -1
            for index, frame in enumerate(frames):
                here = by_frame.get(index, [])
                out, texts = _anonymize_frame(frame, here, previous_out, opts, anonymizer)
                meter.add(frame, out, previous_in, previous_out, [(fr.track, fr.region) for fr in here])
                writer.write(out)
                images.append({"id": index + 1, "file_name": f"{output_path.name}#{index:06d}", "frame_index": index,
                               "width": width, "height": height})
                for fr, text in zip(here, texts):
                    annotations.append(_annotation(len(annotations) + 1, index + 1, fr.region, fr.track, opts.method, text))
                previous_in, previous_out = frame, out
            if index + 1 != limit:
                raise VideoError(f"{input_path}: decoded {index + 1} frames on the second pass, {limit} on the first")
            written = writer.frames
        audio = mux_audio(video_dest, input_path, output_path) if workdir else None
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    write_json(coco_path, _coco_doc(images, annotations, opts.method, input_path))
    summary.update({"copied": False, "frames_written": written, "audio": audio, "codec": codec, "coco": str(coco_path),
                    "flicker": meter.summary(),
                    "message": f"anonymized {len(tracks)} track(s) over {summary['region_frames']} region-frames "
                               f"into {output_path}"})
    return summary


def anonymize_path(input_path: str | Path, output_path: str | Path, params=None, *, method: str | None = None,
                   device: str | None = None, batch_size: int | None = None, lora_dir: str | Path | None = None,
                   base_dir: str | Path | None = None, detector: str | Path | None = None, anonymizer=None,
                   progress: bool | None = None) -> dict:
    """An image, a folder of images or a video; returns a JSON-able summary (`message` says what happened).
    `detector`: a face/plate detector trained by `detector_checkpoint`, used for both kinds instead of the
    `detection` section's choice."""
    from inference.restore_video import _params

    started = time.perf_counter()
    params = _params(params)
    if detector is not None:
        if not Path(detector).is_file():
            raise AnonymizeError(f"{detector}: no detector file there (materialize detector_checkpoint: "
                                 "data/models/detector/detector.pth)")
        detection = params.detection.model_copy(update={"faces": "detector", "plates": "detector",
                                                        "detector_model": str(detector)})
        params = params.model_copy(update={"detection": detection})
    input_path, output_path = Path(input_path), Path(output_path)
    opts = options_from(params, method, device, batch_size)
    kind = _check_paths(input_path, output_path)
    probe = probe_video(input_path) if kind == "video" else None  # a text file named .mp4 is said before any model loads
    if opts.method == "lora" and anonymizer is None:
        anonymizer = load_lora_anonymizer(params, opts.device, lora_dir, base_dir, opts.batch_size)
    if kind == "video":
        summary = anonymize_video(input_path, output_path, params, opts, anonymizer, progress, probe=probe)
    else:
        summary = anonymize_images(input_path, output_path, params, opts, anonymizer, kind, progress)
        if not summary["regions"]:
            summary["message"] = f"no faces or plates found in {input_path}: written unchanged to {output_path}"
        else:
            summary["message"] = f"anonymized {summary['regions']} region(s) in {summary['images']} image(s) into {output_path}"
    summary.update({"kind": kind, "method": opts.method, "seconds": round(time.perf_counter() - started, 3)})
    return summary
