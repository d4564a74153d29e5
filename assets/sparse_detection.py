"""Detection on a subset of frames that still finds what detection on every frame finds.

The detectors run on the whole of every n-th frame (`detection.every_n_frames`, a *keyframe*); optical flow
(assets/box_flow.py) carries their boxes through the frames between. Carrying alone loses two things, measured
on the sample clips (bikes: a face crossing the frame at 20-35 px per frame): a region whose flow breaks
between keyframes is gone until the next one, and the frames before a region's first keyframe and after its
last are never looked at. So the detectors also look *near a known box* (on a crop around it, a few ms):

* **The flow lost a box** -> look near its last box on that frame; found, it is followed again from there.
* **A keyframe finds a region nobody carried** (it appeared since an earlier frame) -> look near it on the
  frames before, while they keep finding it (past as many misses as association bridges), so the region starts
  where detection on every frame would have started it.
* **A carried region is not found at a keyframe** (it left, or was covered) -> look near its carried boxes,
  newest first, until one is confirmed; the unconfirmed ones are removed, so the region ends where detection on
  every frame would have ended it.
* **A keyframe misses a region the flow still carries** -> a look near the carried box on that keyframe
  (detectors miss a face for a frame now and then; a crop is a second look).
* Matches are by centre distance within a reach of box sizes, not overlap: a fast face overlaps its box of
  the frame before too little.
* **A carried region is found at a keyframe** -> the flow's drift (the detection minus the carried box) is
  spread linearly over the frames it carried the box.
* The clip's last frame is always a keyframe.

`calls` counts whole-frame runs, `local_calls` the crops. The last n + max_gap + 1 frames are kept for the
backward looks. `PerDetector` runs each detector on its own keyframes (plates less often than faces).
Measured recall and its known misses: README, Performance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from assets.box_flow import BoxFlow
from assets.detect import Detection
from assets.tracks import iou

MATCH_IOU = 0.3  # a carried box and a detection of the same kind overlapping this much are the same region
# A local look covers the box grown by this many box sizes on every side, and a detection whose centre lies
# within this many box sizes of the box's is the same region (it moved faster than the flow could follow).
NEAR = 1.5
MIN_CROP = 48  # px: the detectors need some context around a small box
# A crop look scales the region's shorter side down to this many px when it is larger. YuNet is the limit: it
# boxes a large cartoon face less steadily when small. Measured (bench/library_recall.py, the 8 copies of the
# cartoon clip): 96 lost 3 of their 8 scenes, 160 none, with the same box IoU as full size on the sample clips.
LOOK_SIDE = 160
# Crop looks on one frame before the whole frame is cheaper (then run once and reused): a detector at a low
# score threshold reports dozens of regions, and a look for each would cost more than detecting on every frame.
MAX_LOOKS = 4

DetectFn = Callable[[np.ndarray, int], list[Detection]]


@dataclass
class _Chain:
    """A region the flow carries: the frame it was last confirmed on and its carried boxes since."""
    origin: int
    boxes: dict[int, Detection] = field(default_factory=dict)


def _best_match(box, kind: str, candidates: list[Detection]) -> Detection | None:
    scored = [(iou(box, d.box), d) for d in candidates if d.kind == kind]
    best = max(scored, key=lambda p: p[0], default=(0.0, None))
    return best[1] if best[0] >= MATCH_IOU else None


def _nearest(box, kind: str, candidates: list[Detection]) -> Detection | None:
    """The same-kind detection closest to `box`'s centre within NEAR box sizes: a fast region (the bikes clip:
    a 30-px face moving 20-35 px a frame) overlaps its box of the frame before too little for an overlap test."""
    cx, cy, size = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(box[2] - box[0], box[3] - box[1])
    close = [(np.hypot((d.box[0] + d.box[2]) / 2 - cx, (d.box[1] + d.box[3]) / 2 - cy), d) for d in candidates
             if d.kind == kind]
    close = [(dist, d) for dist, d in close if dist <= NEAR * size]
    return min(close, key=lambda p: p[0])[1] if close else None


class SparseDetection:
    """`push(frame)` every decoded frame in order, then `finish()` -> the detections of every frame."""

    def __init__(self, detect: DetectFn, every: int, carry: bool = True, max_gap: int = 0):
        """`detect(frame, index)`: whole-frame boxes (a crop works too: its boxes are shifted back). `max_gap`:
        the misses association bridges (tracking.max_gap_frames); the backward look for a new region's start
        looks past as many frames without it, as association would have joined them."""
        if every < 1:
            raise ValueError(f"every_n_frames must be >= 1, got {every}")
        if getattr(detect, "reads_sidecar", False):
            every = 1  # boxes read from a file cost nothing, and they are per frame, not per crop
        self._detect, self.every, self.max_gap = detect, every, max_gap
        self._flow = BoxFlow() if carry and every > 1 else None
        self._window = every + max_gap + 1
        self.out: list[list[Detection]] = []
        self.calls = 0  # whole-frame detector runs
        self.local_calls = 0  # detector runs on a crop around a known box
        self._last_key: int | None = None
        self._frames: dict[int, np.ndarray] = {}  # the last `_window` frames, for the backward looks
        self._seen: dict[int, list[Detection]] = {}  # whole-frame results on those frames
        self._looks: dict[int, int] = {}  # crop looks on those frames
        self._chains: list[_Chain] = []  # aligned with the boxes the flow follows

    # ------------------------------------------------------------------------------------------ detectors

    def _detect_at(self, index: int, frame: np.ndarray) -> list[Detection]:
        if index not in self._seen:
            self.calls += 1
            self._seen[index] = self._detect(frame, index)
        return self._seen[index]

    def _find_near(self, index: int, region: Detection, second_look: bool = False) -> Detection | None:
        """`region` on frame `index`: the nearest detection of its kind, from the whole-frame pass where that ran
        (unless `second_look`), else from a crop around the region's box."""
        if index in self._seen and not second_look:
            found = [d for d in self._seen[index] if d.kind == region.kind]
        else:
            found = self._detect_crop(index, region.box, region.kind)
        return _nearest(region.box, region.kind, found)

    def _detect_crop(self, index: int, box, kind: str) -> list[Detection]:
        frame = self._frames.get(index)
        if frame is None:
            return []
        if self._looks.get(index, 0) >= MAX_LOOKS:
            return [d for d in self._detect_at(index, frame) if d.kind == kind]
        self._looks[index] = self._looks.get(index, 0) + 1
        h, w = frame.shape[:2]
        bw, bh = box[2] - box[0], box[3] - box[1]
        mx, my = max(NEAR * bw, (MIN_CROP - bw) / 2), max(NEAR * bh, (MIN_CROP - bh) / 2)
        x0, y0 = max(0, int(box[0] - mx)), max(0, int(box[1] - my))
        x1, y1 = min(w, int(np.ceil(box[2] + mx))), min(h, int(np.ceil(box[3] + my)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return []
        self.local_calls += 1
        detect = self._detect.for_kind(kind) if hasattr(self._detect, "for_kind") else self._detect
        crop = frame[y0:y1, x0:x1]
        # The size of what is looked for is known: a large region is looked for on a smaller copy (a 300-px face's
        # crop is most of a 720p frame: 22 ms of YuNet at full size, a third of that at LOOK_SIDE).
        scale = min(1.0, LOOK_SIDE / max(1.0, min(bw, bh)))
        if scale < 1.0:
            crop = cv2.resize(crop, (max(8, round((x1 - x0) * scale)), max(8, round((y1 - y0) * scale))),
                              interpolation=cv2.INTER_AREA)
            sx, sy = (x1 - x0) / crop.shape[1], (y1 - y0) / crop.shape[0]
        else:
            crop, sx, sy = np.ascontiguousarray(crop), 1.0, 1.0
        found = detect(crop, index)
        return [Detection(d.kind, (d.box[0] * sx + x0, d.box[1] * sy + y0, d.box[2] * sx + x0, d.box[3] * sy + y0),
                          d.score) for d in found if d.kind == kind]

    # ------------------------------------------------------------------------------------------ frames

    def push(self, frame: np.ndarray) -> None:
        index = len(self.out)
        self.out.append([])
        if self._flow is not None:
            self._frames[index] = frame
            for old in [j for j in self._frames if j <= index - self._window]:
                del self._frames[old]
                self._seen.pop(old, None)
                self._looks.pop(old, None)
        if self._last_key is None or index - self._last_key >= self.every:
            self._keyframe(index, frame, self._follow(frame))
            return
        if self._flow is None:
            return  # between: none -- the frames between keyframes stay empty for association to bridge
        carried = self._follow(frame)
        if any(c is None for c in carried):
            self._recover(index, frame, carried)
            return
        for chain, box in zip(self._chains, carried):
            chain.boxes[index] = box
        self.out[index] = list(carried)

    def finish(self) -> list[list[Detection]]:
        last = len(self.out) - 1
        if last >= 0 and last != self._last_key and self._flow is not None:
            carried = [chain.boxes.pop(last, None) for chain in self._chains]
            self.out[last] = []
            self._keyframe(last, self._frames[last], carried)
        return self.out

    def _follow(self, frame: np.ndarray) -> list[Detection | None]:
        return self._flow.follow(frame) if self._flow is not None and self._chains else []

    # ------------------------------------------------------------------------------------------ decisions

    def _recover(self, index: int, frame: np.ndarray, carried: list[Detection | None]) -> None:
        """The flow lost some boxes on this frame: look for each near its last box; follow what is found again."""
        followed: list[Detection] = []
        chains: list[_Chain] = []
        for chain, box in zip(self._chains, carried):
            if box is not None:
                chain.boxes[index] = box
                followed.append(box)
                chains.append(chain)
                continue
            last = chain.boxes[max(chain.boxes)] if chain.boxes else None
            again = self._find_near(index, last) if last is not None else None
            if again is None:
                self._trim(chain)
                continue
            followed.append(again)  # a detection: confirmed here, a new chain from this frame
            chains.append(_Chain(index))
        self.out[index] = followed
        self._flow.start(frame, followed)
        self._chains = chains

    def _keyframe(self, index: int, frame: np.ndarray, carried: list[Detection | None]) -> None:
        found = list(self._detect_at(index, frame))
        # Which carried regions does a detection confirm? Greedy by overlap, one detection per region.
        pairs = sorted(((iou(c.box, d.box), ci, di) for ci, c in enumerate(carried) if c is not None
                        for di, d in enumerate(found) if d.kind == c.kind), reverse=True)
        matches: dict[int, int] = {}
        for overlap, ci, di in pairs:
            if overlap >= MATCH_IOU and ci not in matches and di not in matches.values():
                matches[ci] = di
        for ci, box in enumerate(carried):
            if ci in matches or box is None or ci >= len(self._chains):
                continue
            # The whole frame missed a region the flow still carries: detectors miss a face for a frame now and
            # then (the cartoon: 21 of 30 frames), and a crop is a second look at it.
            again = self._find_near(index, box, second_look=True)
            if again is not None and all(again is not d for d in found):
                found.append(again)
                matches[ci] = len(found) - 1
        for ci, chain in enumerate(self._chains):
            if ci in matches:
                self._correct(chain, carried[ci], found[matches[ci]], index)
            else:
                self._trim(chain)
        for di, det in enumerate(found):
            if di not in matches.values():
                self._extend_back(det, index)
        self.out[index] = found
        self._last_key = index
        if self._flow is not None:
            self._flow.start(frame, found)
            self._chains = [_Chain(index) for _ in found]

    def _correct(self, chain: _Chain, carried: Detection, found: Detection, index: int) -> None:
        """Spread the flow's drift over the frames it carried the box: the detection says where the region
        really is, and the error grew from zero where the chain was last confirmed."""
        drift = np.asarray(found.box) - np.asarray(carried.box)
        span = index - chain.origin
        for j, box in chain.boxes.items():
            fixed = Detection(box.kind, tuple(float(v) for v in np.asarray(box.box) + drift * (j - chain.origin) / span),
                              box.score)
            self.out[j] = [fixed if d is box else d for d in self.out[j]]
            chain.boxes[j] = fixed

    def _trim(self, chain: _Chain) -> None:
        """Remove a region's carried boxes, newest first, until the detectors confirm one."""
        for j in sorted(chain.boxes, reverse=True):
            box = chain.boxes[j]
            if self._find_near(j, box) is not None:
                return
            self.out[j] = [d for d in self.out[j] if d is not box]

    def _extend_back(self, det: Detection, index: int) -> None:
        """Follow a newly found region backwards over the kept frames while the detectors keep finding it, past
        up to `max_gap` frames without it (association bridges those)."""
        current, misses = det, 0
        for j in range(index - 1, index - self._window, -1):
            if j not in self._frames or _best_match(current.box, current.kind, self.out[j]) is not None:
                return  # no longer kept, or already followed there
            previous = self._find_near(j, current)
            if previous is None:
                misses += 1
                if misses > self.max_gap:
                    return
                continue
            self.out[j].append(previous)
            current, misses = previous, 0


class PerDetector:
    """Each detector of a `CombinedDetector` on its own keyframes (a `SparseDetection` each, merged per frame):
    the plate cascade costs 2.5x YuNet a frame on the sample clips, and plates move with the camera, which the
    flow follows, so `detection.plate_every_n_frames` may be longer than the faces' interval. A detector that
    reports several kinds runs at the shortest of their intervals."""

    def __init__(self, combined, every: dict[str, int], carry: bool = True, max_gap: int = 0, default: int = 1):
        from assets.detect import CombinedDetector

        def interval(detector) -> int:
            kinds = getattr(detector, "kinds", ())
            return min(every.get(k, default) for k in kinds) if kinds else default

        if hasattr(combined, "detectors"):
            self._parts = [SparseDetection(CombinedDetector([d]), interval(d), carry, max_gap) for d in combined.detectors]
        else:  # a bare detect function: one detector of unknown kinds
            self._parts = [SparseDetection(combined, interval(combined), carry, max_gap)]
        self._frames = 0

    @property
    def every(self) -> int:
        return max((p.every for p in self._parts), default=1)

    @property
    def calls(self) -> int:
        return sum(p.calls for p in self._parts)

    @property
    def local_calls(self) -> int:
        return sum(p.local_calls for p in self._parts)

    def push(self, frame: np.ndarray) -> None:
        self._frames += 1
        for part in self._parts:
            part.push(frame)

    def finish(self) -> list[list[Detection]]:
        outs = [part.finish() for part in self._parts]
        return [[d for out in outs for d in out[i]] for i in range(self._frames)]


def on_every_frame(detection) -> bool:
    """Whether the `detection` params section runs every detector on every frame (no sparse path)."""
    return detection.every_n_frames == 1 and (detection.plate_every_n_frames or 1) == 1


def every_frame(detection):
    """The `detection` params section with every detector on every frame."""
    return detection.model_copy(update={"every_n_frames": 1, "plate_every_n_frames": None})


def sparse_detection(detector, detection, max_gap: int) -> PerDetector:
    """The sparse path as the `detection` params section configures it, for `detector` (a CombinedDetector)."""
    every = {"face": detection.every_n_frames, "plate": detection.plate_every_n_frames or detection.every_n_frames}
    return PerDetector(detector, every, carry=detection.between == "flow", max_gap=max_gap,
                       default=detection.every_n_frames)
