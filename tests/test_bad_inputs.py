"""Bad inputs get a clear message (which file, why) and never take the good clips down with them.

One raw folder holds a good clip (carphone_pristine.mp4, a face on every frame) beside every kind of bad or
awkward input; the five data stages run once over it (module fixture) and each test reads what they
recorded: data/interim/raw_clips/manifest.json and the other stages' index.json files. Configuration and
provisioning mistakes (params values, a missing raw folder, a missing or Git-LFS-pointer model) get their
own small projects.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import ROOT, SAMPLE_RAW, Project, need_media, synthetic_frames, write_clip

from assets.lada_meta import RestorationDataset
from assets.video import EncoderSettings, probe_video, read_frames, write_video
from orchestration.config import ConfigError, load_params
from orchestration.runner import run_stage

STAGES = ("raw_clips", "region_tracks", "eggplant_gt", "mosaic_lq", "restoration_dataset")
AUBERGINE = ROOT / ".venv" / "bin" / "aubergine"
GOOD = "carphone_pristine.mp4"


# ------------------------------------------------------------------------------------------------ helpers


def carphone_frames() -> list[np.ndarray]:
    return list(read_frames(SAMPLE_RAW / GOOD))


def write_rotated_clip(path: Path, upright: list[np.ndarray], fps: int = 25) -> str:
    """An mp4 whose stored frames lie on their side, with a display matrix telling players to turn them 90 degrees
    clockwise (what a phone held upright records). Returns how it was made."""
    from av.video.stream import VideoStream

    stored = [np.ascontiguousarray(np.rot90(f, k=1)) for f in upright]  # turned 90 degrees counter-clockwise
    if hasattr(VideoStream, "set_display_rotation"):
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.height, stream.width = stored[0].shape[:2]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.options = {"crf": "18", "preset": "ultrafast"}
            stream.set_display_rotation(-90)  # PyAV's angle is counter-clockwise: -90 = a player turns it clockwise
            for frame in stored:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return "PyAV VideoStream.set_display_rotation(-90)"
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        plain = path.with_name(path.stem + "-plain.mp4")
        write_clip(plain, stored, fps)
        # -display_rotation is counter-clockwise too; the input option applies to the stream copied below.
        subprocess.run([ffmpeg, "-v", "error", "-y", "-display_rotation", "-90", "-i", str(plain), "-c", "copy", str(path)], check=True)
        plain.unlink()
        return "ffmpeg -display_rotation -90 -c copy"
    pytest.skip("cannot write a display-matrix rotation: PyAV lacks VideoStream.set_display_rotation and no ffmpeg binary")


def write_faststart_clip(path: Path, frames: list[np.ndarray], fps: int = 25) -> None:
    """An mp4 with its index (moov) in front, as web-optimised files are: a truncated copy still opens."""
    with av.open(str(path), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"crf": "18", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def index(stage: str) -> dict:
    base = Path("data/datasets/restoration") if stage == "restoration_dataset" else Path("data/interim") / stage
    return json.loads((base / "index.json").read_text())


def clip_rows(doc: dict) -> dict[str, dict]:
    return {c["clip_id"]: c for c in doc["clips"]}


class Batch:
    def __init__(self, project: Project, reports: dict, how_rotated: str):
        self.project = project
        self.reports = reports
        self.how_rotated = how_rotated
        self.manifest = json.loads((project.root / "data/interim/raw_clips/manifest.json").read_text())
        self.rows = {c["clip_id"]: c for c in self.manifest["clips"]}
        self.tracks = clip_rows(index("region_tracks"))
        self.gt = clip_rows(index("eggplant_gt"))
        self.lq = clip_rows(index("mosaic_lq"))
        self.dataset = index("restoration_dataset")

    def dataset_scenes(self, clip_id: str) -> list[dict]:
        return [r for r in self.dataset["scenes"] if r["clip_id"] == clip_id]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Every bad input beside one good clip in a single raw folder; the five stages run once over it."""
    need_media()
    project = Project(tmp_path_factory.mktemp("bad_inputs") / "proj")
    project.write_params()
    raw = project.raw
    good = project.add_sample(GOOD)
    frames = carphone_frames()

    (raw / "empty.mp4").write_bytes(b"")
    data = good.read_bytes()
    (raw / "truncated.mp4").write_bytes(data[: int(len(data) * 0.4)])
    write_faststart_clip(raw / "faststart.mp4", frames)
    fast = (raw / "faststart.mp4").read_bytes()
    (raw / "faststart.mp4").unlink()
    (raw / "truncated_faststart.mp4").write_bytes(fast[: int(len(fast) * 0.4)])
    (raw / "partial_faststart.mp4").write_bytes(fast[: int(len(fast) * 0.85)])  # most frames still decode
    (raw / "notes.mp4").write_text("Shot list for Tuesday:\n- kitchen, wide\n- street, close\n")
    write_clip(raw / "one_frame.mp4", frames[:1])
    write_clip(raw / "gradient.mp4", synthetic_frames(30, 144, 176))
    write_clip(raw / "odd_size.mp4", [f[:143, :175] for f in frames])
    gray = [np.round(f.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8) for f in frames]
    write_video(raw / "gray.mp4", gray, 25, EncoderSettings(codec="libx264", crf=18, preset="ultrafast", pix_fmt="gray", threads=1))
    how_rotated = write_rotated_clip(raw / "rotated.mp4", frames)

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project.root)
        reports = {name: run_stage(name, project.params()) for name in STAGES}
        yield Batch(project, reports, how_rotated)


def assert_quarantined(batch: Batch, clip_id: str, *needles: str) -> str:
    row = batch.rows[clip_id]
    assert row["status"] == "quarantined", row
    reason = row["reason"]
    assert reason and f"data/raw/{clip_id}" in reason, reason
    for needle in needles:
        assert needle in reason, reason
    # a quarantined clip goes no further
    assert clip_id not in batch.tracks and clip_id not in batch.gt and clip_id not in batch.lq
    assert not batch.dataset_scenes(clip_id)
    assert clip_id in batch.reports["raw_clips"].output.metadata["quarantine"]
    return reason


# ------------------------------------------------------------------------------------------------ the batch


def test_good_clip_goes_all_the_way(batch):
    row = batch.rows[GOOD]
    assert row["status"] == "ok" and row["reason"] is None
    assert (row["width"], row["height"], row["frames"], row["rotation"]) == (176, 144, 120, 0)
    assert batch.tracks[GOOD]["status"] == "ok" and batch.tracks[GOOD]["scenes"] > 0
    assert batch.gt[GOOD]["status"] == "ok" and batch.lq[GOOD]["status"] == "ok"
    scenes = batch.dataset_scenes(GOOD)
    assert len(scenes) == batch.tracks[GOOD]["scenes"]
    assert sum(s["frames_count"] for s in scenes) == batch.tracks[GOOD]["scene_frames"] == 120
    assert batch.dataset["skipped_clips"] == []


def test_bad_clips_do_not_change_the_good_clips_outcome(batch, tmp_path, monkeypatch):
    """The good clip's tracks and scenes are what it gets alone in a folder."""
    solo = Project(tmp_path / "solo")
    solo.write_params()
    solo.add_sample(GOOD)
    monkeypatch.chdir(solo.root)
    run_stage("raw_clips", solo.params())
    run_stage("region_tracks", solo.params())
    alone = json.loads(Path(f"data/interim/region_tracks/{GOOD}.json").read_text())
    together = json.loads((batch.project.root / f"data/interim/region_tracks/{GOOD}.json").read_text())
    assert together["scenes"] == alone["scenes"]
    assert together["tracks"] == alone["tracks"]


def test_stage_counts(batch):
    m = batch.manifest["counts"]
    quarantined = {c for c, r in batch.rows.items() if r["status"] == "quarantined"}
    assert {"empty.mp4", "notes.mp4", "one_frame.mp4", "truncated_faststart.mp4"} <= quarantined
    assert m["total"] == len(batch.rows) == 11
    assert m["ok"] + m["quarantined"] == m["total"]
    assert batch.reports["raw_clips"].output.metadata["clips_quarantined"] == m["quarantined"]
    # every ok clip was tried by region_tracks, every quarantined one was not
    assert set(batch.tracks) == {c for c, r in batch.rows.items() if r["status"] == "ok"}
    meta = batch.reports["region_tracks"].output.metadata
    failed = [c for c, r in batch.tracks.items() if r["status"] != "ok"]
    assert meta["failed_clips"] == len(failed)
    for clip_id in failed:
        assert clip_id in meta["failures"]


def test_zero_byte_file_is_quarantined(batch):
    reason = assert_quarantined(batch, "empty.mp4")
    assert "empty" in reason and "0 bytes" in reason


def test_truncated_clip_is_quarantined_or_fails_alone(batch):
    """carphone's moov index sits at the end: its first 40% has no index and cannot be opened at all."""
    row = batch.rows["truncated.mp4"]
    if row["status"] == "quarantined":
        assert_quarantined(batch, "truncated.mp4")
        assert any(word in row["reason"] for word in ("not a readable video", "corrupt", "truncated", "no frame"))
    else:  # it probed: the failure must be recorded downstream, with the file named
        rec = batch.tracks["truncated.mp4"]
        assert rec["status"] == "failed" and "data/raw/truncated.mp4" in rec["error"]
    assert batch.dataset_scenes(GOOD)


def test_truncated_clip_with_index_in_front_is_quarantined_as_partial(batch):
    """With the index in front the cut file opens and its header still promises every frame; only 40 % of the
    bytes are left, so fewer than `data.min_complete_fraction` (0.5) of the promised frames decode."""
    reason = assert_quarantined(batch, "truncated_faststart.mp4", "partial file", "data.min_complete_fraction=0.5")
    row = batch.rows["truncated_faststart.mp4"]
    assert row["frames_promised"] == 120 and 0 < row["frames"] < 60, row
    assert f"{row['frames']} of the 120 frames its header promises decode" in reason


def test_partial_clip_is_kept_with_the_frames_that_decode(batch):
    """85 % of the same file: kept, its row saying how many of the promised frames decode, and every later
    stage reads only those (the undecodable tail never fails the clip)."""
    row = batch.rows["partial_faststart.mp4"]
    assert row["status"] == "ok" and row["frames_promised"] == 120 and 60 <= row["frames"] < 120, row
    assert batch.manifest["counts"]["partial"] == 1
    assert batch.rows[GOOD]["frames_promised"] == batch.rows[GOOD]["frames"] == 120
    rec = batch.tracks["partial_faststart.mp4"]
    assert rec["status"] == "ok", rec
    scenes = batch.dataset_scenes("partial_faststart.mp4")
    assert scenes and max(s["frames_count"] for s in scenes) <= row["frames"]


def test_the_partial_threshold_is_a_knob(tmp_path):
    from assets.raw_clips import probe_clip
    from orchestration.config import DataParams

    frames = carphone_frames()[:40]
    write_faststart_clip(tmp_path / "full.mp4", frames)
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.85)])
    kept = probe_clip(tmp_path / "cut.mp4", tmp_path, DataParams(min_complete_fraction=0.0))
    assert kept["status"] == "ok" and kept["frames"] < kept["frames_promised"] == 40
    strict = probe_clip(tmp_path / "cut.mp4", tmp_path, DataParams(min_complete_fraction=1.0))
    assert strict["status"] == "quarantined" and "partial file" in strict["reason"] and "cut.mp4" in strict["reason"]
    assert probe_clip(tmp_path / "full.mp4", tmp_path, DataParams(min_complete_fraction=1.0))["status"] == "ok"
    assert len(list(read_frames(tmp_path / "cut.mp4", stop=kept["frames"]))) == kept["frames"]


def test_text_file_named_mp4_is_quarantined(batch):
    assert_quarantined(batch, "notes.mp4", "not a readable video")


def test_one_frame_clip_is_quarantined(batch):
    reason = assert_quarantined(batch, "one_frame.mp4", "frames outside")
    assert "1 frames" in reason and "[8," in reason
    assert batch.rows["one_frame.mp4"]["frames"] == 1  # the probe is kept for the record


def test_clip_without_regions_is_ok_but_yields_nothing(batch):
    row = batch.rows["gradient.mp4"]
    assert row["status"] == "ok" and row["frames"] == 30
    rec = batch.tracks["gradient.mp4"]
    assert rec["status"] == "ok" and rec["scenes"] == 0 and rec["scene_frames"] == 0
    assert batch.reports["region_tracks"].output.metadata["clips_without_regions"] >= 1
    record = json.loads((batch.project.root / "data/interim/region_tracks/gradient.mp4.json").read_text())
    assert record["scenes"] == [] and record["detections"] == 0
    # nothing to render, nothing in the dataset, and not reported as skipped either (it had no scenes)
    assert "gradient.mp4" not in batch.gt and "gradient.mp4" not in batch.lq
    assert not batch.dataset_scenes("gradient.mp4")
    assert "gradient.mp4" not in batch.dataset["skipped_clips"]


def _items(batch: Batch, clip_id: str):
    root = batch.project.root / "data/datasets/restoration"
    return [i for split in ("train", "val") for i in RestorationDataset(root, split) if i.meta["name"] == clip_id]


def test_odd_frame_size_yields_scenes_that_decode_at_scene_shape(batch):
    row = batch.rows["odd_size.mp4"]
    assert row["status"] == "ok" and (row["width"], row["height"]) == (175, 143)
    assert batch.tracks["odd_size.mp4"]["scenes"] > 0
    items = _items(batch, "odd_size.mp4")
    assert items and len(items) == len(batch.dataset_scenes("odd_size.mp4"))
    for item in items:
        assert item.meta["orig_shape"] == [143, 175]
        shape = tuple(item.meta["scene_shape"])
        for which in ("gt", "lq", "mask", "lq_mask"):
            frames = RestorationDataset.read(item, which)
            assert len(frames) == item.frames_count, which
            assert all(f.shape[:2] == shape for f in frames), (which, frames[0].shape, shape)


def test_grayscale_clip_goes_through(batch):
    frames = list(read_frames(batch.project.raw / "gray.mp4", 0, 3))
    assert all((f[..., 0] == f[..., 1]).all() and (f[..., 1] == f[..., 2]).all() for f in frames)
    assert batch.rows["gray.mp4"]["status"] == "ok"
    assert batch.tracks["gray.mp4"]["scenes"] > 0
    assert batch.gt["gray.mp4"]["status"] == "ok" and batch.lq["gray.mp4"]["status"] == "ok"
    assert batch.dataset_scenes("gray.mp4")


def test_rotated_clip_is_read_upright(batch):
    print(f"rotated clip written with: {batch.how_rotated}")
    path = batch.project.raw / "rotated.mp4"
    with av.open(str(path)) as container:
        stored = container.streams.video[0]
        assert (stored.width, stored.height) == (144, 176)  # coded on its side
    row = batch.rows["rotated.mp4"]
    assert row["status"] == "ok"
    assert row["rotation"] == 90
    assert (row["width"], row["height"]) == (176, 144)  # the displayed size: width and height swapped
    probe = probe_video(path)
    assert (probe.rotation, probe.width, probe.height) == (90, 176, 144)
    upright = list(read_frames(path))
    assert len(upright) == 120
    assert all(f.shape == (144, 176, 3) for f in upright)
    original = carphone_frames()
    for i in (0, 60, 119):
        err = np.abs(upright[i].astype(np.int16) - original[i].astype(np.int16)).mean()
        assert err < 8, f"frame {i} is not upright (mean abs diff {err:.1f})"
        # and it is not one of the wrong orientations
        wrong = np.abs(np.ascontiguousarray(np.rot90(upright[i], 2)).astype(np.int16) - original[i]).mean()
        assert wrong > 3 * err
    # downstream sees the upright frames: the face is found and scenes are cut in display coordinates
    rec = json.loads((batch.project.root / "data/interim/region_tracks/rotated.mp4.json").read_text())
    assert (rec["width"], rec["height"]) == (176, 144)
    assert rec["scenes"]
    for scene in rec["scenes"]:
        for x0, y0, x1, y1 in scene["crops"]:
            assert 0 <= x0 < x1 <= 176 and 0 <= y0 < y1 <= 144
    items = _items(batch, "rotated.mp4")
    assert items and all(i.meta["orig_shape"] == [144, 176] for i in items)


# ------------------------------------------------------------------------------------------------ params


BAD_PARAMS = [
    # (dotted key, value, what the message must say it allows)
    ("tracking.iou_threshold", 1.5, ["less than or equal to 1"]),
    ("dataset.crf", 99, ["51"]),
    ("mosaic.modes", ["foo"], ["square_mid", "square_avg", "rect_avg"]),
    ("detection.faces", "dlib", ["yunet", "haar", "none"]),
    ("data.min_frames", 0, ["greater than 0"]),
    ("data.min_complete_fraction", 1.5, ["less than or equal to 1"]),
]


@pytest.mark.parametrize("dotted,value,allowed", BAD_PARAMS, ids=[b[0] for b in BAD_PARAMS])
def test_out_of_range_param_names_key_value_and_what_is_allowed(project, dotted, value, allowed):
    path = project.write_params(**{dotted.replace(".", "__"): value})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert str(path) in message
    assert dotted in message, message
    shown = value[0] if isinstance(value, list) else value
    assert repr(shown) in message or str(shown) in message, message
    for word in allowed:
        assert word in message, message


def test_unknown_param_key_is_named(project):
    path = project.write_params(tracking__iou_treshold=0.3)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "tracking.iou_treshold" in str(err.value) and "unknown key" in str(err.value)


def test_overrides_are_validated_too(project):
    with pytest.raises(ConfigError, match=r"tracking\.iou_threshold = 1\.5"):
        load_params(project.root / "params.yaml", {"tracking.iou_threshold": 1.5})


def _cli(args: list[str], cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    return subprocess.run([str(AUBERGINE), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.mark.parametrize(
    "sections,needles",
    [
        ({"tracking__iou_threshold": 1.5}, ["tracking.iou_threshold", "1.5", "less than or equal to 1"]),
        ({"dataset__crf": 99, "mosaic__modes": ["foo"]}, ["dataset.crf", "99", "mosaic.modes", "'foo'", "square_mid"]),
        ({"tracking__iou_treshold": 0.3}, ["tracking.iou_treshold", "unknown key"]),
    ],
    ids=["range", "two-errors", "unknown-key"],
)
def test_params_check_cli_exits_2_with_message_and_no_traceback(project, sections, needles):
    path = project.write_params(**sections)
    result = _cli(["params", "check", "-p", str(path)], project.root)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr + result.stdout
    assert str(path) in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    good = project.write_params()
    ok = _cli(["params", "check", "-p", str(good)], project.root)
    assert ok.returncode == 0 and "valid" in ok.stdout


# ------------------------------------------------------------------------------------------------ provisioning


def test_missing_raw_folder_names_it_and_make_setup(project):
    from assets.raw_clips import RawFolderError

    path = project.write_params(data__raw_dir="data/no_such_clips")
    with pytest.raises(RawFolderError) as err:
        run_stage("raw_clips", project.params())
    assert "data/no_such_clips" in str(err.value) and "make setup" in str(err.value)
    assert not (project.root / "data/interim/raw_clips").exists()
    result = _cli(["stage", "raw_clips", "-p", str(path)], project.root)
    assert result.returncode == 2, result
    assert "data/no_such_clips" in result.stderr and "make setup" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def _sidecar(clip: Path, frames: int, box=(60, 40, 50, 60)) -> None:
    """COCO boxes for every frame: the clip is tracked without any detector model."""
    doc = {
        "images": [{"id": i + 1, "frame_index": i, "file_name": f"frame_{i:05d}.png"} for i in range(frames)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": list(box)} for i in range(frames)],
        "categories": [{"id": 1, "name": "face"}],
    }
    clip.with_name(clip.name + ".coco.json").write_text(json.dumps(doc))


def _lfs_pointer(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4\nsize 232589\n"
    )
    return path


def test_lfs_pointer_model_fails_only_the_clips_that_need_it(project):
    """carphone needs YuNet (a Git-LFS pointer here) and fails with a message naming the file and LFS; a clip
    with sidecar COCO boxes needs no model and goes all the way to the dataset."""
    pointer = _lfs_pointer(project.root / "models" / "yunet.onnx")
    project.write_params(detection__yunet_model=str(pointer))
    project.add_sample(GOOD)
    annotated = write_clip(project.raw / "annotated.mp4", synthetic_frames(30, 144, 176, seed=5))
    _sidecar(annotated, 30)
    reports = {name: run_stage(name, project.params()) for name in STAGES}
    tracks = clip_rows(index("region_tracks"))
    failed = tracks[GOOD]
    assert failed["status"] == "failed"
    assert str(pointer) in failed["error"] and "LFS" in failed["error"]
    assert "Traceback" not in failed["error"]
    assert reports["region_tracks"].output.metadata["failed_clips"] == 1
    assert str(pointer) in reports["region_tracks"].output.metadata["failures"]
    assert tracks["annotated.mp4"]["status"] == "ok" and tracks["annotated.mp4"]["scenes"] == 1
    scenes = index("restoration_dataset")["scenes"]
    assert {s["clip_id"] for s in scenes} == {"annotated.mp4"}
    assert scenes[0]["frames_count"] == 30


@pytest.mark.parametrize("problem", ["missing", "lfs"])
def test_model_problem_on_every_clip_raises_naming_the_file(project, problem):
    model = project.root / "models" / "face_detection_yunet_2023mar.onnx"
    if problem == "lfs":
        _lfs_pointer(model)
    path = project.write_params(detection__yunet_model=str(model))
    project.add_sample(GOOD)
    run_stage("raw_clips", project.params())
    from orchestration.lineage import StageInputError

    with pytest.raises(StageInputError) as err:
        run_stage("region_tracks", project.params())
    message = str(err.value)
    assert "every clip failed" in message and GOOD in message
    assert str(model) in message
    if problem == "lfs":
        assert "Git-LFS pointer" in message and "git lfs pull" in message
    else:
        assert "not found" in message and "make setup" in message
    result = _cli(["stage", "region_tracks", "-p", str(path)], project.root)
    assert result.returncode == 2, result
    assert str(model) in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_a_stage_where_every_clip_failed_keeps_the_previous_output(project):
    project.add_sample(GOOD)
    run_stage("raw_clips", project.params())
    run_stage("region_tracks", project.params())
    before = (project.root / "data/interim/region_tracks/index.json").read_text()
    assert clip_rows(json.loads(before))[GOOD]["status"] == "ok"
    pointer = _lfs_pointer(project.root / "models" / "yunet.onnx")
    project.write_params(detection__yunet_model=str(pointer))
    from orchestration.lineage import StageInputError

    with pytest.raises(StageInputError):
        run_stage("region_tracks", project.params())
    assert (project.root / "data/interim/region_tracks/index.json").read_text() == before
