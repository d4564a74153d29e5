"""From per-frame detections to region tracks, smoothed boxes, scenes, Lada-style crops and masks.

A *track* follows one region (same kind, overlapping boxes) across frames; short misses are bridged by
interpolation, a longer miss breaks it. A *scene* is a run of a track between `min_scene_frames` and
`max_scene_frames` long; it is the unit of the restoration dataset (one Lada meta file each).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from scipy.ndimage import median_filter

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    # max(0, ...): an inverted (empty) box has no area rather than a negative one
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    id: int
    kind: str
    start: int
    boxes: list[Box | None] = field(default_factory=list)  # one per frame from `start`; None = missed
    scores: list[float | None] = field(default_factory=list)  # the detector's score beside each box

    @property
    def detections(self) -> int:
        return sum(b is not None for b in self.boxes)

    @property
    def mean_score(self) -> float:
        seen = [s for s in self.scores if s is not None]
        return float(np.mean(seen)) if seen else 1.0

    @property
    def last_seen(self) -> int:
        for offset in range(len(self.boxes) - 1, -1, -1):
            if self.boxes[offset] is not None:
                return self.start + offset
        return self.start

    def last_box(self) -> Box:
        return next(b for b in reversed(self.boxes) if b is not None)


def associate(detections_per_frame: list[list], iou_threshold: float, max_gap: int) -> list[Track]:
    """Greedy IoU association, per kind. A track missing for more than `max_gap` frames is closed."""
    active: list[Track] = []
    done: list[Track] = []
    next_id = 1
    for index, detections in enumerate(detections_per_frame):
        pairs = sorted(
            (
                (iou(t.last_box(), d.box), ti, di)
                for ti, t in enumerate(active)
                for di, d in enumerate(detections)
                if t.kind == d.kind
            ),
            reverse=True,
        )
        used_t, used_d = set(), set()
        for score, ti, di in pairs:
            if score < iou_threshold or ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            track = active[ti]
            gap = index - track.start - len(track.boxes)
            track.boxes.extend([None] * gap)
            track.scores.extend([None] * gap)
            track.boxes.append(tuple(detections[di].box))
            track.scores.append(float(getattr(detections[di], "score", 1.0)))
        for di, det in enumerate(detections):
            if di not in used_d:
                active.append(Track(next_id, det.kind, index, [tuple(det.box)], [float(getattr(det, "score", 1.0))]))
                next_id += 1
        still = []
        for track in active:
            (still if index - track.last_seen <= max_gap else done).append(track)
        active = still
    done.extend(active)
    for track in done:  # trailing misses are not part of the track
        while track.boxes and track.boxes[-1] is None:
            track.boxes.pop()
        del track.scores[len(track.boxes):]
    return sorted(done, key=lambda t: t.id)


def filter_tracks(tracks: list[Track], min_detections: int, min_score: float) -> tuple[list[Track], dict[str, int]]:
    """The tracks worth a region: detected on at least `min_detections` frames and with a mean detector score of
    at least `min_score` (a one-frame hit on grass, a face on a wall the detector doubts all along). Returns
    (kept, {reason: tracks dropped})."""
    kept, dropped = [], {"too_few_detections": 0, "low_mean_score": 0}
    for track in tracks:
        if track.detections < min_detections:
            dropped["too_few_detections"] += 1
        elif track.mean_score < min_score:
            dropped["low_mean_score"] += 1
        else:
            kept.append(track)
    return kept, dropped


def fill_gaps(boxes: list[Box | None]) -> np.ndarray:
    """Linear interpolation over missed frames (the track's ends are always detections)."""
    arr = np.array([b if b is not None else (np.nan,) * 4 for b in boxes], dtype=np.float64)
    idx = np.arange(len(arr))
    for c in range(4):
        known = ~np.isnan(arr[:, c])
        arr[:, c] = np.interp(idx, idx[known], arr[known, c])
    return arr


def smoothing_window(fps: float, seconds: float, length: int) -> int:
    """Lada's rule: about one second of frames, no longer than the scene, and odd."""
    window = min(math.ceil(fps * seconds), length)
    if window % 2 == 0:
        window -= 1
    return max(1, window)


def smooth_boxes(boxes: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return boxes.copy()
    # "mirror" reflects around the edge sample; "nearest" would repeat it window//2 times and let one bad
    # box on a scene's first or last frame outvote the good ones.
    return median_filter(boxes, size=(window, 1), mode="mirror")


def expand_box(box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    return (
        max(0, int(math.floor(x0 - mx))),
        max(0, int(math.floor(y0 - my))),
        min(width, int(math.ceil(x1 + mx))),
        min(height, int(math.ceil(y1 + my))),
    )


def crop_box(region, margin: float, width: int, height: int, min_border: int = 8) -> tuple[int, int, int, int]:
    """The unscaled crop around a region: a border of `margin` x the longer side (at least `min_border`)."""
    x0, y0, x1, y1 = region
    border = max(min_border, int(margin * max(x1 - x0, y1 - y0)))
    return (max(0, x0 - border), max(0, y0 - border), min(width, x1 + border), min(height, y1 + border))


def centred_pad(h: int, w: int, scene_h: int, scene_w: int) -> tuple[int, int, int, int]:
    """Lada's per-frame pad [top, bottom, left, right]: the extra rows/cols split with the odd one on top/left."""
    dh, dw = scene_h - h, scene_w - w
    return (math.ceil(dh / 2), dh // 2, math.ceil(dw / 2), dw // 2)


@dataclass
class Scene:
    id: int  # 1-based per clip, as Lada numbers scenes
    track_id: int
    kind: str
    start: int
    stop: int  # exclusive
    regions: list[tuple[int, int, int, int]]  # smoothed, margin-expanded region box per frame (x0, y0, x1, y1)
    crops: list[tuple[int, int, int, int]]  # crop box per frame (x0, y0, x1, y1)
    scene_shape: tuple[int, int]  # (h, w) after padding every crop to the largest one
    pads: list[tuple[int, int, int, int]]  # [top, bottom, left, right] per frame

    @property
    def frames(self) -> int:
        return self.stop - self.start

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(
            id=d["id"], track_id=d["track_id"], kind=d["kind"], start=d["start"], stop=d["stop"],
            regions=[tuple(r) for r in d["regions"]], crops=[tuple(c) for c in d["crops"]],
            scene_shape=tuple(d["scene_shape"]), pads=[tuple(p) for p in d["pads"]],
        )


def build_scenes(tracks: list[Track], fps: float, width: int, height: int, params) -> list[Scene]:
    scenes: list[Scene] = []
    for track in tracks:
        if not track.boxes:
            continue
        raw = fill_gaps(track.boxes)
        for offset in range(0, len(raw), params.max_scene_frames):
            chunk = raw[offset : offset + params.max_scene_frames]
            if len(chunk) < params.min_scene_frames:
                continue
            smoothed = smooth_boxes(chunk, smoothing_window(fps, params.smoothing_seconds, len(chunk)))
            regions = [expand_box(b, params.box_margin, width, height) for b in smoothed]
            if any(r[2] - r[0] < 2 or r[3] - r[1] < 2 for r in regions):
                continue
            crops = [crop_box(r, params.crop_margin, width, height) for r in regions]
            scene_h = max(c[3] - c[1] for c in crops)
            scene_w = max(c[2] - c[0] for c in crops)
            pads = [centred_pad(c[3] - c[1], c[2] - c[0], scene_h, scene_w) for c in crops]
            start = track.start + offset
            scenes.append(
                Scene(len(scenes) + 1, track.id, track.kind, start, start + len(chunk), regions, crops, (scene_h, scene_w), pads)
            )
    return scenes


def region_mask(shape: tuple[int, int], region, kind: str, mask_shape: str) -> np.ndarray:
    """uint8 0/255 mask of one region in a frame of `shape` (h, w). Faces may be elliptic; plates are rectangles."""
    mask = np.zeros(shape, dtype=np.uint8)
    x0, y0, x1, y1 = region
    if kind == "face" and mask_shape == "ellipse":
        centre = ((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2)
        axes = (max(1, (x1 - x0) / 2), max(1, (y1 - y0) / 2))
        cv2.ellipse(mask, (centre, (axes[0] * 2, axes[1] * 2), 0), 255, -1)
    else:
        mask[y0:y1, x0:x1] = 255
    return mask


def cut_and_pad(frame: np.ndarray, crop, pad) -> np.ndarray:
    """Cut the crop box out of a full frame and zero-pad it to the scene shape (Lada's crop_unscaled)."""
    x0, y0, x1, y1 = crop
    top, bottom, left, right = pad
    piece = frame[y0:y1, x0:x1]
    widths = ((top, bottom), (left, right)) + (((0, 0),) if piece.ndim == 3 else ())
    return np.pad(piece, widths, mode="constant")


def unpad(frame: np.ndarray, pad) -> np.ndarray:
    top, bottom, left, right = pad
    h, w = frame.shape[:2]
    return frame[top : h - bottom, left : w - right]
