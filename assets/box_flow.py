"""Carry detector boxes from a keyframe through the frames in between with optical flow, so that the detectors
run on a subset of frames (`detection.every_n_frames`) without losing the boxes of the others.

Median flow (Kalal et al., 2010): corners inside the box are followed by pyramidal Lucas-Kanade (OpenCV) from
one frame to the next and back; points whose backward track does not return near its start are dropped; the
box moves by the median displacement of the rest and scales by the median ratio of their pairwise distances.
A box whose points are mostly lost is dropped until the next keyframe (association bridges the gap, as it does
a missed detection).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from assets.detect import Detection

MAX_POINTS = 30  # corners per box: the median needs a handful; more costs flow time for nothing
FB_ERROR_PX = 1.5  # forward-backward error above this: the point slipped off what it followed
MIN_KEPT = 0.4  # share of a box's points that must survive, else the box is dropped
WORK_SIDE = 480  # flow runs on a grey copy at most this large: faces and plates stay many pixels wide


@dataclass
class _Followed:
    detection: Detection
    box: np.ndarray | None  # x0, y0, x1, y1 in full-frame pixels; None once lost


class BoxFlow:
    """`start(frame, detections)` at a keyframe, then `follow(frame)` for each following frame returns the boxes
    carried to it (same kinds and scores as the keyframe's detections)."""

    def __init__(self) -> None:
        self._gray: np.ndarray | None = None
        self._scale = 1.0
        self._boxes: list[_Followed] = []

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        self._scale = min(1.0, WORK_SIDE / max(h, w))
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self._scale < 1.0:
            gray = cv2.resize(gray, (round(w * self._scale), round(h * self._scale)), interpolation=cv2.INTER_AREA)
        return gray

    def start(self, frame: np.ndarray, detections: list[Detection]) -> None:
        # Nothing to follow (most plate keyframes): no grey copy until a keyframe finds something.
        self._gray = self._prepare(frame) if detections else None
        self._boxes = [_Followed(d, np.asarray(d.box, dtype=np.float64)) for d in detections]

    def follow(self, frame: np.ndarray) -> list[Detection | None]:
        """One entry per keyframe detection, in order: its box carried to `frame`, or None once the flow has lost
        it (a lost box stays lost until the next `start`)."""
        if not self._boxes:
            return []
        gray = self._prepare(frame)
        h, w = frame.shape[:2]
        out: list[Detection | None] = []
        for followed in self._boxes:
            box = None
            if followed.box is not None:
                moved = self._move(self._gray, gray, followed.box * self._scale)
                if moved is not None:
                    box = moved / self._scale
                    box = np.array([max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3])])
                    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                        box = None
            followed.box = box
            out.append(None if box is None else
                       Detection(followed.detection.kind, tuple(float(v) for v in box), followed.detection.score))
        self._gray = gray
        return out

    @staticmethod
    def _move(prev: np.ndarray, cur: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(prev.shape[1], x1), min(prev.shape[0], y1)
        if x1 - x0 < 4 or y1 - y0 < 4:
            return None
        # Corners of the box's own pixels: with a mask instead, OpenCV scores every pixel of the frame per box.
        points = cv2.goodFeaturesToTrack(prev[y0:y1, x0:x1], MAX_POINTS, 0.01, max(2.0, min(x1 - x0, y1 - y0) / 10))
        if points is None or len(points) < 3:
            return None
        points = points + np.array([x0, y0], dtype=np.float32)
        ahead, ok, _ = cv2.calcOpticalFlowPyrLK(prev, cur, points, None, winSize=(15, 15), maxLevel=2)
        back, ok_back, _ = cv2.calcOpticalFlowPyrLK(cur, prev, ahead, None, winSize=(15, 15), maxLevel=2)
        error = np.linalg.norm((back - points).reshape(-1, 2), axis=1)
        good = (ok.ravel() == 1) & (ok_back.ravel() == 1) & (error < FB_ERROR_PX)
        if good.sum() < max(3, MIN_KEPT * len(points)):
            return None
        p0, p1 = points.reshape(-1, 2)[good], ahead.reshape(-1, 2)[good]
        shift = np.median(p1 - p0, axis=0)
        i, j = np.triu_indices(len(p0), 1)
        d0 = np.linalg.norm(p0[i] - p0[j], axis=1)
        d1 = np.linalg.norm(p1[i] - p1[j], axis=1)
        valid = d0 > 1e-3
        scale = float(np.median(d1[valid] / d0[valid])) if valid.any() else 1.0
        cx, cy = (box[0] + box[2]) / 2 + shift[0], (box[1] + box[3]) / 2 + shift[1]
        hw, hh = (box[2] - box[0]) / 2 * scale, (box[3] - box[1]) / 2 * scale
        return np.array([cx - hw, cy - hh, cx + hw, cy + hh])
