"""The restoration report's visibility measure and the dataset's invisible-mosaic filter, on frames made here."""

from __future__ import annotations

import numpy as np
import pytest

from assets.eggplant import EggplantCompositor, load_sprites
from assets.mosaic import MosaicSpec, apply_mosaic
from assets.mosaic_lq import region_change
from assets.restoration_dataset import invisible_mosaic
from assets.tracks import region_mask
from evaluation.eggplant_visibility import Visibility, sprite_colours
from tests.conftest import EMOJI

REGION = (40, 30, 100, 110)  # x0, y0, x1, y1 in a 128 x 140 crop


def _textured(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Skin-like browns with strong texture: neither of the sprite's colours.
    small = (np.array([150, 110, 80]) + rng.integers(-70, 70, (18, 16, 1))).clip(0, 255).astype(np.uint8)
    import cv2

    return cv2.resize(small, (128, 140), interpolation=cv2.INTER_CUBIC)


def _pair():
    if not EMOJI.is_file():
        pytest.fail(f"{EMOJI}: not provisioned; run `make setup`")
    frame = _textured()
    mask = region_mask(frame.shape[:2], REGION, "face", "ellipse")
    gt = EggplantCompositor(load_sprites("emoji", EMOJI)[0], 1.0, 0.35, 0.08).composite(frame, REGION, mask)
    lq, _ = apply_mosaic(frame, mask, MosaicSpec("square_avg", 8, 1.0, 0))
    return frame, gt, lq, mask


def _score(gt, lq, out, mask) -> dict:
    meter = Visibility()
    for _ in range(3):
        meter.add(gt, lq, out, mask)
    return meter.metrics()


def test_a_copy_of_the_gt_scores_high_and_leaves_the_surroundings():
    _, gt, lq, mask = _pair()
    m = _score(gt, lq, gt.copy(), mask)
    assert m["purple_iou"] == pytest.approx(1.0) and m["green_iou"] == pytest.approx(1.0)
    assert m["changed_outside_share"] == 0.0
    assert m["lowpass_region_gain_db"] > 10
    # the mosaic itself shows neither colour where the GT has it
    assert m["purple_iou_input"] < 0.2 and m["green_iou_input"] < 0.2


def test_a_global_purple_tint_scores_low():
    _, gt, lq, mask = _pair()
    purple = np.array([120, 60, 140], np.float32)
    tinted = np.clip(0.5 * lq.astype(np.float32) + 0.5 * purple, 0, 255).astype(np.uint8)
    m = _score(gt, lq, tinted, mask)
    assert m["changed_outside_share"] > 0.5  # the tint reaches far beyond the region
    assert m["green_iou"] < 0.05  # no cap
    copy = _score(gt, lq, gt.copy(), mask)
    assert m["lowpass_region_gain_db"] < copy["lowpass_region_gain_db"] - 5


def test_sprite_colours_find_the_emoji_body_and_cap():
    _, gt, _, mask = _pair()
    purple, green = sprite_colours(gt)
    inside = mask > 127
    assert purple[inside].mean() > 0.4 and green[inside].mean() > 0.1
    assert not (purple & green).any()


def test_the_filter_drops_an_invisible_mosaic_and_keeps_a_visible_one():
    flat = np.full((140, 128, 3), 128, np.uint8)
    flat[..., 0] += np.arange(128, dtype=np.uint8)[None, :] // 16  # a faint gradient: a smooth cartoon body
    textured = _textured(1)
    mask = region_mask(flat.shape[:2], REGION, "face", "ellipse")
    spec = MosaicSpec("square_avg", 8, 1.0, 0)
    figures = {}
    for name, frame in (("flat", flat), ("textured", textured)):
        lq, _ = apply_mosaic(frame, mask, spec)
        total, count = region_change(frame, lq, mask, REGION)
        assert count == int((mask > 127).sum())
        figures[name] = {"visible_change": total / count}
    assert invisible_mosaic(figures["flat"], 6.0) is not None and "dataset.min_mosaic_change" in invisible_mosaic(figures["flat"], 6.0)
    assert invisible_mosaic(figures["textured"], 6.0) is None
    assert invisible_mosaic({}, 6.0) is None  # an older mosaic_lq record without the figure is kept


def test_the_dataset_drops_an_invisible_scene_names_why_and_shows_it(project):
    """End to end through the lineage at the default threshold: a smooth clip's scene is dropped (index, metrics,
    a marked contact sheet), a textured clip's scene is kept."""
    import json
    from pathlib import Path

    from orchestration.runner import run_stage
    from tests.conftest import synthetic_frames, write_clip
    from tests.test_bad_inputs import _sidecar

    project.write_params(dataset__min_mosaic_change=6.0)
    smooth = write_clip(project.raw / "smooth.mp4", synthetic_frames(24, 144, 176, seed=5))
    textured = write_clip(project.raw / "textured.mp4", [_textured(k)[:144, :128] for k in range(24)])
    for clip in (smooth, textured):
        _sidecar(clip, 24, box=(30, 30, 60, 70))
    for name in ("raw_clips", "region_tracks", "eggplant_gt", "mosaic_lq", "restoration_dataset"):
        run_stage(name, project.params())
    index = json.loads(Path("data/datasets/restoration/index.json").read_text())
    assert {s["clip_id"] for s in index["scenes"]} == {"textured.mp4"}
    (dropped,) = index["dropped_scenes"]
    assert dropped["clip_id"] == "smooth.mp4" and "dataset.min_mosaic_change" in dropped["reason"]
    metrics = json.loads(Path("data/metrics/restoration_dataset.json").read_text())
    assert metrics["dropped_scenes"] == 1 and metrics["scenes"] == 1
    assert Path(f"data/reports/restoration_dataset/dropped-{dropped['name']}.png").is_file()
