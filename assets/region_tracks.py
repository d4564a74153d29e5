"""`region_tracks`: detect faces/plates (every n-th frame, flow between: assets/sparse_detection.py), link them into tracks, smooth, cut scenes, and write
each scene's mask video (crop_unscaled_mask content)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from assets.atomic import write_json
from assets.content_groups import frame_signature, sample_indices
from assets.detect import build_detector
from assets.lada_meta import scene_name
from assets.sparse_detection import sparse_detection
from assets.tracks import Scene, associate, build_scenes, cut_and_pad, filter_tracks, region_mask
from assets.video import MASK_ENCODER, VideoError, VideoWriter, read_frames


def scene_mask_frames(scene: Scene, mask_shape: str):
    """The padded crop of the region mask, frame by frame (no video decoding needed)."""
    for region, crop, pad in zip(scene.regions, scene.crops, scene.pads):
        cx0, cy0, cx1, cy1 = crop
        local = (region[0] - cx0, region[1] - cy0, region[2] - cx0, region[3] - cy0)
        yield cut_and_pad(region_mask((cy1 - cy0, cx1 - cx0), local, scene.kind, mask_shape), (0, 0, cx1 - cx0, cy1 - cy0), pad)


def track_clip(clip: dict, out_dir: Path, detection, tracking, trained=None) -> dict:
    """`trained`: the loader of the trained face/plate detector (see `assets.detect.build_detector`)."""
    path = Path(clip["path"])
    detector = build_detector(path, detection, trained)
    sampled = set(sample_indices(clip["frames"]))
    signature: list[str] = []  # perceptual hashes of sampled frames: copies of this clip share its split
    frames = tqdm(read_frames(path, stop=clip["frames"]), total=clip["frames"], desc=f"detect {clip['clip_id']}", unit="frame", leave=False, disable=None)
    # Boxes read from a sidecar cost nothing: every frame then. Otherwise the detectors run every n-th frame,
    # optical flow carries their boxes through the frames between and the detectors check where regions start,
    # end or the flow breaks (assets/sparse_detection.py), or nothing fills the frames between ("none").
    sparse = sparse_detection(detector, detection, tracking.max_gap_frames)
    for index, frame in enumerate(frames):
        sparse.push(frame)
        if index in sampled:
            signature.append(frame_signature(frame))
    detections = sparse.finish()
    if len(detections) < clip["frames"]:
        raise VideoError(f"{path}: decoded {len(detections)} of {clip['frames']} frames")
    max_gap = tracking.max_gap_frames + sparse.every - 1
    tracks, dropped = filter_tracks(associate(detections, tracking.iou_threshold, max_gap),
                                    tracking.min_track_detections, tracking.min_track_score)
    height, width = clip["height"], clip["width"]
    scenes = build_scenes(tracks, clip["fps"], width, height, tracking)
    mask_dir = out_dir / "masks" / clip["clip_id"]
    for scene in scenes:
        with VideoWriter(mask_dir / f"{scene_name(clip['clip_id'], scene.id)}.mkv", clip["fps_fraction"], MASK_ENCODER) as w:
            for mask in scene_mask_frames(scene, tracking.mask_shape):
                w.write(mask)
    record = {
        "clip_id": clip["clip_id"],
        "path": clip["path"],
        "fps": clip["fps"],
        "fps_fraction": clip["fps_fraction"],
        "frames": clip["frames"],
        "width": width,
        "height": height,
        "detections": int(sum(len(d) for d in detections)),
        "frames_with_detections": int(sum(bool(d) for d in detections)),
        "frames_detected": sparse.calls,  # whole frames the detectors ran on (all of them when every_n_frames is 1)
        "local_detections": sparse.local_calls,  # crops around a known box (assets/sparse_detection.py)
        "tracks_dropped": dropped,
        "tracks": [
            {"id": t.id, "kind": t.kind, "start": t.start, "stop": t.start + len(t.boxes),
             "mean_score": round(t.mean_score, 4),
             "boxes": [None if b is None else [round(float(v), 2) for v in b] for b in t.boxes]}
            for t in tracks
        ],
        "scenes": [s.as_dict() for s in scenes],
        "content_signature": signature,
    }
    write_json(out_dir / f"{clip['clip_id']}.json", record)
    return {"tracks": len(tracks), "scenes": len(scenes), "scene_frames": int(sum(s.frames for s in scenes)),
            "kinds": sorted({s.kind for s in scenes})}


def load_clip_tracks(tracks_dir: Path, clip_id: str) -> dict:
    record = json.loads((tracks_dir / f"{clip_id}.json").read_text())
    record["scenes"] = [Scene.from_dict(s) for s in record["scenes"]]
    return record


def scenes_by_frame(scenes: list[Scene]) -> dict[int, list[Scene]]:
    active: dict[int, list[Scene]] = {}
    for scene in scenes:
        for index in range(scene.start, scene.stop):
            active.setdefault(index, []).append(scene)
    return active


def full_frame_mask(scene: Scene, offset: int, shape: tuple[int, int], mask_shape: str) -> np.ndarray:
    return region_mask(shape, scene.regions[offset], scene.kind, mask_shape)
