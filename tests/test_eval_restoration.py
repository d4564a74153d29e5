"""PSNR/SSIM over whole frames and inside masks, per video and per folder."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from evaluation.restoration_metrics import (
    PSNR_CAP, FrameMismatchError, dir_metrics, psnr_from_mse, psnr_ssim, video_metrics,
)
from conftest import synthetic_frames, write_clip


def textured(height: int = 256, width: int = 256, seed: int = 0) -> np.ndarray:
    """Structured content kept within [40, 215] so added noise of a few sigma is not clipped."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = 127 + 60 * np.sin(xx / 9.0 + seed) * np.cos(yy / 13.0)
    rgb = np.stack([base, np.roll(base, 7, axis=0), 255 - base], axis=-1) + rng.uniform(-25, 25, (height, width, 3))
    return np.clip(np.rint(rgb), 40, 215).astype(np.uint8)


def add_noise(frame: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(frame + rng.normal(0, sigma, frame.shape)), 0, 255).astype(np.uint8)


def test_identical_frames_cap_psnr_and_ssim_one():
    frame = textured()
    mask = np.zeros(frame.shape[:2], bool)
    mask[50:120, 60:140] = True
    m = psnr_ssim(frame, frame.copy(), mask)
    assert m == {"psnr": PSNR_CAP, "ssim": 1.0, "psnr_region": PSNR_CAP, "ssim_region": 1.0}
    assert PSNR_CAP == 100.0 and psnr_from_mse(0.0) == 100.0
    assert psnr_ssim(frame, frame)["psnr_region"] is None  # no mask -> no region numbers


@pytest.mark.parametrize("sigma", [3.0, 5.0, 10.0])
def test_known_noise_gives_expected_psnr(sigma):
    frame = textured(512, 512)
    m = psnr_ssim(frame, add_noise(frame, sigma))
    assert m["psnr"] == pytest.approx(20 * math.log10(255 / sigma), abs=0.2)
    assert 0 < m["ssim"] < 1


def test_psnr_of_mse_matches_definition():
    frame = textured(64, 64)
    other = frame.copy()
    other[10:20, 10:20, 0] += 4  # 100 pixel-values off by 4 in 64*64*3
    mse = 100 * 16 / (64 * 64 * 3)
    assert psnr_ssim(frame, other)["psnr"] == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)


def test_region_ignores_outside_and_sees_inside():
    frame = textured(200, 240)
    mask = np.zeros(frame.shape[:2], bool)
    mask[60:140, 80:180] = True
    outside = frame.copy()
    outside[~mask] = add_noise(frame, 20)[~mask]
    # SSIM's window reaches 3 px beyond the mask; keep the change outside that margin for an exact 1.0
    margin = np.zeros_like(mask)
    margin[57:143, 77:183] = True
    outside[margin & ~mask] = frame[margin & ~mask]
    m = psnr_ssim(frame, outside, mask)
    assert m["psnr_region"] == PSNR_CAP and m["ssim_region"] == pytest.approx(1.0, abs=1e-12)
    assert m["psnr"] < 40 and m["ssim"] < 0.9

    inside = frame.copy()
    inside[mask] = add_noise(frame, 10)[mask]
    m = psnr_ssim(frame, inside, mask)
    assert m["psnr_region"] == pytest.approx(20 * math.log10(255 / 10), abs=0.3)
    assert m["ssim_region"] < 0.9
    assert m["psnr"] > m["psnr_region"] + 3  # the whole frame dilutes the change

    full = psnr_ssim(frame, inside, np.ones(frame.shape[:2], np.uint8))
    assert full["psnr_region"] == pytest.approx(full["psnr"], abs=1e-9)
    assert full["ssim_region"] == pytest.approx(full["ssim"], abs=1e-12)
    empty = psnr_ssim(frame, inside, np.zeros(frame.shape[:2], bool))
    assert empty["psnr_region"] is None and empty["ssim_region"] is None


def test_bad_inputs_are_named():
    frame = textured(64, 64)
    with pytest.raises(FrameMismatchError, match=r"reference shape \(64, 64, 3\) != test shape \(64, 48, 3\)"):
        psnr_ssim(frame, frame[:, :48])
    with pytest.raises(FrameMismatchError, match=r"mask: shape \(32, 32\) does not match the frames' \(64, 64\)"):
        psnr_ssim(frame, frame, np.ones((32, 32), bool))
    with pytest.raises(TypeError, match="expected uint8"):
        psnr_ssim(frame.astype(np.float32), frame)
    with pytest.raises(FrameMismatchError, match="smaller than the 7x7 SSIM window"):
        psnr_ssim(frame[:5, :5], frame[:5, :5])


def test_video_metrics_mean_and_pooled():
    frames = [textured(96, 128, seed=s) for s in range(4)]
    noisy = [frames[0], add_noise(frames[1], 4), frames[2], add_noise(frames[3], 16, seed=2)]
    mask = np.zeros((96, 128), bool)
    mask[20:70, 30:100] = True
    per = [psnr_ssim(a, b, mask) for a, b in zip(frames, noisy)]
    v = video_metrics(iter(frames), (f for f in noisy), [mask] * 4)
    assert v["frames"] == 4 and v["region_frames"] == 4
    assert v["psnr"] == pytest.approx(np.mean([p["psnr"] for p in per]), abs=1e-9)
    assert v["ssim"] == pytest.approx(np.mean([p["ssim"] for p in per]), abs=1e-12)
    assert v["ssim_region"] == pytest.approx(np.mean([p["ssim_region"] for p in per]), abs=1e-12)
    mse = np.mean([np.mean((a.astype(float) - b) ** 2) for a, b in zip(frames, noisy)])
    assert v["psnr_pooled"] == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    assert v["psnr_pooled"] < v["psnr"]  # identical frames (capped at 100) lift the mean, not the pooled MSE
    partial = video_metrics(frames, noisy, [None, mask, None, None])
    assert partial["region_frames"] == 1 and partial["psnr_region"] == pytest.approx(per[1]["psnr_region"])
    assert video_metrics(frames, noisy)["psnr_region"] is None
    with pytest.raises(FrameMismatchError, match="test ran out of frames at frame 3"):
        video_metrics(frames, noisy[:3])
    with pytest.raises(FrameMismatchError, match=r"frame 2: reference shape"):
        video_metrics(frames, noisy[:2] + [noisy[2][:50]] + noisy[3:])
    with pytest.raises(FrameMismatchError, match="masks ran out at frame 2"):
        video_metrics(frames, noisy, [mask, mask])


def test_dir_metrics_images_and_videos(tmp_path):
    a, b, masks = tmp_path / "a", tmp_path / "b", tmp_path / "masks"
    for d in (a, b, masks):
        d.mkdir()
    img = textured(64, 80)
    Image.fromarray(img).save(a / "still.png")
    Image.fromarray(add_noise(img, 6)).save(b / "still.png")
    mask = np.zeros((64, 80), np.uint8)
    mask[10:40, 20:60] = 255
    Image.fromarray(mask).save(masks / "still.png")
    clip = synthetic_frames(3, 64, 80)
    write_clip(a / "clip.mp4", clip)
    write_clip(b / "clip.mkv", clip)  # a different container still pairs by stem
    (a / "notes.txt").write_text("ignored")

    result = dir_metrics(a, b)
    s = result["summary"]
    assert s["files"] == 2 and s["frames"] == 4 and s["region_frames"] == 0
    by_name = {row["name"]: row for row in result["per_file"]}
    assert by_name["still.png"]["psnr"] == pytest.approx(20 * math.log10(255 / 6), abs=0.5)
    assert by_name["clip.mp4"]["frames"] == 3 and by_name["clip.mp4"]["psnr"] > 35
    assert s["psnr"] == pytest.approx((by_name["still.png"]["psnr"] + 3 * by_name["clip.mp4"]["psnr"]) / 4)

    (masks / "clip.png").unlink(missing_ok=True)
    with pytest.raises(FrameMismatchError, match="clip.mp4: no mask with stem 'clip'"):
        dir_metrics(a, b, mask_dir=masks)

    (b / "clip.mkv").unlink()
    with pytest.raises(FrameMismatchError, match=r"in .*a but not .*b: clip.mp4"):
        dir_metrics(a, b)
    loose = dir_metrics(a, b, strict=False, mask_dir=masks)
    assert loose["missing_in_b"] == ["clip.mp4"] and loose["summary"]["files"] == 1
    assert loose["summary"]["region_frames"] == 1 and loose["summary"]["psnr_region"] is not None

    Image.fromarray(img[:, :70]).save(b / "still.png")
    with pytest.raises(FrameMismatchError, match=r"still.png: frame 0: reference shape \(64, 80, 3\) != test shape \(64, 70, 3\)"):
        dir_metrics(a, b, strict=False)


def test_temporal_change_counts_only_the_region_on_both_frames_and_compares_with_the_gt():
    from evaluation.restoration_eval import TemporalChange

    h = w = 16
    masks = [np.zeros((h, w), np.uint8) for _ in range(3)]
    for m in masks:
        m[4:12, 4:12] = 255
    masks[2][4:12, 4:6] = 0  # a column pair leaves the region on the last frame: not counted
    gt = [np.full((h, w, 3), 100, np.uint8) for _ in range(3)]
    gt[1][4:12, 4:12] = 104  # the GT changes by 4 then back
    steady = [g.copy() for g in gt]
    flicker = [g.copy() for g in gt]
    flicker[1][4:12, 4:12] = 116  # the output changes by 16 inside
    for f in flicker:
        f[0:4] = 0  # outside the region: ignored
    meter = TemporalChange()
    meter.add({"input": gt, "output": flicker, "gt": gt}, masks)
    got = meter.metrics()
    assert got["gt_temporal_change"] == pytest.approx(4.0)
    assert got["output_temporal_change"] == pytest.approx(16.0)
    assert got["temporal_ratio"] == pytest.approx(4.0)
    calm = TemporalChange()
    calm.add({"input": gt, "output": steady, "gt": gt}, masks)
    assert calm.metrics()["temporal_ratio"] == pytest.approx(1.0)
    assert TemporalChange().metrics()["temporal_ratio"] is None
