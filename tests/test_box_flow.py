"""Boxes carried between detected frames by optical flow (assets/box_flow.py), and the recall measure that
compares a faster region_tracks with detection on every frame (assets/track_recall.py)."""

from __future__ import annotations

import numpy as np

from assets.box_flow import BoxFlow
from assets.detect import Detection
from assets.track_recall import compare, iou, summarize


def _frames(count: int, step=(3.0, 2.0), grow: float = 1.0):
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    texture = np.kron(texture[::4, ::4], np.ones((4, 4, 1), dtype=np.uint8))  # blobs, not pixel noise
    frames, boxes = [], []
    for t in range(count):
        frame = np.full((240, 320, 3), 90, np.uint8)
        scale = grow ** t
        h, w = int(round(60 * scale)), int(round(80 * scale))
        import cv2

        patch = cv2.resize(texture, (w, h), interpolation=cv2.INTER_LINEAR)
        x, y = int(round(40 + step[0] * t)), int(round(50 + step[1] * t))
        frame[y:y + h, x:x + w] = patch
        frames.append(frame)
        boxes.append((x, y, x + w, y + h))
    return frames, boxes


def test_flow_follows_a_moving_and_growing_box_between_keyframes():
    frames, truth = _frames(6, step=(4.0, -2.0), grow=1.03)
    flow = BoxFlow()
    flow.start(frames[0], [Detection("face", truth[0], 0.9)])
    for frame, box in zip(frames[1:], truth[1:]):
        (carried,) = flow.follow(frame)
        assert carried.kind == "face" and carried.score == 0.9
        assert iou(carried.box, box) > 0.9, (carried.box, box)


def test_flow_drops_a_box_whose_content_is_gone():
    frames, truth = _frames(2)
    flow = BoxFlow()
    flow.start(frames[0], [Detection("plate", truth[0], 1.0)])
    assert flow.follow(np.full_like(frames[1], 90)) == [None]  # lost: dropped until the next keyframe
    flow.start(frames[0], [])  # a keyframe that found nothing: nothing is followed until the next one finds some
    assert flow.follow(frames[1]) == []
    flow.start(frames[0], [Detection("plate", truth[0], 1.0)])
    assert iou(flow.follow(frames[1])[0].box, truth[1]) > 0.9


def _record(scenes, tracks):
    return {"scenes": scenes, "tracks": tracks}


def test_recall_counts_found_scenes_and_box_iou():
    box = [10.0, 10.0, 50.0, 50.0]
    shifted = [14.0, 10.0, 54.0, 50.0]
    ref = _record([{"kind": "face", "start": 0, "regions": [box, box]}, {"kind": "plate", "start": 5, "regions": [box]}],
                  [{"kind": "face", "start": 0, "boxes": [box, box]}, {"kind": "plate", "start": 5, "boxes": [box]}])
    fast = _record([{"kind": "face", "start": 0, "regions": [shifted, shifted]}],
                   [{"kind": "face", "start": 0, "boxes": [box, None]}])
    row = compare(ref, fast)
    assert (row["scenes"], row["scenes_found"]) == (2, 1)  # the plate scene was lost
    total = summarize([row])
    assert total["scene_recall"] == 0.5
    assert abs(total["mean_region_iou"] - iou(box, shifted)) < 1e-9
    assert abs(total["mean_box_iou"] - 1 / 3) < 1e-9  # one exact box of three reference boxes
