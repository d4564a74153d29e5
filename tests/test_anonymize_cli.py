"""`aubergine anonymize` end to end through the CLI with the tiny stand-in base and a LoRA on it: a video keeps
frame count, fps, size and audio, only its regions change, one seed per track makes two runs byte-identical,
the flicker measure and the COCO file come with it; a folder gives one output per input and survives a broken
image; an input without regions comes out unchanged; bad inputs are clear errors that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assets.video import probe_video
from tests.test_anonymization_methods import STAND_IN, _lora
from tests.test_restore import (  # noqa: F401 (fixtures)
    BOX, add_audio, audio_duration, cli, frames_of, params_file, textured_frames, work, write_sidecar,
)
from tests.conftest import PEOPLE, ROOT, write_clip


@pytest.fixture(scope="module")
def lora(work) -> Path:
    if not (STAND_IN / "model_index.json").is_file():
        pytest.fail(f"{STAND_IN}: missing; run `make setup`")
    return _lora(STAND_IN, work / "anon-lora")


@pytest.fixture(scope="module")
def face_clip(work) -> Path:
    """20 frames of 160x120 at 25 fps, a textured 'face' in every frame (sidecar boxes), an AAC sine track."""
    clip = work / "face.mp4"
    add_audio(write_clip(work / "face_silent.mp4", textured_frames(20)), clip)
    write_sidecar(clip, 20)
    return clip


def _anonymize(*args):
    result = cli("anonymize", *args)
    return result, (json.loads(result.stdout.strip().splitlines()[-1]) if result.exit_code == 0 else None)


@pytest.fixture(scope="module")
def anonymized(work, face_clip, lora, params_file):
    out = work / "face_anon.mp4"
    result, summary = _anonymize(face_clip, "-o", out, "--lora", lora, "--base", STAND_IN, "--device", "cpu",
                                 "--report", "--params", params_file)
    assert result.exit_code == 0, result.output
    return summary, out


def test_video_keeps_geometry_and_audio_and_changes_only_the_regions(face_clip, anonymized):
    summary, out = anonymized
    a, b = probe_video(face_clip), probe_video(out)
    assert (b.frames, b.fps_fraction, b.width, b.height) == (a.frames, a.fps_fraction, a.width, a.height) == (20, "25/1", 160, 120)
    assert summary["audio"] == "copied" and b.has_audio
    assert abs(audio_duration(out) - audio_duration(face_clip)) < 0.1
    assert summary["tracks"] == 1 and summary["region_frames"] == 20 and summary["copied"] is False
    diff = np.abs(frames_of(face_clip) - frames_of(out)).mean(axis=-1)
    x0, y0, x1, y1 = BOX
    assert diff[:, :, :40].mean() < 1.5 and diff[:, :, 120:].mean() < 1.5  # outside: encoding error only
    assert diff[:, y0 + 12: y1 - 12, x0 + 12: x1 - 12].mean() > 20  # the face's centre was replaced


def test_coco_file_and_flicker_measure_come_with_the_video(anonymized):
    summary, out = anonymized
    doc = json.loads(Path(summary["coco"]).read_text())
    assert Path(summary["coco"]) == out.with_name(out.name + ".coco.json")
    assert len(doc["images"]) == 20 and len(doc["annotations"]) == 20
    assert {a["attributes"]["track_id"] for a in doc["annotations"]} == {1}
    assert len({a["attributes"]["seed"] for a in doc["annotations"]}) == 1  # one seed for the whole track
    flicker = summary["flicker"]
    assert flicker["pairs"] == 19 and flicker["ratio"] == pytest.approx(flicker["output_change"] / flicker["original_change"], rel=1e-3)
    report = json.loads(Path(summary["report"]).read_text())
    assert report["flicker"] == flicker


def test_the_per_track_seed_makes_two_runs_byte_identical(work, face_clip, lora, params_file, anonymized):
    _, first = anonymized
    again = work / "face_anon_again.mp4"
    result, _ = _anonymize(face_clip, "-o", again, "--lora", lora, "--base", STAND_IN, "--device", "cpu",
                           "--params", params_file)
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == first.read_bytes()


def test_a_folder_gives_one_output_per_image_and_a_broken_image_does_not_stop_it(work, params_file):
    src = work / "images"
    src.mkdir()
    for k in range(2):
        frame = textured_frames(1, seed=k)[0]
        Image.fromarray(frame).save(src / f"img{k}.png")
        write_sidecar(src / f"img{k}.png", 1)
    (src / "broken.png").write_text("not an image")
    out = work / "images_out"
    result, summary = _anonymize(src, "-o", out, "--method", "fill", "--params", params_file)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png"]
    assert summary["images"] == 2 and summary["regions"] == 2
    assert [f["file"] for f in summary["failed"]] == [str(src / "broken.png")] and "broken.png" in result.output
    filled = np.asarray(Image.open(out / "img0.png"))
    original = np.asarray(Image.open(src / "img0.png"))
    x0, y0, x1, y1 = BOX
    centre = filled[y0 + 10: y1 - 10, x0 + 10: x1 - 10].reshape(-1, 3)
    assert (centre == centre[0]).all()  # one solid colour inside
    assert np.array_equal(filled[:, :x0 - 5], original[:, :x0 - 5])  # untouched outside


def test_a_video_without_regions_comes_out_unchanged_and_says_so(work, params_file):
    clip = write_clip(work / "empty.mp4", textured_frames(6))  # Haar finds nothing on these gradients
    out = work / "empty_out.mp4"
    result, summary = _anonymize(clip, "-o", out, "--method", "blur", "--params", params_file)
    assert result.exit_code == 0, result.output
    assert summary["copied"] is True and out.read_bytes() == clip.read_bytes()
    assert "no faces or plates found" in result.output


@pytest.mark.parametrize("case", ["missing", "folder_as_video", "text_as_mp4", "unknown_method", "foreign_lora"])
def test_bad_inputs_are_clear_errors_and_leave_nothing(case, work, face_clip, params_file, tmp_path):
    out = tmp_path / "out.mp4"
    args: list = [face_clip, "-o", out, "--params", params_file]
    expect = ""
    if case == "missing":
        args[0], expect = tmp_path / "nope.mp4", "nope.mp4: no such file"
    elif case == "folder_as_video":
        (tmp_path / "clip.mp4").mkdir()
        args[0], expect = tmp_path / "clip.mp4", "is a folder"
    elif case == "text_as_mp4":
        (tmp_path / "fake.mp4").write_text("hello")
        args[0], expect = tmp_path / "fake.mp4", "fake.mp4"
    elif case == "unknown_method":
        args += ["--method", "smudge"]
        expect = "smudge"
    else:
        from training.anonymizer.tiny_base import write_tiny_inpaint_base

        other = tmp_path / "other-base"
        write_tiny_inpaint_base(other, STAND_IN / "tokenizer", seed=1, block_out_channels=(16, 32))
        args += ["--lora", _lora(other, tmp_path / "foreign-lora"), "--base", STAND_IN]
        expect = "foreign-lora: this LoRA does not fit the base model"
    result, _ = _anonymize(*args)
    assert result.exit_code != 0
    assert expect in result.output
    assert not out.exists() and not list(tmp_path.glob(".tmp*"))


def test_the_trained_detector_finds_the_regions_when_asked(work, params_file):
    from tests.conftest import synthetic_frames

    base = ROOT / "data/models/detector-base/detector.pth"  # the FCOS detector set-up pretrains
    person = json.loads(PEOPLE.read_text())["people"][0]["images"][0]
    # a synthetic person's portrait at 96 px in a 320x240 scene, as the detector's training composites are
    scene = Image.fromarray(synthetic_frames(1, 240, 320)[0])
    scene.paste(Image.open(PEOPLE.parent / person["file"]).convert("RGB").resize((96, 96)), (150, 60))
    src = work / "person_scene.png"
    scene.save(src)
    out = work / "person_filled.png"
    result, summary = _anonymize(src, "-o", out, "--method", "fill", "--detector", base, "--params", params_file)
    assert result.exit_code == 0, result.output
    doc = json.loads(Path(summary["coco"]).read_text())
    faces = [a for a in doc["annotations"] if a["category_id"] == 1]
    assert faces, doc
    x, y, w, h = faces[0]["bbox"]
    fx0, fy0, fx1, fy1 = (v * 96 / 256 for v in person["face_box"])
    assert x < 150 + (fx0 + fx1) / 2 < x + w and y < 60 + (fy0 + fy1) / 2 < y + h  # on the face
    missing, _ = _anonymize(src, "-o", work / "x.png", "--detector", work / "none.pth", "--params", params_file)
    assert missing.exit_code != 0 and "none.pth: no detector file there" in missing.output
