"""Unit tests of the geometry and pixel code under the lineage: track association and smoothing
(assets/tracks.py), the Lada-style mosaic (assets/mosaic.py) and the eggplant compositor (assets/eggplant.py).

No video IO and no detector: everything here runs in well under a second."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from assets.detect import Detection
from assets.eggplant import EggplantCompositor, load_sprites
from assets.mosaic import MosaicSpec, apply_mosaic, block_size_v1, scene_rng
from assets.tracks import (
    associate,
    centred_pad,
    cut_and_pad,
    fill_gaps,
    region_mask,
    smooth_boxes,
    smoothing_window,
    unpad,
)

# --------------------------------------------------------------------------------------------- association


def _face(box) -> Detection:
    return Detection("face", tuple(float(v) for v in box), 0.9)


def test_associate_keeps_two_separate_tracks():
    """Two faces drifting slowly side by side, never overlapping: two tracks, each following its own face."""
    frames = []
    for t in range(40):
        left = (10 + t, 20, 50 + t, 60)
        right = (120 - t, 25, 160 - t, 65)  # approaches, but the boxes never meet (gap >= 10 px)
        frames.append([_face(right), _face(left)] if t % 2 else [_face(left), _face(right)])
    tracks = associate(frames, iou_threshold=0.25, max_gap=6)
    assert len(tracks) == 2
    for track in tracks:
        assert track.start == 0 and len(track.boxes) == 40
        assert all(b is not None for b in track.boxes)
    by_x = sorted(tracks, key=lambda tr: tr.boxes[0][0])
    assert [b[0] for b in by_x[0].boxes] == [10 + t for t in range(40)]
    assert [b[0] for b in by_x[1].boxes] == [120 - t for t in range(40)]
    assert {tr.id for tr in tracks} == {1, 2}


def test_associate_separates_kinds_even_when_boxes_coincide():
    frames = [[Detection("face", (10, 10, 50, 50), 1.0), Detection("plate", (10, 10, 50, 50), 1.0)] for _ in range(5)]
    tracks = associate(frames, 0.25, 6)
    assert sorted(t.kind for t in tracks) == ["face", "plate"]
    assert all(len(t.boxes) == 5 for t in tracks)


@pytest.mark.parametrize("gap", [1, 3, 6])
def test_associate_bridges_a_gap_up_to_max_gap(gap):
    box = (30, 30, 70, 80)
    frames = [[_face(box)] for _ in range(10)] + [[] for _ in range(gap)] + [[_face(box)] for _ in range(10)]
    tracks = associate(frames, 0.25, max_gap=6)
    assert len(tracks) == 1
    boxes = tracks[0].boxes
    assert len(boxes) == 20 + gap
    assert boxes[10 : 10 + gap] == [None] * gap
    assert all(b is not None for b in boxes[:10] + boxes[10 + gap :])
    filled = fill_gaps(boxes)
    assert not np.isnan(filled).any()
    np.testing.assert_allclose(filled, np.tile(box, (20 + gap, 1)))


def test_associate_breaks_a_track_after_a_longer_gap():
    box = (30, 30, 70, 80)
    frames = [[_face(box)] for _ in range(10)] + [[] for _ in range(7)] + [[_face(box)] for _ in range(10)]
    tracks = associate(frames, 0.25, max_gap=6)
    assert len(tracks) == 2
    assert (tracks[0].start, len(tracks[0].boxes)) == (0, 10)
    assert (tracks[1].start, len(tracks[1].boxes)) == (17, 10)


def test_associate_drops_trailing_misses():
    frames = [[_face((0, 0, 20, 20))] for _ in range(5)] + [[] for _ in range(3)]
    (track,) = associate(frames, 0.25, 6)
    assert len(track.boxes) == 5


def test_fill_gaps_interpolates_linearly():
    filled = fill_gaps([(0, 0, 10, 10), None, None, (30, 0, 40, 10)])
    np.testing.assert_allclose(filled[:, 0], [0, 10, 20, 30])
    np.testing.assert_allclose(filled[:, 2], [10, 20, 30, 40])


# --------------------------------------------------------------------------------------------- smoothing


def test_smoothing_window_is_odd_and_fits_the_scene():
    checked = 0
    for fps in (1.0, 5.0, 23.976, 24.0, 25.0, 29.97, 30.0, 59.94, 60.0, 120.0):
        for seconds in (0.0, 0.1, 0.5, 1.0, 2.0):
            for length in (1, 2, 3, 12, 13, 30, 31, 240):
                window = smoothing_window(fps, seconds, length)
                assert window >= 1 and window % 2 == 1, (fps, seconds, length, window)
                assert window <= length, (fps, seconds, length, window)
                assert window <= max(1, math.ceil(fps * seconds)), (fps, seconds, length, window)
                checked += 1
    assert checked == 400


def test_smoothing_window_is_about_one_second():
    assert smoothing_window(30.0, 1.0, 240) == 29
    assert smoothing_window(25.0, 1.0, 240) == 25
    assert smoothing_window(25.0, 1.0, 12) == 11


def test_median_smoothing_removes_a_single_frame_outlier():
    boxes = np.tile([40.0, 50.0, 90.0, 110.0], (30, 1))
    boxes[14] = [300.0, 5.0, 400.0, 60.0]  # a one-frame detector glitch
    smoothed = smooth_boxes(boxes, smoothing_window(25.0, 1.0, len(boxes)))
    np.testing.assert_array_equal(smoothed, np.tile([40.0, 50.0, 90.0, 110.0], (30, 1)))
    assert smoothed.shape == boxes.shape


def test_median_smoothing_follows_a_real_move():
    """A step in position (the face moved) is kept, not averaged away; only its edge is delayed by the median."""
    boxes = np.array([[10.0, 10, 50, 50]] * 15 + [[60.0, 10, 100, 50]] * 15)
    smoothed = smooth_boxes(boxes, 9)
    np.testing.assert_array_equal(smoothed[:10], boxes[:10])
    np.testing.assert_array_equal(smoothed[20:], boxes[20:])


@pytest.mark.parametrize("where", [0, -1])
def test_median_smoothing_removes_an_outlier_on_the_first_or_last_frame(where):
    boxes = np.tile([40.0, 50.0, 90.0, 110.0], (30, 1))
    boxes[where] = [0.0, 0.0, 1.0, 1.0]  # detectors glitch most where a track starts or ends
    smoothed = smooth_boxes(boxes, smoothing_window(25.0, 1.0, len(boxes)))
    np.testing.assert_array_equal(smoothed, np.tile([40.0, 50.0, 90.0, 110.0], (30, 1)))


def test_smoothing_with_window_one_is_identity_and_copies():
    boxes = np.arange(20, dtype=np.float64).reshape(5, 4)
    out = smooth_boxes(boxes, 1)
    np.testing.assert_array_equal(out, boxes)
    assert out is not boxes


# --------------------------------------------------------------------------------------------- pads


@pytest.mark.parametrize("h,w,sh,sw", [(10, 10, 10, 10), (9, 7, 12, 12), (1, 1, 8, 9), (13, 20, 14, 27), (5, 6, 6, 5 + 6)])
def test_centred_pad_splits_the_extra_with_the_odd_one_first(h, w, sh, sw):
    top, bottom, left, right = centred_pad(h, w, sh, sw)
    assert min(top, bottom, left, right) >= 0
    assert top + bottom + h == sh and left + right + w == sw
    assert top - bottom in (0, 1) and left - right in (0, 1)


def test_cut_and_pad_then_unpad_round_trips():
    rng = np.random.default_rng(7)
    frame = rng.integers(1, 256, size=(144, 176, 3), dtype=np.uint8)  # no zeros: padding is recognisable
    gray = rng.integers(1, 256, size=(144, 176), dtype=np.uint8)
    crops = [(0, 0, 50, 40), (100, 90, 176, 144), (33, 17, 80, 61), (10, 100, 11, 101)]
    scene_h = max(c[3] - c[1] for c in crops)
    scene_w = max(c[2] - c[0] for c in crops)
    for crop in crops:
        x0, y0, x1, y1 = crop
        pad = centred_pad(y1 - y0, x1 - x0, scene_h, scene_w)
        for image in (frame, gray):
            padded = cut_and_pad(image, crop, pad)
            assert padded.shape[:2] == (scene_h, scene_w)
            assert padded.shape[2:] == image.shape[2:]
            assert padded.dtype == image.dtype
            restored = unpad(padded, pad)
            np.testing.assert_array_equal(restored, image[y0:y1, x0:x1])
            # everything outside the unpadded window is the zero pad
            border = np.ones(padded.shape[:2], bool)
            top, bottom, left, right = pad
            border[top : scene_h - bottom, left : scene_w - right] = False
            assert not padded[border].any()


# --------------------------------------------------------------------------------------------- mosaic


def _textured(h=160, w=200, seed=3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _ellipse_mask(h=160, w=200, box=(37, 53, 131, 118)) -> np.ndarray:
    return region_mask((h, w), box, "face", "ellipse")


@pytest.mark.parametrize("mode,ratio", [("square_mid", 1.0), ("square_avg", 1.0), ("rect_avg", 1.6)])
@pytest.mark.parametrize("feather", [0, 5])
def test_apply_mosaic_leaves_pixels_outside_the_mosaic_untouched(mode, ratio, feather):
    frame, mask = _textured(), _ellipse_mask()
    spec = MosaicSpec(mode, 8, ratio, feather)
    out, mosaic_mask = apply_mosaic(frame, mask, spec)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert mosaic_mask.shape == mask.shape and set(np.unique(mosaic_mask)) <= {0, 255}
    outside = mosaic_mask == 0
    np.testing.assert_array_equal(out[outside], frame[outside])
    # The mosaic never reaches further than one block beyond the region.
    bw = int(8 * ratio)
    near = cv2.dilate(mask, np.ones((2 * 8 + 1, 2 * bw + 1), np.uint8))
    assert not (mosaic_mask.astype(bool) & ~near.astype(bool)).any()
    # ... and it covers most of the region (a block is in when its centre is).
    covered = (mosaic_mask > 0)[mask > 0].mean()
    assert covered > 0.8
    assert (out[mosaic_mask > 0] != frame[mosaic_mask > 0]).any(axis=-1).mean() > 0.9
    # the input is not modified
    assert frame is not out


@pytest.mark.parametrize("mode,block,ratio", [("square_mid", 8, 1.0), ("square_avg", 7, 1.0), ("rect_avg", 6, 1.5)])
def test_mosaic_mask_is_block_aligned_to_the_frame_origin(mode, block, ratio):
    frame, mask = _textured(), _ellipse_mask()
    spec = MosaicSpec(mode, block, ratio, 0)
    _, mosaic_mask = apply_mosaic(frame, mask, spec)
    bh, bw = block, int(block * ratio)
    h, w = mask.shape
    assert mosaic_mask.any()
    for by in range(0, h, bh):
        for bx in range(0, w, bw):
            cell = mosaic_mask[by : by + bh, bx : bx + bw]
            assert cell.min() == cell.max(), f"block at ({by}, {bx}) is partly mosaiced"
    ys, xs = np.nonzero(mosaic_mask)
    assert ys.min() % bh == 0 and (ys.max() + 1) % bh == 0
    assert xs.min() % bw == 0 and (xs.max() + 1) % bw == 0


def test_square_avg_blocks_are_constant_and_hold_the_block_mean():
    frame, mask = _textured(), _ellipse_mask()
    spec = MosaicSpec("square_avg", 8, 1.0, 0)
    out, mosaic_mask = apply_mosaic(frame, mask, spec)
    cells = 0
    for by in range(0, 160, 8):
        for bx in range(0, 200, 8):
            if mosaic_mask[by, bx]:
                cell = out[by : by + 8, bx : bx + 8].reshape(-1, 3)
                assert (cell == cell[0]).all()
                expected = frame[by : by + 8, bx : bx + 8].reshape(-1, 3).astype(np.float64).mean(axis=0)
                assert np.abs(cell[0].astype(np.float64) - expected).max() <= 0.5 + 1e-6
                cells += 1
    assert cells > 20


def test_square_mid_blocks_take_the_centre_pixel():
    frame, mask = _textured(), _ellipse_mask()
    out, mosaic_mask = apply_mosaic(frame, mask, MosaicSpec("square_mid", 8, 1.0, 0))
    for by in range(0, 160, 8):
        for bx in range(0, 200, 8):
            if mosaic_mask[by, bx]:
                assert (out[by : by + 8, bx : bx + 8] == frame[by + 4, bx + 4]).all()


def test_rect_avg_blocks_are_wider_than_tall():
    frame, mask = _textured(), _ellipse_mask()
    out, mosaic_mask = apply_mosaic(frame, mask, MosaicSpec("rect_avg", 8, 1.6, 0))
    bh, bw = 8, 12
    found = 0
    for by in range(0, 160, bh):
        for bx in range(0, 200, bw):
            if mosaic_mask[by, bx]:
                cell = out[by : by + bh, bx : bx + bw].reshape(-1, 3)
                assert (cell == cell[0]).all()
                found += 1
    assert found > 10
    # Runs of equal colour inside the mosaic: horizontal runs span a block width (12), vertical a block height (8).
    inside = mosaic_mask > 0
    ys, xs = np.nonzero(inside)
    row = (ys.min() + ys.max()) // 2 // bh * bh + bh // 2
    cols = np.nonzero(inside[row])[0]
    seg = out[row, cols.min() : cols.max() + 1].astype(int)
    changes = np.nonzero(np.abs(np.diff(seg, axis=0)).sum(axis=1))[0] + 1
    widths = np.diff(np.concatenate([[0], changes, [len(seg)]]))
    col = (xs.min() + xs.max()) // 2 // bw * bw + bw // 2
    rows = np.nonzero(inside[:, col])[0]
    seg = out[rows.min() : rows.max() + 1, col].astype(int)
    changes = np.nonzero(np.abs(np.diff(seg, axis=0)).sum(axis=1))[0] + 1
    heights = np.diff(np.concatenate([[0], changes, [len(seg)]]))
    assert set(widths) == {bw}
    assert set(heights) == {bh}
    assert bw > bh


def test_apply_mosaic_with_empty_mask_is_a_copy():
    frame = _textured()
    out, mosaic_mask = apply_mosaic(frame, np.zeros(frame.shape[:2], np.uint8), MosaicSpec("square_avg", 8, 1.0, 0))
    np.testing.assert_array_equal(out, frame)
    assert not mosaic_mask.any()


def test_apply_mosaic_at_the_frame_border():
    """A region touching the right/bottom edge (frame size not a multiple of the block)."""
    frame = _textured(143, 175)
    mask = np.zeros((143, 175), np.uint8)
    mask[100:, 130:] = 255
    out, mosaic_mask = apply_mosaic(frame, mask, MosaicSpec("square_avg", 10, 1.0, 0))
    assert mosaic_mask[142, 174] == 255
    np.testing.assert_array_equal(out[mosaic_mask == 0], frame[mosaic_mask == 0])


@pytest.mark.parametrize("where", ["inside", "corner", "edge"])
def test_feathered_mosaic_is_the_plain_mosaic_blended_by_the_box_filtered_whole_mask(where):
    """The feather blurs the mask only near the mosaic (cheaper than the whole mask): the result must be what the
    definition gives, frame * (1 - blur(mask)) + mosaic * blur(mask), with the blur taken over the whole mask."""
    frame = _textured(143, 175)
    mask = np.zeros((143, 175), np.uint8)
    y0, y1, x0, x1 = {"inside": (40, 90, 50, 120), "corner": (0, 37, 0, 51), "edge": (60, 143, 140, 175)}[where]
    mask[y0:y1, x0:x1] = 255
    k = 7
    plain, _ = apply_mosaic(frame, mask, MosaicSpec("square_avg", 6, 1.0, 0))
    feathered, _ = apply_mosaic(frame, mask, MosaicSpec("square_avg", 6, 1.0, k))
    soft = cv2.blur(mask.astype(np.float32) / 255.0, (k, k))[..., None]
    expected = np.round(frame * (1 - soft) + plain * soft).astype(np.uint8)
    changed = (plain != frame).any(axis=2)  # where the plain mosaic differs from the frame; elsewhere both agree
    np.testing.assert_array_equal(feathered[changed], expected[changed])


def test_block_size_v1_grows_with_area():
    shape = (512, 512)
    areas = np.linspace(1, 200_000, 4000)
    sizes = np.array([block_size_v1(a, shape) for a in areas])
    assert (np.diff(sizes) >= -1e-9).all()
    assert sizes[-1] > sizes[0]
    assert 5.0 <= sizes[0] < 5.1  # a tiny region: about 5 px on a 512-px frame
    assert sizes[-1] > 12
    # the bounding variant uses the box area instead of the mask area
    assert block_size_v1(0.0, shape, bounding_area=30_000) == block_size_v1(30_000, shape)
    for small, large in [(500, 2_000), (2_000, 10_000), (10_000, 40_000), (40_000, 90_000)]:
        assert block_size_v1(large, shape) > block_size_v1(small, shape)


def test_block_size_v1_scales_with_the_frame():
    """Same fraction of the frame covered -> block size proportional to the frame's short side."""
    for fraction in (0.01, 0.05, 0.2):
        small = block_size_v1(fraction * 512 * 512, (512, 512))
        big = block_size_v1(fraction * 1024 * 1024, (1024, 1024))
        assert big == pytest.approx(2 * small)


def test_scene_rng_same_keys_same_numbers_different_keys_different():
    a = scene_rng(1234, "carphone.mp4", 1, "mosaic").integers(0, 2**62, 8)
    b = scene_rng(1234, "carphone.mp4", 1, "mosaic").integers(0, 2**62, 8)
    np.testing.assert_array_equal(a, b)
    others = [
        scene_rng(1234, "carphone.mp4", 2, "mosaic"),
        scene_rng(1234, "bikes.mp4", 1, "mosaic"),
        scene_rng(1234, "carphone.mp4", 1, "noise"),
        scene_rng(1235, "carphone.mp4", 1, "mosaic"),
    ]
    draws = [tuple(r.integers(0, 2**62, 8)) for r in others]
    assert all(d != tuple(a) for d in draws)
    assert len(set(draws)) == len(draws)


def test_scene_rng_does_not_depend_on_what_was_drawn_before():
    first = scene_rng(7, "x", 3).uniform(size=4)
    for _ in range(3):
        scene_rng(7, "y", 1).uniform(size=100)  # other scenes draw in between
    np.testing.assert_array_equal(scene_rng(7, "x", 3).uniform(size=4), first)


# --------------------------------------------------------------------------------------------- eggplant


def _checker_scene(h=160, w=200, region=(60, 40, 140, 130)):
    """Smooth gray surroundings; a bright magenta/yellow checkerboard inside the region's elliptic mask."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = (90 + 40 * np.sin(xx / 31.0) + 30 * np.cos(yy / 27.0)).astype(np.uint8)
    frame = np.repeat(base[..., None], 3, axis=-1)
    mask = region_mask((h, w), region, "face", "ellipse")
    checker = ((yy // 3 + xx // 3) % 2).astype(bool)
    pattern = np.where(checker[..., None], np.array([255, 0, 255], np.uint8), np.array([255, 255, 0], np.uint8))
    frame[mask > 0] = pattern[mask > 0]
    return frame, mask, region


def _synthetic_sprite() -> np.ndarray:
    """RGBA float sprite: an opaque purple disc with transparent corners (the fill shows there)."""
    yy, xx = np.mgrid[0:64, 0:48]
    inside = ((yy - 32) / 31.0) ** 2 + ((xx - 24) / 23.0) ** 2 <= 1
    sprite = np.zeros((64, 48, 4), np.float32)
    sprite[..., :3] = (0.45, 0.2, 0.55)
    sprite[..., 3] = inside.astype(np.float32)
    return sprite


def _sprites():
    from conftest import EMOJI

    out = [("synthetic", _synthetic_sprite())]
    if EMOJI.is_file():
        out.append(("emoji", load_sprites("emoji", EMOJI)[0]))
    return out


@pytest.mark.parametrize("name,sprite", _sprites(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("fill", [1.0, 0.6])
def test_eggplant_never_leaves_original_region_pixels(name, sprite, fill):
    frame, mask, region = _checker_scene()
    comp = EggplantCompositor(sprite, fill=fill, color_match=0.35, edge_feather=0.08)
    for _ in range(3):  # several frames: the colour match has state
        out = comp.composite(frame, region, mask)
        assert out.shape == frame.shape and out.dtype == np.uint8
        inside = mask > 0
        same = (out[inside] == frame[inside]).all(axis=-1)
        assert not same.any(), f"{same.sum()} original pixels survived inside the region mask"
        # Not merely perturbed: the checkerboard is gone (a magenta/yellow pattern differs in G and B by 255).
        diff = np.abs(out[inside].astype(int) - frame[inside].astype(int)).max(axis=-1)
        assert np.median(diff) > 60
        # The pattern's high-frequency energy inside the region is gone as well.
        x0, y0, x1, y1 = region
        lap_in = np.abs(cv2.Laplacian(frame[y0:y1, x0:x1, 1], cv2.CV_32F))[mask[y0:y1, x0:x1] > 0].mean()
        lap_out = np.abs(cv2.Laplacian(out[y0:y1, x0:x1, 1], cv2.CV_32F))[mask[y0:y1, x0:x1] > 0].mean()
        assert lap_out < lap_in / 4
        # Far outside the region nothing changes; the frame passed in is not modified either.
        far = np.ones(mask.shape, bool)
        far[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = False
        np.testing.assert_array_equal(out[far], frame[far])
        assert out is not frame


def test_eggplant_region_at_the_frame_edge():
    frame, _, _ = _checker_scene()
    region = (150, 100, 200, 160)  # touches the right and bottom edges
    mask = region_mask(frame.shape[:2], region, "face", "ellipse")
    frame[mask > 0] = (255, 0, 255)
    out = EggplantCompositor(_synthetic_sprite(), 1.0, 0.35, 0.08).composite(frame, region, mask)
    inside = mask > 0
    assert not (out[inside] == frame[inside]).all(axis=-1).any()
    far = np.ones(mask.shape, bool)
    far[98:, 148:] = False
    np.testing.assert_array_equal(out[far], frame[far])


@pytest.mark.parametrize("kind,region", [("face", (60, 30, 130, 120)), ("plate", (30, 60, 170, 100))])
def test_cover_fit_makes_the_whole_region_eggplant_and_contain_does_not(kind, region):
    """The GT should read as an eggplant as a whole: with `cover` every mask pixel carries the sprite's colours
    (purple body or green cap), with `contain` much of a region shows the fill from the skin-coloured surroundings."""
    from conftest import EMOJI

    if not EMOJI.is_file():
        pytest.skip("emoji not provisioned")
    sprite = load_sprites("emoji", EMOJI)[0]
    frame = np.full((160, 200, 3), (205, 160, 130), np.uint8)  # skin, everywhere
    mask = region_mask(frame.shape[:2], region, kind, "ellipse")
    inner = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0  # the feathered rim blends by design

    def eggplant_share(fit: str) -> float:
        out = EggplantCompositor(sprite, 1.0, 0.0, 0.08, fit).composite(frame, region, mask).astype(int)
        r, g, b = out[inner].T
        purple = (b > g + 20) & (r > g + 10)
        green = (g > r) & (g > b)
        return float((purple | green).mean())

    assert eggplant_share("cover") > 0.97
    assert eggplant_share("contain") < 0.8
    with pytest.raises(ValueError, match="eggplant.fit"):
        EggplantCompositor(sprite, 1.0, 0.0, 0.08, "stretch")


def test_compositors_of_one_sprite_share_its_covering_canvases_and_paint_alike():
    """Each scene has its own compositor; the canvases (an inpainting of the whole sprite) are made once per
    sprite, and a canvas shared by scenes cannot be changed by one of them."""
    frame, mask, region = _checker_scene()
    a = EggplantCompositor(_synthetic_sprite(), fill=1.0, color_match=0.35, edge_feather=0.08)
    b = EggplantCompositor(_synthetic_sprite(), fill=1.0, color_match=0.35, edge_feather=0.08)
    assert a._canvases is b._canvases and not a._canvases[False][0].flags.writeable
    np.testing.assert_array_equal(a.composite(frame, region, mask), b.composite(frame, region, mask))
