"""Detection on every n-th frame with flow between and local looks where regions start, end or are lost
(assets/sparse_detection.py): the per-frame boxes must cover what detection on every frame covers.

The frames are a textured patch moving over a flat background (real optical flow follows it); the detector
finds the patch's pixels in whatever image it gets, because what is under test is where the detectors run and
what is made of their answers, not a detector."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from assets.detect import Detection
from assets.sparse_detection import SparseDetection
from assets.tracks import iou


def _clip(count: int, visible: range, step=(3.0, 1.0), jump_at: int | None = None):
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)
    patch = cv2.resize(np.kron(texture, np.ones((4, 4, 1), dtype=np.uint8)), (80, 60), interpolation=cv2.INTER_NEAREST)
    frames, truth = [], []
    x, y = 40.0, 50.0
    for t in range(count):
        frame = np.full((240, 320, 3), 90, np.uint8)
        box = None
        if t in visible:
            xi, yi = int(round(x)), int(round(y))
            frame[yi:yi + 60, xi:xi + 80] = patch
            box = (float(xi), float(yi), float(xi + 80), float(yi + 60))
        frames.append(frame)
        truth.append(box)
        x, y = x + step[0], y + step[1]
        if jump_at is not None and t + 1 == jump_at:
            x += 60.0  # too far for the flow's window: it loses the patch
    return frames, truth


class Oracle:
    """Finds the patch in whatever image it is given (a whole frame or a crop): the pixels that differ from the
    flat background; `misses`: frames where it says nothing, as a detector sometimes does."""

    def __init__(self, misses=(), whole=(240, 320)):
        self.misses, self.seen, self.crops, self.whole = set(misses), [], 0, whole

    def __call__(self, frame, index):
        if frame.shape[:2] == self.whole:
            self.seen.append(index)
        else:
            self.crops += 1
        ys, xs = np.nonzero((frame != 90).any(axis=2))
        if index in self.misses or len(xs) == 0:
            return []
        return [Detection("face", (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), 0.9)]


def _run(frames, detector, every, max_gap=0):
    sparse = SparseDetection(detector, every, max_gap=max_gap)
    for frame in frames:
        sparse.push(frame)
    return sparse.finish(), sparse


def _covered(out, truth, min_iou=0.8):
    """Frames where the region is and a box overlaps it, and frames where it is not and a box says otherwise."""
    hits = [i for i, box in enumerate(truth) if box is not None and any(iou(d.box, box) >= min_iou for d in out[i])]
    false = [i for i, box in enumerate(truth) if box is None and out[i]]
    return hits, false


def test_every_frame_is_the_detector_on_every_frame():
    frames, truth = _clip(10, range(2, 8))
    oracle = Oracle()
    out, sparse = _run(frames, oracle, every=1)
    assert sparse.calls == 10 and sorted(oracle.seen) == list(range(10))
    assert [[d.box for d in o] for o in out] == [[b] if b else [] for b in truth]


def test_a_region_that_appears_and_leaves_between_keyframes_keeps_its_exact_frames():
    frames, truth = _clip(40, range(5, 27))  # keyframes 0, 8, 16, 24, 32 and the last frame
    oracle = Oracle()
    out, sparse = _run(frames, oracle, every=8)
    hits, false = _covered(out, truth)
    assert hits == list(range(5, 27)) and false == []
    assert sparse.calls == len(oracle.seen) == 6  # whole frames: the keyframes 0, 8, 16, 24, 32 and the last
    assert len(oracle.seen) == len(set(oracle.seen))  # no frame twice
    assert 0 < oracle.crops == sparse.local_calls < 12  # the start and the end were found on crops


def test_a_region_the_flow_loses_is_looked_for_on_that_frame():
    frames, truth = _clip(24, range(0, 24), jump_at=11)
    oracle = Oracle()
    out, _ = _run(frames, oracle, every=8)
    assert 11 not in oracle.seen and oracle.crops >= 1  # the flow broke at 11: a look near the lost box
    hits, _ = _covered(out, truth)
    assert hits == list(range(24))


def test_the_backward_search_looks_past_misses_association_bridges():
    frames, truth = _clip(30, range(3, 30))
    misses = {5, 6}  # the detector misses the region twice near its start, as on the cartoon clip
    out, _ = _run(frames, Oracle(misses), every=8, max_gap=2)
    hits, _ = _covered(out, truth)
    assert 3 in hits and 4 in hits  # found before the misses
    out, _ = _run(frames, Oracle(misses), every=8, max_gap=0)
    hits, _ = _covered(out, truth)
    assert 3 not in hits and 7 in hits  # without gap tolerance the start is lost


def test_flow_drift_is_corrected_towards_the_next_keyframe():
    frames, truth = _clip(17, range(17), step=(2.5, 1.5))
    out, _ = _run(frames, Oracle(), every=8)
    ious = [max(iou(d.box, truth[i]) for d in out[i]) for i in range(17)]
    assert min(ious) > 0.9, ious


@pytest.mark.parametrize("every", [0, -1])
def test_every_must_be_positive(every):
    with pytest.raises(ValueError, match="every_n_frames"):
        SparseDetection(lambda f, i: [], every)


def test_a_local_look_runs_only_the_detectors_of_the_region_s_kind():
    from assets.detect import CombinedDetector

    class Plates:
        kinds = ("plate",)

        def __init__(self):
            self.crops = 0

        def __call__(self, frame, index):
            self.crops += frame.shape[:2] != (240, 320)
            return []

    frames, _ = _clip(40, range(5, 27))
    faces, plates = Oracle(), Plates()
    faces.kinds = ("face",)
    _, sparse = _run(frames, CombinedDetector([faces, plates]), every=8)
    assert faces.crops == sparse.local_calls > 0 and plates.crops == 0


def test_each_detector_runs_on_its_own_keyframes_and_the_boxes_are_merged():
    from types import SimpleNamespace

    from assets.detect import CombinedDetector
    from assets.sparse_detection import sparse_detection

    class Plates(Oracle):
        kinds = ("plate",)

        def __call__(self, frame, index):
            return [Detection("plate", d.box, d.score) for d in super().__call__(frame, index)]

    frames, truth = _clip(50, range(0, 50))
    faces, plates = Oracle(), Plates()
    faces.kinds = ("face",)
    params = SimpleNamespace(every_n_frames=8, plate_every_n_frames=24, between="flow")
    sparse = sparse_detection(CombinedDetector([faces, plates]), params, max_gap=0)
    for frame in frames:
        sparse.push(frame)
    out = sparse.finish()
    assert sorted(faces.seen) == [0, 8, 16, 24, 32, 40, 48, 49] and sorted(plates.seen) == [0, 24, 48, 49]
    assert sparse.calls == 12 and sparse.every == 24
    assert all(sorted(d.kind for d in out[i]) == ["face", "plate"] for i in range(50))  # both carried on every frame


def test_a_keyframe_that_misses_a_carried_region_looks_again_on_a_crop():
    frames, truth = _clip(30, range(0, 30))

    class WholeFrameMisses(Oracle):
        def __call__(self, frame, index):
            if frame.shape[:2] == (240, 320) and index == 8:
                self.seen.append(index)
                return []  # the whole-frame pass misses the face on keyframe 8; a crop does not
            return super().__call__(frame, index)

    out, _ = _run(frames, WholeFrameMisses(), every=8)
    hits, _ = _covered(out, truth)
    assert hits == list(range(30))


def test_many_regions_cost_at_most_a_few_crops_and_one_whole_frame_per_frame():
    from assets.sparse_detection import MAX_LOOKS

    class Crowd:
        """A detector at a score threshold of 0: dozens of boxes on every whole frame, none on any crop."""

        def __init__(self):
            self.crops, self.whole = 0, 0

        def __call__(self, frame, index):
            if frame.shape[:2] != (240, 320):
                self.crops += 1
                return []
            self.whole += 1
            return [Detection("face", (x, y, x + 20.0, y + 20.0), 0.1) for x in range(0, 300, 30) for y in range(0, 200, 40)]

    frames = [np.full((240, 320, 3), 90, np.uint8) for _ in range(17)]
    crowd = Crowd()
    _run(frames, crowd, every=8)
    assert crowd.whole <= 17 and crowd.crops <= MAX_LOOKS * 17


def test_a_large_region_is_looked_for_on_a_smaller_copy_and_its_boxes_come_back_full_size():
    from assets.sparse_detection import LOOK_SIDE

    small, small_truth = _clip(40, range(5, 27))
    frames = [cv2.resize(f, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST) for f in small]  # a 240x180 patch
    truth = [None if b is None else tuple(3 * v for v in b) for b in small_truth]

    class Sizes(Oracle):
        def __init__(self):
            super().__init__(whole=(720, 960))
            self.looked_at = []  # the patch's shorter side in each crop the detector was given

        def __call__(self, frame, index):
            found = super().__call__(frame, index)
            if frame.shape[:2] != self.whole:
                self.looked_at += [min(d.box[2] - d.box[0], d.box[3] - d.box[1]) for d in found]
            return found

    oracle = Sizes()
    out, sparse = _run(frames, oracle, every=8)
    assert sparse.local_calls > 0 and oracle.looked_at and max(oracle.looked_at) <= LOOK_SIDE + 2 < 180
    hits, false = _covered(out, truth)
    assert hits == list(range(5, 27)) and false == []
