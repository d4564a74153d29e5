"""`aubergine validate` and whole-video `aubergine restore` on small synthetic clips with a tiny random
BasicVSR++ (8 channels, 1 block, 128-px input): geometry, frame counts, audio, no-region copies, errors,
and the classical mosaic detector."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from assets.mosaic import MosaicSpec, apply_mosaic
from assets.tracks import iou
from assets.video import VideoError, probe_video, read_frames
from assets.weights import WeightsError
from inference.media import EncoderUnavailable, mux_audio, working_encoders
from inference.mosaic_detect import GridMosaicDetector
from inference.restore_video import restore_video
from orchestration.cli import app
from orchestration.config import load_params
from tests.conftest import ROOT, synthetic_frames, write_clip
from training.basicvsrpp import BasicVSRPlusPlusNet
from training.checkpoints import CheckpointError, export_lada

SIZE = 128  # the model's minimum input side: 4x cheaper than 256 on CPU
BOX = (56, 30, 100, 76)  # x0, y0, x1, y1 of the region in the 160x120 clips


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("restore")


@pytest.fixture(scope="module")
def checkpoint(work) -> Path:
    torch.manual_seed(0)
    return export_lada(BasicVSRPlusPlusNet(8, 1), work / "g.pth")


@pytest.fixture(scope="module")
def params_file(work) -> Path:
    """The repository's params with Haar detectors (fast, nothing to find on synthetic gradients) and CPU."""
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["detection"].update({"faces": "haar", "plates": "haar"})
    doc["restore"].update({"device": "cpu", "preset": "veryfast"})
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def params(params_file):
    return load_params(params_file)


def textured_frames(count: int, height: int = 120, width: int = 160, box=BOX, seed: int = 0) -> list[np.ndarray]:
    """Gray gradients (no chroma to lose in 4:2:0) with a high-contrast random texture inside `box`, so a
    mosaic and a restore visibly change the region."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (box[3] - box[1], box[2] - box[0], 1), dtype=np.uint8).repeat(3, axis=2)
    frames = synthetic_frames(count, height, width, gray=True)
    for frame in frames:
        frame[box[1] : box[3], box[0] : box[2]] = texture
    return frames


def write_sidecar(clip: Path, frames: int, box=BOX, kind: str = "face") -> Path:
    x0, y0, x1, y1 = box
    doc = {
        "images": [{"id": i + 1, "file_name": f"frame_{i:06d}.png", "frame_index": i} for i in range(frames)],
        "categories": [{"id": 1, "name": kind}],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0]} for i in range(frames)],
    }
    path = clip.with_name(clip.name + ".coco.json")
    path.write_text(json.dumps(doc))
    return path


def add_audio(video: Path, dest: Path, codec: str = "aac", rate: int = 44100, container: str | None = None) -> float:
    """Copy `video`'s stream and add a 440 Hz sine audio track of the video's duration; returns the duration."""
    with av.open(str(video)) as vin, av.open(str(dest), "w", format=container) as out:
        vs = vin.streams.video[0]
        vout = out.add_stream_from_template(vs)
        fmt = {"aac": "fltp", "pcm_u8": "u8"}.get(codec, "s16")
        aout = out.add_stream(codec, rate=rate, layout="mono", format=fmt)
        for packet in vin.demux(vs):
            if packet.dts is not None:
                packet.stream = vout
                out.mux(packet)
        seconds = vs.frames / float(vs.average_rate)
        n = int(rate * seconds)
        wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)
        samples = {"fltp": wave.astype(np.float32), "u8": (wave * 127 + 128).astype(np.uint8), "s16": (wave * 32767).astype(np.int16)}[fmt]
        for i in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, i : i + 1024], format=fmt, layout="mono")
            frame.sample_rate = rate
            out.mux(aout.encode(frame))
        out.mux(aout.encode(None))
    return seconds


def audio_duration(path: Path) -> float:
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        if stream.duration:
            return float(stream.duration * stream.time_base)
        return sum(float(p.duration * p.time_base) for p in c.demux(stream) if p.duration)


def frames_of(path: Path) -> np.ndarray:
    return np.stack(list(read_frames(path))).astype(np.int16)


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# -- validate -------------------------------------------------------------------------------------------


def test_validate_any_size_and_isolates_a_corrupt_clip(work, checkpoint, params_file):
    clips = work / "val_clips"
    clips.mkdir()
    write_clip(clips / "wide.mp4", synthetic_frames(6, 150, 200))
    write_clip(clips / "tall.mp4", synthetic_frames(4, 260, 96, seed=3), fps=30.0)
    (clips / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    out = work / "val_out"
    result = cli("validate", clips, "-o", out, "--checkpoint", checkpoint, "--size", SIZE, "--device", "cpu", "--params", params_file)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "validate.json").read_text())
    assert report["ok"] == 2 and report["failed"] == 1
    broken = report["clips"]["broken.mp4"]
    assert broken["status"] == "error" and "broken.mp4" in broken["error"]
    assert "broken.mp4" in result.stderr
    for name, (frames, fps, w, h) in {"wide": (6, 25.0, 200, 150), "tall": (4, 30.0, 96, 260)}.items():
        assert report["clips"][f"{name}.mp4"]["status"] == "ok"
        probe = probe_video(out / f"{name}.mp4")
        assert (probe.frames, probe.fps, probe.width, probe.height) == (frames, fps, w, h)
        rec = report["clips"][f"{name}.mp4"]
        assert rec["frames"] == frames and rec["size"] == [w, h] and rec["seconds"] > 0
    assert not (out / "broken.mp4").exists()


def test_validate_fails_only_when_every_clip_fails(work, checkpoint, params_file):
    clips = work / "all_broken"
    clips.mkdir()
    (clips / "a.mp4").write_bytes(b"not a video")
    (clips / "b.mkv").write_bytes(b"")
    result = cli("validate", clips, "-o", work / "all_broken_out", "--checkpoint", checkpoint, "--size", SIZE,
                 "--params", params_file)
    assert result.exit_code != 0
    report = json.loads((work / "all_broken_out" / "validate.json").read_text())
    assert report["ok"] == 0 and report["failed"] == 2


# -- restore --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def region_clip(work) -> Path:
    """20 frames of 160x120 at 25 fps, a textured region in every frame (sidecar boxes), an AAC sine track."""
    silent = write_clip(work / "region_silent.mp4", textured_frames(20))
    clip = work / "region.mp4"
    add_audio(silent, clip)
    write_sidecar(clip, 20)
    return clip


@pytest.fixture(scope="module")
def restored(work, region_clip, checkpoint, params_file):
    """The region clip through the CLI and the tiny real model, --max-clip-length 10; (summary, output path)."""
    out = work / "region_restored.mp4"
    result = cli("restore", region_clip, "-o", out, "--checkpoint", checkpoint, "--max-clip-length", 10,
                 "--size", SIZE, "--device", "cpu", "--params", params_file)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]), out


def test_restore_keeps_geometry_and_changes_only_the_region(region_clip, restored):
    summary, out = restored
    probe_in, probe_out = probe_video(region_clip), probe_video(out)
    assert (probe_out.frames, probe_out.fps, probe_out.width, probe_out.height) == (20, 25.0, 160, 120)
    assert (probe_in.frames, probe_in.fps_fraction) == (probe_out.frames, probe_out.fps_fraction)
    assert summary["frames"] == 20 and summary["size"] == [160, 120] and summary["fps"] == 25.0
    assert summary["scenes"] == 2 and summary["scene_frames"] == 20
    assert summary["regions_found"] == 1 and summary["copied"] is False and summary["output"] == str(out)
    a, b = frames_of(region_clip), frames_of(out)
    diff = np.abs(a - b).mean(axis=-1)
    assert diff[:, :, :24].mean() < 1.5 and diff[:, :, 130:].mean() < 1.5  # far from the region: re-encoding only
    x0, y0, x1, y1 = BOX
    assert diff[:, y0 + 4 : y1 - 4, x0 + 4 : x1 - 4].mean() > 20  # the textured region was mosaicked and restored


def test_restore_keeps_the_audio(region_clip, restored):
    summary, out = restored
    assert summary["audio"] == "copied"
    assert probe_video(out).has_audio
    assert audio_duration(out) == pytest.approx(audio_duration(region_clip), abs=0.05)
    assert audio_duration(out) == pytest.approx(20 / 25, abs=0.1)
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"


def test_audio_the_container_refuses_is_reencoded_to_aac(work):
    video = write_clip(work / "mux_video.mp4", synthetic_frames(10, 64, 64))
    source = work / "u8_audio.mkv"
    seconds = add_audio(video, source, codec="pcm_u8", rate=16000)  # MP4 cannot hold unsigned 8-bit PCM
    dest = work / "u8_out.mp4"
    assert mux_audio(video, source, dest) == "aac"
    with av.open(str(dest)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
    assert audio_duration(dest) == pytest.approx(seconds, abs=0.1)
    assert probe_video(dest).frames == 10


def test_no_regions_copies_the_input(work, checkpoint, params_file):
    clip = write_clip(work / "nothing.mp4", synthetic_frames(12, 120, 160))
    out = work / "nothing_out.mp4"
    result = cli("restore", clip, "-o", out, "--checkpoint", checkpoint, "--size", SIZE, "--params", params_file)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["regions_found"] == 0 and summary["copied"] is True and "no regions" in summary["message"]
    assert "no regions" in result.stderr
    assert out.read_bytes() == clip.read_bytes()


def test_corrupt_input_names_the_file_and_leaves_nothing(work, checkpoint, params):
    folder = work / "corrupt"
    folder.mkdir()
    bad = folder / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x20ftypisom" + bytes(range(256)) * 4)
    with pytest.raises(VideoError, match="bad.mp4"):
        restore_video(bad, folder / "bad_out.mp4", checkpoint, params, size=SIZE, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["bad.mp4"]
    result = cli("restore", bad, "-o", folder / "bad_out.mp4", "--checkpoint", checkpoint, "--params", work / "params.yaml")
    assert result.exit_code != 0 and "bad.mp4" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["bad.mp4"]


def test_unavailable_encoder_is_a_clear_error(work, region_clip, checkpoint, params):
    if "h264_nvenc" in working_encoders():
        pytest.skip("this machine has a working NVENC encoder")
    with pytest.raises(EncoderUnavailable, match="h264_nvenc") as err:
        restore_video(region_clip, work / "nvenc.mp4", checkpoint, params, codec="h264_nvenc", size=SIZE, progress=False)
    assert "libx264" in str(err.value)  # says what does work here
    assert not (work / "nvenc.mp4").exists()


def test_checkpoint_of_another_architecture(work, region_clip, params):
    from torchvision.models import resnet18

    path = work / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="missing") as err:
        restore_video(region_clip, work / "resnet_out.mp4", path, params, size=SIZE, progress=False)
    assert "unexpected" in str(err.value) and "resnet18.pth" in str(err.value)
    assert not (work / "resnet_out.mp4").exists()


def test_git_lfs_pointer_checkpoint(work, region_clip, params_file):
    pointer = work / "lada_pointer.pth"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 50000000\n")
    result = cli("restore", region_clip, "-o", work / "lfs_out.mp4", "--checkpoint", pointer, "--params", params_file)
    assert result.exit_code != 0
    assert "lada_pointer.pth" in result.stderr and "Git-LFS" in result.stderr
    with pytest.raises(WeightsError, match="Git-LFS"):
        restore_video(region_clip, work / "lfs_out.mp4", pointer, load_params(params_file), progress=False)
    assert not (work / "lfs_out.mp4").exists()


# -- mosaic detector ------------------------------------------------------------------------------------


def pixelate(image: np.ndarray, box, spec: MosaicSpec) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Mosaic over `box`; returns the frame and the box actually covered by whole blocks."""
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[box[1] : box[3], box[0] : box[2]] = 255
    out, covered = apply_mosaic(image, mask, spec)
    ys, xs = np.nonzero(covered)
    return out, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


@pytest.mark.parametrize("spec", [MosaicSpec("square_avg", 8, 1.0, 0), MosaicSpec("square_mid", 12, 1.0, 0),
                                  MosaicSpec("rect_avg", 6, 1.5, 0)], ids=lambda s: f"{s.mode}-{s.block}")
def test_mosaic_detector_finds_a_pixelated_box(spec):
    image = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    frame, truth = pixelate(image, (100, 60, 220, 180), spec)
    found = GridMosaicDetector()(frame, 0)
    assert len(found) == 1 and found[0].kind == "mosaic"
    assert iou(found[0].box, truth) > 0.5


def test_mosaic_detector_ignores_natural_images():
    from skimage import data

    detector = GridMosaicDetector()
    assert detector(data.astronaut(), 0) == []
    assert detector(synthetic_frames(1, 240, 320)[0], 0) == []
    assert detector(np.random.default_rng(2).integers(0, 256, (240, 320, 3), dtype=np.uint8), 0) == []


class RecordingRestorer:
    """Stands in for `training.restorer.Restorer`: returns the crops unchanged and keeps what it was given."""

    size, device, max_frames = SIZE, "cpu", 30

    def __init__(self):
        self.calls: list[list[np.ndarray]] = []

    def restore(self, frames):
        self.calls.append([f.copy() for f in frames])
        return [f.copy() for f in frames]


def test_restore_regions_mosaic_finds_the_pixelation_and_draws_no_mosaic(work, params):
    frames = []
    for frame in textured_frames(16, seed=5):
        out, truth = pixelate(frame, BOX, MosaicSpec("square_mid", 8, 1.0, 0))
        frames.append(out)
    clip = write_clip(work / "pixelated.mp4", frames)
    model = RecordingRestorer()
    summary = restore_video(clip, work / "pixelated_out.mp4", None, params, restorer=model, regions="mosaic", progress=False)
    assert summary["regions_mode"] == "mosaic" and summary["regions_found"] == 1 and summary["detections"] == 16
    assert probe_video(summary["output"]).frames == 16
    # the model got plain crops of the input (no mosaic drawn over the already pixelated region) ...
    (crops,) = model.calls
    decoded = list(read_frames(clip))
    scene_h, scene_w = crops[0].shape[:2]
    assert len(crops) == 16 and scene_h >= truth[3] - truth[1] and scene_w >= truth[2] - truth[0]
    # ... so with an identity model the output is the input up to re-encoding
    assert np.abs(frames_of(summary["output"]) - np.stack(decoded).astype(np.int16)).mean() < 1.5


def test_max_clip_length_cuts_a_48_frame_track_into_clips(work, params):
    clip = write_clip(work / "long_track.mp4", textured_frames(48))
    write_sidecar(clip, 48)
    model = RecordingRestorer()
    summary = restore_video(clip, work / "long_track_out.mp4", None, params, restorer=model, max_clip_length=16, progress=False)
    assert summary["max_clip_length"] == 16 and summary["regions_found"] == 1
    assert summary["scenes"] >= 3 and summary["scene_frames"] == 48
    assert len(model.calls) == summary["scenes"] and all(len(c) <= 16 for c in model.calls)
    assert probe_video(summary["output"]).frames == 48


def test_restore_regions_detect_mosaics_the_region_before_the_model(work, params):
    clip = write_clip(work / "detect_stub.mp4", textured_frames(12, seed=7))
    write_sidecar(clip, 12)
    model = RecordingRestorer()
    summary = restore_video(clip, work / "detect_stub_out.mp4", None, params, restorer=model, progress=False)
    assert summary["regions_mode"] == "detect" and summary["scenes"] == 1
    (crops,) = model.calls
    # the crop the model sees is piecewise constant inside the region: a mosaic of blocks >= 4 px
    x0, y0, x1, y1 = BOX
    crop = crops[0].astype(np.int16)
    centre = crop[crop.shape[0] // 2 - 8 : crop.shape[0] // 2 + 8, crop.shape[1] // 2 - 8 : crop.shape[1] // 2 + 8]
    zero_steps = (np.abs(np.diff(centre, axis=1)).max(axis=-1) <= 2).mean()
    assert zero_steps > 0.6  # random texture alone: almost no flat steps
    out, src = frames_of(summary["output"]), frames_of(clip)
    diff = np.abs(out - src).mean(axis=-1)
    assert diff[:, y0 + 4 : y1 - 4, x0 + 4 : x1 - 4].mean() > 20 and diff[:, :, :24].mean() < 1.5


def test_false_positive_tracks_are_dropped_by_the_lineages_rules_and_counted(work, params):
    """A one-frame hit and a long track the detector doubts all along make no flash; the real track stays."""
    clip = write_clip(work / "false_positives.mp4", textured_frames(24, seed=9))
    real, flash, doubted = BOX, (4, 4, 30, 26), (120, 80, 156, 116)
    doc = {"images": [{"id": i + 1, "file_name": f"frame_{i:06d}.png", "frame_index": i} for i in range(24)],
           "categories": [{"id": 1, "name": "face"}], "annotations": []}
    for i in range(24):
        boxes = [(real, 0.95), (doubted, 0.55)] + ([(flash, 0.99)] if i == 10 else [])
        for (x0, y0, x1, y1), score in boxes:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": i + 1, "category_id": 1,
                                       "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    clip.with_name(clip.name + ".coco.json").write_text(json.dumps(doc))
    model = RecordingRestorer()
    summary = restore_video(clip, work / "false_positives_out.mp4", None, params, restorer=model, progress=False)
    assert summary["regions_found"] == 1 and summary["detections"] == 49
    assert summary["tracks_dropped"] == {"too_few_detections": 1, "low_mean_score": 1}
    (crops,) = model.calls
    assert len(crops) == 24
    # with the rules off, all three tracks are restored
    loose = params.model_copy(update={"tracking": params.tracking.model_copy(
        update={"min_track_detections": 1, "min_track_score": 0.0})})
    everything = restore_video(clip, work / "false_positives_all.mp4", None, loose, restorer=RecordingRestorer(), progress=False)
    assert everything["regions_found"] == 3 and everything["tracks_dropped"] == {"too_few_detections": 0, "low_mean_score": 0}
