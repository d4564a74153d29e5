"""Whole-video restoration: `aubergine restore INPUT -o OUTPUT --checkpoint PATH`.

1. Regions per frame: `regions=detect` uses the `detection` section's face/plate detectors (or a
   `<clip>.coco.json` sidecar), `regions=mosaic` finds already-pixelated areas with the mosaic detector the
   lineage trained (`restore.mosaic_detector: model`), the grid heuristic (`grid`), the better of the two
   as the mosaic detection report measured them (`auto`), or the sidecar's boxes. Frames are decoded in a
   thread ahead of detection (`detector_queue_size`) and detected `detection_batch_size` at a time.
2. Detections are linked into tracks and filtered exactly as the lineage does (`assets.tracks`, the
   `tracking` section: a track detected on fewer than `min_track_detections` frames or with a mean score
   under `min_track_score` is a false positive, dropped and counted in the summary's `tracks_dropped`, so a
   one-frame hit does not flash), then cut into scenes of at most `max_clip_length` frames; a kept track of
   any length is restored.
3. Each scene is cut out Lada-style (crop + centred pad to the scene shape). With `regions=detect` the
   training mosaic (same block-size rule and modes as `mosaic_lq`) is drawn over the region first, so
   the model sees what it was trained on. The Restorer scales/pads the crops to its square input and
   back.
4. The restored crops are blended into the full frames with a feathered region mask (`blend_feather`);
   scenes that overlap on a frame are applied in order of their start. Frames are written as soon as
   every scene covering them is restored, so memory holds about one `max_clip_length` of frames.
5. Encoding with the chosen codec (checked to work here first), same fps, frame count and size; the
   input's audio is copied over (re-encoded to AAC only when the container refuses it). The output
   appears atomically; on any error nothing is left at the output path.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
from tqdm import tqdm

from assets.atomic import atomic_path
from assets.detect import CombinedDetector, SidecarCoco, build_detector
from assets.mosaic import apply_mosaic, sample_spec, scene_rng
from assets.region_tracks import full_frame_mask, scenes_by_frame
from assets.sparse_detection import every_frame, on_every_frame, sparse_detection
from assets.tracks import Scene, associate, build_scenes, cut_and_pad, filter_tracks
from assets.video import VideoError, prefetch, probe_video, read_frames
from inference.blend import blend_into
from inference.media import OUTPUT_SUFFIXES, OutputWriter, check_encoder, mux_audio, output_settings


def bar_disabled(progress: bool | None) -> bool | None:
    """tqdm's `disable`: None = a bar only on a terminal, True/False = always/never a bar."""
    return None if progress is None else not progress


class RestoreError(ValueError):
    """A restore cannot start or finish; the message names the file and the reason."""


def _params(params):
    if params is None:
        from orchestration.config import Params

        return Params()
    return params


def load_restorer(checkpoint: str | Path, size: int | None = None, device: str = "auto", max_frames: int = 30,
                  fp16: bool = False, sha256: str | None = None):
    """`training.restorer.Restorer` from a checkpoint. A file of another architecture fails with a
    CheckpointError that lists the missing and unexpected keys against Lada's BasicVSR++."""
    from training.basicvsrpp import BasicVSRPlusPlusNet
    from training.checkpoints import CheckpointError, generator_state, load_strict, read_checkpoint, state_dict_of
    from training.restorer import Restorer

    try:
        return Restorer.from_checkpoint(checkpoint, size=size, device=device, sha256=sha256, max_frames=max_frames, fp16=fp16)
    except CheckpointError as err:
        if "not a BasicVSR++" not in str(err):
            raise
        # Not even a BasicVSR++ (no feature extractor): compare its keys with Lada's model to say how far off it is.
        gen, part = generator_state(state_dict_of(read_checkpoint(checkpoint)))
        try:
            load_strict(BasicVSRPlusPlusNet(64, 15), gen, f"{checkpoint} ({part} weights)")
        except CheckpointError as detail:
            raise CheckpointError(f"{err}; {detail}") from None
        raise


def region_detector(path: Path, params, regions: str):
    """The per-frame detector for `regions` (detect | mosaic); a sidecar COCO file wins in both modes."""
    if regions == "detect":
        from training.detector import trained_regions

        return build_detector(path, params.detection, trained_regions)
    if regions != "mosaic":
        raise RestoreError(f"regions = {regions!r}: expected detect or mosaic")
    sidecar = path.with_name(path.name + params.detection.sidecar_suffix)
    if sidecar.is_file():
        return CombinedDetector([SidecarCoco(sidecar)])
    choice = mosaic_detector_choice(params)[0]
    if choice == "model":
        return CombinedDetector([mosaic_model_regions(params)])
    if choice == "grid":
        from inference.mosaic_detect import GridMosaicDetector

        return CombinedDetector([GridMosaicDetector()])
    raise RestoreError(
        f"{path}: regions=mosaic with restore.mosaic_detector: null needs the boxes in a sidecar {sidecar.name}"
    )


def mosaic_detector_choice(params) -> tuple[str | None, str]:
    """(model | grid | None, why) for regions = mosaic. `auto` takes the trained model only where its own
    report measured it beating the grid heuristic on the val mosaics (AP50), so a model too short-trained to
    find mosaics never replaces the heuristic silently."""
    import json

    rp = params.restore
    if rp.mosaic_detector != "auto":
        return rp.mosaic_detector, f"restore.mosaic_detector = {rp.mosaic_detector}"
    model, metrics = Path(rp.mosaic_detector_model), Path(rp.mosaic_detection_metrics)
    if not model.is_file():
        return "grid", f"auto: no trained mosaic detector at {model}"
    try:
        m = json.loads(metrics.read_text())
        trained, grid = float(m["AP50"]), float(m["grid_AP50"])
    except (OSError, ValueError, KeyError, TypeError):
        return "grid", f"auto: no mosaic_detection_report figures at {metrics}"
    if trained > grid:
        return "model", f"auto: the trained detector's val AP50 {trained:.3f} beats the grid's {grid:.3f} ({metrics})"
    return "grid", f"auto: the trained detector's val AP50 {trained:.3f} does not beat the grid's {grid:.3f} ({metrics})"


def mosaic_model_regions(params):
    """The mosaic detector the lineage trained (`mosaic_detector_checkpoint`), at `mosaic_detector.score_threshold`."""
    from training.detector import trained_regions

    path = Path(params.restore.mosaic_detector_model)
    if not path.is_file():
        raise RestoreError(f"{path}: no trained mosaic detector (restore.mosaic_detector: model); materialize "
                           "mosaic_detector_checkpoint (`make demo` does), point restore.mosaic_detector_model at one, "
                           "or use the grid heuristic (--mosaic-detector grid)")
    return trained_regions(path, params.mosaic_detector.score_threshold, ("mosaic",))


def for_mosaic_regions(params):
    """`params` whose track rule fits mosaic detectors: `mosaic_detector.min_track_score` for the mean score, and
    detection on every frame, batched (as lada-cli does): `detection.every_n_frames` is the face/plate detectors'
    knob, and the sparse path's local looks would show the trained mosaic detector crops it never saw in training."""
    return params.model_copy(update={
        "tracking": params.tracking.model_copy(update={"min_track_score": params.mosaic_detector.min_track_score}),
        "detection": every_frame(params.detection)})


def find_scenes(path: Path, detector, params, max_clip_length: int, fps: float, width: int, height: int,
                total: int | None = None, progress: bool | None = None) -> tuple[list[Scene], list, int, int, dict]:
    """Decode once, detect, track, drop the tracks the lineage would drop (`tracking.min_track_detections`,
    `min_track_score`), cut scenes of at most `max_clip_length` frames. Returns (scenes ordered by start, kept
    tracks, number of detections, frames decoded, {reason: tracks dropped})."""
    detection, rp = params.detection, params.restore
    detections: list[list] = []
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        found = detector.detect_batch([f for _, f in batch], [i for i, _ in batch])
        for (index, _), dets in zip(batch, found):
            detections[index] = dets
        batch.clear()

    # Decoding runs ahead in a thread, at most `detector_queue_size` frames (Lada's --detector-queue-size); the
    # frames to detect on go to the detector `detection_batch_size` at a time (--mosaic-detection-batch-size).
    decoded = prefetch(read_frames(path, stop=total, hw_decode=rp.hw_decode), rp.detector_queue_size)  # total: what decodes (probe)
    frames = tqdm(decoded, total=total, desc=f"detect {path.name}", unit="frame", leave=False, disable=bar_disabled(progress))
    sparse = None
    if not on_every_frame(detection) and detection.between == "flow":
        # Keyframes, flow between and local looks (assets/sparse_detection.py): frame by frame, not batched.
        sparse = sparse_detection(detector, detection, params.tracking.max_gap_frames)
        for frame in frames:
            sparse.push(frame)
        detections = sparse.finish()
    else:
        for index, frame in enumerate(frames):
            detections.append([])
            if index % detection.every_n_frames == 0:
                batch.append((index, frame))
                if len(batch) >= rp.detection_batch_size:
                    flush()
        if batch:
            flush()
    tracking = params.tracking.model_copy(update={"max_scene_frames": max_clip_length, "min_scene_frames": 1})
    every = sparse.every if sparse is not None else detection.every_n_frames
    tracks = associate(detections, tracking.iou_threshold, tracking.max_gap_frames + every - 1)
    tracks, dropped = filter_tracks(tracks, tracking.min_track_detections, tracking.min_track_score)
    scenes = build_scenes(tracks, fps, width, height, tracking)
    scenes.sort(key=lambda s: (s.start, s.id))
    return scenes, tracks, int(sum(len(d) for d in detections)), len(detections), dropped


def _mosaic_specs(scenes: list[Scene], shape: tuple[int, int], params, clip_name: str, mask_shape: str) -> dict:
    from assets.mosaic_lq import scene_block_sizes

    specs = {}
    for scene in scenes:
        rng = scene_rng(params.seed, clip_name, scene.id, "restore")
        specs[scene.id] = sample_spec(rng, scene_block_sizes(scene, shape, mask_shape)["mosaic_size_v1_normal"], params.mosaic)
    return specs


def _copy_atomic(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def restore_video(
    input_path: str | Path,
    output_path: str | Path,
    checkpoint: str | Path | None = None,
    params=None,
    *,
    restorer=None,
    max_clip_length: int | None = None,
    codec: str | None = None,
    regions: str | None = None,
    device: str | None = None,
    size: int | None = None,
    max_frames: int = 30,
    progress: bool | None = None,
    temporal=None,
) -> dict:
    """Restore every detected region of a whole video. Returns a JSON-able summary (its `output` is the
    written file). Either `checkpoint` or a ready `restorer` (training.restorer.Restorer) is needed.
    Options left at None come from `params.restore` (params = orchestration.config.Params; defaults if None).
    `progress`: None = a tqdm bar when attached to a terminal, True/False = always/never. `temporal`: an
    `evaluation.restoration_eval.TemporalChange(reference="input")` fed the change inside every restored
    region from one written frame to the next (the report's stability figure for a whole video)."""
    started = time.perf_counter()
    params = _params(params)
    rp = params.restore
    input_path, output_path = Path(input_path), Path(output_path)
    max_clip_length = int(max_clip_length or rp.max_clip_length)
    codec = codec or rp.codec
    regions = regions or rp.regions
    if regions not in ("detect", "mosaic"):
        raise RestoreError(f"regions = {regions!r}: expected detect or mosaic")
    if max_clip_length < 1:
        raise RestoreError(f"max_clip_length = {max_clip_length}: must be at least 1")
    if output_path.resolve() == input_path.resolve():
        raise RestoreError(f"{output_path}: the output must not overwrite the input")
    if output_path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise RestoreError(f"{output_path}: output must be one of {', '.join(OUTPUT_SUFFIXES)}")
    check_encoder(codec)
    probe = probe_video(input_path)  # VideoError names the file and the reason
    if restorer is None:
        if checkpoint is None:
            raise RestoreError("no checkpoint given (and no restorer)")
        restorer = load_restorer(checkpoint, size, device or rp.device, max_frames, rp.fp16)
    detector = region_detector(input_path, params, regions)
    detector_is_sidecar = any(isinstance(d, SidecarCoco) for d in detector.detectors)
    if regions == "mosaic":
        params = for_mosaic_regions(params)
    width, height = probe.width, probe.height
    scenes, tracks, n_detections, decoded, dropped = find_scenes(
        input_path, detector, params, max_clip_length, probe.fps, width, height, probe.frames, progress
    )
    summary = {
        "input": str(input_path), "output": str(output_path), "frames": decoded, "fps": probe.fps,
        "fps_fraction": probe.fps_fraction, "size": [width, height], "regions_mode": regions, "model_input_size": restorer.size,
        "detections": n_detections, "regions_found": len({s.track_id for s in scenes}), "scenes": len(scenes),
        "scene_frames": int(sum(s.frames for s in scenes)), "max_clip_length": max_clip_length,
        "tracks_dropped": dropped,
    }
    if regions == "mosaic" and not detector_is_sidecar:
        summary["mosaic_detector"] = mosaic_detector_choice(params)[1]
    if not scenes:
        _copy_atomic(input_path, output_path)
        summary.update({"copied": True, "codec": None, "audio": "copied" if probe.has_audio else None,
                        "seconds": round(time.perf_counter() - started, 3),
                        "message": f"no regions found in {input_path}: copied it unchanged to {output_path}"})
        return summary

    mask_shape = params.tracking.mask_shape if regions == "detect" else "rect"
    shape = (height, width)
    specs = _mosaic_specs(scenes, shape, params, input_path.name, mask_shape) if regions == "detect" else {}
    settings = output_settings(codec, rp.crf, rp.preset, height, width)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".tmp-restore-", dir=output_path.parent)) if probe.has_audio else None
    video_dest = (workdir / f"video{output_path.suffix or '.mp4'}") if workdir else output_path
    try:
        written = _restore_frames(input_path, video_dest, scenes, restorer, specs, shape, mask_shape, rp.blend_feather,
                                  probe.fps_fraction, settings, decoded, progress, temporal, rp.hw_decode)
        audio = mux_audio(video_dest, input_path, output_path) if workdir else None
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    summary.update({"copied": False, "codec": codec, "audio": audio, "frames_written": written,
                    "seconds": round(time.perf_counter() - started, 3),
                    "message": f"restored {len(scenes)} clip(s) of {summary['regions_found']} region(s) into {output_path}"})
    return summary


def _restore_frames(input_path: Path, dest: Path, scenes: list[Scene], restorer, specs: dict, shape, mask_shape: str,
                    feather: float, fps_fraction: str, settings, total: int, progress: bool | None, temporal=None,
                    hw_decode: str = "off") -> int:
    active = scenes_by_frame(scenes)  # per frame, scenes in list order (= by start)
    previous: dict = {}  # the last written frame pair and its scenes' masks, for `temporal`
    pending: dict[int, list[np.ndarray]] = {}
    done: dict[int, list[np.ndarray]] = {}
    buffer: deque[tuple[int, np.ndarray]] = deque()
    with OutputWriter(dest, fps_fraction, settings) as writer:

        def flush() -> None:
            while buffer and all(s.id in done for s in active.get(buffer[0][0], ())):
                index, frame = buffer.popleft()
                here = active.get(index, ())
                out = frame.copy() if here else frame
                for scene in here:
                    offset = index - scene.start
                    blend_into(out, done[scene.id][offset], scene.crops[offset], scene.pads[offset],
                               scene.regions[offset], scene.kind, mask_shape, feather)
                    if index + 1 == scene.stop:
                        del done[scene.id]
                if temporal is not None:
                    masks = {scene.id: full_frame_mask(scene, index - scene.start, shape, mask_shape) > 0 for scene in here}
                    for sid, mask in masks.items():
                        if sid in previous.get("masks", {}):
                            temporal.add_pair({"input": frame, "output": out},
                                              {"input": previous["input"], "output": previous["output"]},
                                              mask & previous["masks"][sid])
                    previous.update(input=frame, output=out, masks=masks)
                writer.write(out)

        frames = tqdm(read_frames(input_path, stop=total, hw_decode=hw_decode), total=total, desc=f"restore {input_path.name}",
                      unit="frame", leave=False,
                      disable=bar_disabled(progress))
        index = -1
        for index, frame in enumerate(frames):
            for scene in active.get(index, ()):
                offset = index - scene.start
                source = frame
                if scene.id in specs:  # regions=detect: the training mosaic over the region first
                    source, _ = apply_mosaic(frame, full_frame_mask(scene, offset, shape, mask_shape), specs[scene.id])
                pending.setdefault(scene.id, []).append(cut_and_pad(source, scene.crops[offset], scene.pads[offset]))
                if index + 1 == scene.stop:
                    done[scene.id] = restorer.restore(pending.pop(scene.id))
            buffer.append((index, frame))
            flush()
        if index + 1 != total or buffer:
            raise VideoError(f"{input_path}: decoded {index + 1} frames on the second pass, {total} on the first")
        return writer.frames
