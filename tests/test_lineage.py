"""The data lineage end to end on two small real clips: the restoration dataset it writes is a Lada
version-2 dataset (fields, types, paths, frame counts, pads, split by clip), our reader reads Lada's own
compact meta files, an interrupted materialization never leaves a half-written output, and re-running a
stage gives the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, Project, need_media

from assets.lada_meta import (
    BLOCK_SIZE_KEYS,
    GT_DIR,
    LQ_DIR,
    LQ_MASK_DIR,
    MASK_DIR,
    META_DIR,
    MOSAIC_KEYS,
    V2_FIELDS,
    DatasetFormatError,
    RestorationDataset,
    validate_record,
)
from assets.tracks import centred_pad, cut_and_pad, unpad
from assets.video import (
    MASK_ENCODER,
    EncoderSettings,
    probe_video,
    read_frames,
    write_video,
)
from orchestration.runner import run_stage

STAGES = ("raw_clips", "region_tracks", "eggplant_gt", "mosaic_lq", "restoration_dataset")
CLIPS = ("carphone_pristine.mp4", "astronaut_zoom.mp4")
AUBERGINE = ROOT / ".venv" / "bin" / "aubergine"
DATASET = Path("data/datasets/restoration")


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """carphone + astronaut_zoom through all five stages, once for the module; cwd is the project root."""
    need_media()
    project = Project(tmp_path_factory.mktemp("lineage") / "proj")
    project.write_params()
    for name in CLIPS:
        project.add_sample(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project.root)
        for name in STAGES:
            run_stage(name, project.params())
        yield project


def forget_clips(root: Path) -> None:
    """Empty the per-clip store (assets/clip_cache.py), so that the next run computes every clip again."""
    import shutil

    shutil.rmtree(root / "data/cache/clips", ignore_errors=True)


def items(split: str):
    return list(RestorationDataset(DATASET, split))


def scene_record(item) -> dict:
    """The region_tracks scene behind a dataset item (stem = '<clip>-<scene id, 6 digits>-')."""
    clip = item.meta["name"]
    scene_id = int(item.meta_path.stem[len(clip) + 1 : -1])
    record = json.loads(Path(f"data/interim/region_tracks/{clip}.json").read_text())
    (scene,) = [s for s in record["scenes"] if s["id"] == scene_id]
    return scene


# ------------------------------------------------------------------------------------------------ the dataset


def test_reader_loads_train_and_val_with_every_v2_field(lineage):
    loaded = {split: items(split) for split in ("train", "val")}
    assert loaded["train"] and loaded["val"]
    index = json.loads((DATASET / "index.json").read_text())
    assert len(index["scenes"]) == sum(len(v) for v in loaded.values())
    for split, split_items in loaded.items():
        for item in split_items:
            raw_text = item.meta_path.read_text()
            meta = json.loads(raw_text)
            validate_record(meta, str(item.meta_path))
            assert list(meta) == list(V2_FIELDS), "fields in Lada's order, version last"
            assert meta["version"] == 2 and type(meta["version"]) is int
            assert isinstance(meta["name"], str) and meta["name"] in CLIPS
            assert type(meta["fps"]) is float and meta["fps"] > 0
            assert type(meta["frames_count"]) is int and meta["frames_count"] >= 12
            for key in ("orig_shape", "scene_shape"):
                assert len(meta[key]) == 2 and all(type(v) is int and v > 0 for v in meta[key])
            assert meta["scene_shape"][0] <= meta["orig_shape"][0] and meta["scene_shape"][1] <= meta["orig_shape"][1]
            assert list(meta["base_mosaic_block_size"]) == list(BLOCK_SIZE_KEYS)
            assert all(type(v) is float and v > 0 for v in meta["base_mosaic_block_size"].values())
            assert len(meta["pad"]) == meta["frames_count"]
            assert all(len(p) == 4 and all(type(v) is int and v >= 0 for v in p) for p in meta["pad"])
            mosaic = meta["mosaic"]
            assert set(mosaic) == set(MOSAIC_KEYS)
            assert mosaic["mod"] in ("squa_mid", "squa_avg", "rect_avg")
            assert type(mosaic["mosaic_size"]) is int and mosaic["mosaic_size"] >= 4
            assert isinstance(mosaic["rect_ratio"], float)
            assert type(mosaic["feather_size"]) is int and (mosaic["feather_size"] == -1 or mosaic["feather_size"] > 0)
            for key in ("video_quality", "watermark_detected", "nudenet_nsfw_detected", "nudenet_nsfw_detected_classes",
                        "censoring_detected"):
                assert meta[key] is None  # unknown, not guessed
            # the index row agrees with the meta file
            (row,) = [r for r in index["scenes"] if r["name"] == item.meta_path.stem]
            assert row["split"] == split and row["frames_count"] == meta["frames_count"]
            assert [row["scene_h"], row["scene_w"]] == meta["scene_shape"]


def test_relative_paths_follow_lada_and_resolve_inside_the_split(lineage):
    subdirs = {
        "relative_nsfw_video_path": (GT_DIR, ".mp4"),
        "relative_mask_video_path": (MASK_DIR, ".mkv"),
        "relative_mosaic_nsfw_video_path": (LQ_DIR, ".mp4"),
        "relative_mosaic_mask_video_path": (LQ_MASK_DIR, ".mkv"),
    }
    for split in ("train", "val"):
        split_root = (DATASET / split).resolve()
        for item in items(split):
            stem = item.meta_path.stem
            for key, (sub, ext) in subdirs.items():
                rel = item.meta[key]
                assert rel == f"../{sub}/{stem}{ext}"
                assert rel.startswith("../crop_unscaled_")
                # Lada resolves `Path(meta_root).joinpath(rel)` with meta_root = the crop_unscaled_meta folder
                lada_path = Path(DATASET / split / META_DIR).joinpath(rel)
                assert lada_path.is_file(), lada_path
                assert lada_path.resolve().parent.parent == split_root
            assert item.gt_path.is_file() and item.mask_path.is_file()
            assert item.lq_path.is_file() and item.lq_mask_path.is_file()


def test_every_stream_has_frames_count_frames_at_scene_shape(lineage):
    for split in ("train", "val"):
        for item in items(split):
            shape = tuple(item.meta["scene_shape"])
            for which in ("gt", "lq", "mask", "lq_mask"):
                frames = RestorationDataset.read(item, which)
                assert len(frames) == item.frames_count, (item.meta_path.name, which)
                assert all(f.shape[:2] == shape for f in frames), (item.meta_path.name, which)
                if which.endswith("mask"):
                    assert all(f.ndim == 2 for f in frames)
                    assert set(np.unique(np.stack(frames))) <= {0, 255}
                else:
                    assert all(f.ndim == 3 and f.shape[2] == 3 for f in frames)
            path = {"gt": item.gt_path, "lq": item.lq_path}
            for which, p in path.items():
                assert probe_video(p).frames == item.frames_count


def test_pads_undo_to_the_recorded_crops_and_the_border_is_black(lineage):
    checked = 0
    for split in ("train", "val"):
        for item in items(split):
            scene = scene_record(item)
            assert [list(p) for p in scene["pads"]] == item.meta["pad"]
            assert list(scene["scene_shape"]) == item.meta["scene_shape"]
            assert scene["stop"] - scene["start"] == item.frames_count
            masks = RestorationDataset.read(item, "mask")
            lq_masks = RestorationDataset.read(item, "lq_mask")
            gts = RestorationDataset.read(item, "gt")
            unpadded = RestorationDataset.read(item, "gt", unpadded=True)
            for j, (pad, crop) in enumerate(zip(item.pads, scene["crops"])):
                x0, y0, x1, y1 = crop
                assert unpad(gts[j], pad).shape[:2] == (y1 - y0, x1 - x0)
                assert unpadded[j].shape[:2] == (y1 - y0, x1 - x0)
                top, bottom, left, right = pad
                assert pad == centred_pad(y1 - y0, x1 - x0, *item.meta["scene_shape"])
                for mask in (masks[j], lq_masks[j]):
                    border = np.ones(mask.shape, bool)
                    border[top : mask.shape[0] - bottom, left : mask.shape[1] - right] = False
                    assert not mask[border].any(), f"{item.meta_path.name} frame {j}: mask is not black in the pad"
                # the region itself is inside the unpadded crop
                assert unpad(masks[j], pad).any()
                checked += 1
    assert checked == sum(i.frames_count for s in ("train", "val") for i in items(s))


def _shifted(crop, dx: int, width: int):
    x0, y0, x1, y1 = crop
    return (x0 + dx, y0, x1 + dx, y1) if x1 + dx <= width else (x0 - dx, y0, x1 - dx, y1)


def test_crops_line_up_with_the_source_frames(lineage):
    """Inside the unpadded window: outside the mosaic, LQ is the source crop; outside the region box, GT is too
    (up to x264 at CRF 15, about 2-3 levels). A crop one pixel off is clearly worse, so this checks alignment."""
    for split in ("train", "val"):
        for item in items(split):
            scene = scene_record(item)
            clip = Path("data/raw") / item.meta["name"]
            picks = sorted({0, item.frames_count // 2, item.frames_count - 1})
            source = {j: next(read_frames(clip, scene["start"] + j, scene["start"] + j + 1)) for j in picks}
            lq = RestorationDataset.read(item, "lq")
            lq_mask = RestorationDataset.read(item, "lq_mask")
            gt = RestorationDataset.read(item, "gt")
            for j in picks:
                crop, pad, region = scene["crops"][j], item.pads[j], scene["regions"][j]
                top, bottom, left, right = pad
                window = np.zeros(lq_mask[j].shape, bool)
                window[top : window.shape[0] - bottom, left : window.shape[1] - right] = True
                expected = cut_and_pad(source[j], crop, pad)
                off_by_one = cut_and_pad(source[j], _shifted(crop, 1, source[j].shape[1]), pad)
                keep = window & (lq_mask[j] == 0)
                err = np.abs(lq[j][keep].astype(int) - expected[keep]).mean()
                assert err < 4.5, (item.meta_path.name, j, err)
                assert np.abs(lq[j][keep].astype(int) - off_by_one[keep]).mean() > err + 1.5
                mosaiced = window & (lq_mask[j] > 0)
                assert np.abs(lq[j][mosaiced].astype(int) - expected[mosaiced]).mean() > 2 * err  # the mosaic is there
                outside = window.copy()
                rx0, ry0 = region[0] - crop[0] + left, region[1] - crop[1] + top
                rx1, ry1 = region[2] - crop[0] + left, region[3] - crop[1] + top
                outside[ry0:ry1, rx0:rx1] = False
                err = np.abs(gt[j][outside].astype(int) - expected[outside]).mean()
                assert err < 4.5, (item.meta_path.name, j, err)
                inside = window & ~outside
                assert np.abs(gt[j][inside].astype(int) - expected[inside]).mean() > 10  # the eggplant is there


def test_split_is_by_clip(lineage):
    clips = {split: {i.meta["name"] for i in items(split)} for split in ("train", "val")}
    assert not clips["train"] & clips["val"]
    assert clips["train"] | clips["val"] == set(CLIPS)
    index = json.loads((DATASET / "index.json").read_text())
    for clip in CLIPS:
        assert len({r["split"] for r in index["scenes"] if r["clip_id"] == clip}) == 1
    # every file of a split belongs to a clip of that split
    for split in ("train", "val"):
        for sub in (META_DIR, GT_DIR, MASK_DIR, LQ_DIR, LQ_MASK_DIR):
            for f in (DATASET / split / sub).iterdir():
                assert any(f.name.startswith(c + "-") for c in clips[split]), f


# ------------------------------------------------------------------------------------------------ Lada compatibility

LADA_ORDER = [
    "name", "fps", "frames_count", "orig_shape", "scene_shape", "base_mosaic_block_size", "pad",
    "relative_nsfw_video_path", "relative_mask_video_path", "relative_mosaic_nsfw_video_path",
    "relative_mosaic_mask_video_path", "mosaic", "video_quality", "watermark_detected", "nudenet_nsfw_detected",
    "nudenet_nsfw_detected_classes", "censoring_detected", "version",
]


def lada_v2_fields(d: dict) -> dict:
    """The keys Lada's RestorationDatasetMetadataV2.from_json_file indexes (a KeyError there is a crash in Lada)."""
    out = {k: d[k] for k in ("name", "fps", "frames_count", "orig_shape", "scene_shape", "pad",
                             "relative_nsfw_video_path", "relative_mask_video_path")}
    out["block"] = {k: d["base_mosaic_block_size"][k] for k in BLOCK_SIZE_KEYS}
    out["mosaic"] = {k: d["mosaic"][k] for k in MOSAIC_KEYS} if d.get("mosaic") else None
    if d.get("video_quality"):
        out["quality"] = [d["video_quality"][k] for k in ("aesthetic", "technical", "overall")]
    if d.get("nudenet_nsfw_detected_classes"):
        out["classes"] = [d["nudenet_nsfw_detected_classes"][k] for k in ("MALE_GENITALIA_EXPOSED", "FEMALE_GENITALIA_EXPOSED")]
    return out


def _write_lada_scene(split_root: Path, stem: str, crops, scene_shape, mosaic: bool, rng) -> dict:
    """Videos as Lada writes them (padded crops; FFV1 masks in Matroska) and the meta dict, Lada-filled."""
    sh, sw = scene_shape
    pads = [centred_pad(y1 - y0, x1 - x0, sh, sw) for x0, y0, x1, y1 in crops]
    frame = rng.integers(30, 226, size=(120, 160, 3), dtype=np.uint8)
    gts, masks = [], []
    for crop, pad in zip(crops, pads):
        gts.append(cut_and_pad(frame, crop, pad))
        m = np.zeros(frame.shape[:2], np.uint8)
        m[crop[1] + 2 : crop[3] - 2, crop[0] + 2 : crop[2] - 2] = 255
        masks.append(cut_and_pad(m, crop, pad))
    enc = EncoderSettings(crf=15, preset="ultrafast", threads=1)
    write_video(split_root / GT_DIR / f"{stem}.mp4", gts, 30, enc)
    write_video(split_root / MASK_DIR / f"{stem}.mkv", masks, 30, MASK_ENCODER)
    if mosaic:
        write_video(split_root / LQ_DIR / f"{stem}.mp4", gts, 30, enc)
        write_video(split_root / LQ_MASK_DIR / f"{stem}.mkv", masks, 30, MASK_ENCODER)
    values = {
        "name": "lada_source.mp4",
        "fps": 30,  # Lada stores the source's fps as it comes: an int here
        "frames_count": len(crops),
        "orig_shape": [120, 160],
        "scene_shape": [sh, sw],
        "base_mosaic_block_size": {"mosaic_size_v3": 4, "mosaic_size_v2": 2.6, "mosaic_size_v1_normal": 5.3,
                                   "mosaic_size_v1_bounding": 5.9},
        "pad": [list(p) for p in pads],
        "relative_nsfw_video_path": f"../{GT_DIR}/{stem}.mp4",
        "relative_mask_video_path": f"../{MASK_DIR}/{stem}.mkv",
        "relative_mosaic_nsfw_video_path": f"../{LQ_DIR}/{stem}.mp4" if mosaic else None,
        "relative_mosaic_mask_video_path": f"../{LQ_MASK_DIR}/{stem}.mkv" if mosaic else None,
        "mosaic": {"mod": "rect_avg", "rect_ratio": 1.3, "mosaic_size": 9, "feather_size": -1} if mosaic else None,
        "video_quality": {"aesthetic": 0.41, "technical": 0.62, "overall": 0.55},
        "watermark_detected": False,
        "nudenet_nsfw_detected": True,
        "nudenet_nsfw_detected_classes": {"MALE_GENITALIA_EXPOSED": False, "FEMALE_GENITALIA_EXPOSED": True},
        "censoring_detected": False,
        "version": 2,
    }
    return {k: values[k] for k in LADA_ORDER}, pads


def _lada_split(root: Path) -> Path:
    """`root/train` with Lada's five folders."""
    split_root = root / "train"
    for sub in (META_DIR, GT_DIR, MASK_DIR, LQ_DIR, LQ_MASK_DIR):
        (split_root / sub).mkdir(parents=True)
    return split_root


def test_reader_reads_a_dataset_written_the_way_lada_writes_it(tmp_path):
    rng = np.random.default_rng(11)
    root = tmp_path / "lada_dataset"
    split_root = _lada_split(root)
    scenes = {
        "lada_source.mp4-000001-": ([(10, 12, 60, 70), (11, 12, 62, 71), (12, 13, 63, 73), (13, 13, 64, 74)], True),
        "lada_source.mp4-000002-": ([(90, 40, 131, 99), (91, 40, 133, 100), (92, 41, 134, 101)], False),
    }
    expected = {}
    for stem, (crops, mosaic) in scenes.items():
        shape = (max(c[3] - c[1] for c in crops), max(c[2] - c[0] for c in crops))
        record, pads = _write_lada_scene(split_root, stem, crops, shape, mosaic, rng)
        text = json.dumps(record)  # Lada: json.dump(asdict(meta)) with version appended - compact, one line
        assert "\n" not in text and list(json.loads(text))[-1] == "version"
        (split_root / META_DIR / f"{stem}.json").write_text(text)
        expected[stem] = (crops, pads, shape, mosaic)

    dataset = RestorationDataset(root, "train")
    assert sorted(i.meta_path.stem for i in dataset) == sorted(scenes)
    for item in dataset:
        crops, pads, shape, mosaic = expected[item.meta_path.stem]
        assert item.frames_count == len(crops) and item.pads == [tuple(p) for p in pads]
        assert item.meta["fps"] == 30 and item.meta["video_quality"]["overall"] == 0.55
        gt = RestorationDataset.read(item, "gt")
        assert len(gt) == len(crops) and all(f.shape == (*shape, 3) for f in gt)
        crops_back = RestorationDataset.read(item, "gt", unpadded=True)
        assert [f.shape[:2] for f in crops_back] == [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in crops]
        masks = RestorationDataset.read(item, "mask", unpadded=True)
        assert all(m[2:-2, 2:-2].min() == 255 and m[0].max() == 0 for m in masks)
        part = RestorationDataset.read(item, "gt", start=1, stop=3, unpadded=True)
        assert [f.shape[:2] for f in part] == [f.shape[:2] for f in crops_back[1:3]]
        if mosaic:
            assert len(RestorationDataset.read(item, "lq")) == len(crops)
            assert len(RestorationDataset.read(item, "lq_mask")) == len(crops)
        else:
            assert item.lq_path is None and item.lq_mask_path is None
            with pytest.raises(DatasetFormatError, match="no lq video"):
                RestorationDataset.read(item, "lq")

    # the reader refuses what Lada would choke on, naming the file
    bad = json.loads((split_root / META_DIR / "lada_source.mp4-000001-.json").read_text())
    del bad["scene_shape"]
    (split_root / META_DIR / "lada_source.mp4-000003-.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetFormatError, match=r"lada_source\.mp4-000003-\.json: missing field 'scene_shape'"):
        RestorationDataset(root, "train")



def test_a_meta_path_leaving_the_dataset_root_is_rejected_and_the_other_scenes_load(tmp_path):
    rng = np.random.default_rng(12)
    root = tmp_path / "shared_dataset"
    split_root = _lada_split(root)
    crops = [(10, 12, 60, 70), (11, 12, 62, 71), (12, 13, 63, 73)]
    for stem in ("good.mp4-000001-", "escapes.mp4-000001-", "absolute.mp4-000001-"):
        record, _ = _write_lada_scene(split_root, stem, crops, (60, 51), True, rng)
        if stem.startswith("escapes"):
            # the file exists, outside the dataset: reading it must still be refused
            outside = tmp_path / "somewhere" / "else.mp4"
            outside.parent.mkdir()
            (split_root / GT_DIR / f"{stem}.mp4").rename(outside)
            record["relative_nsfw_video_path"] = "../../../somewhere/else.mp4"
        if stem.startswith("absolute"):
            record["relative_mosaic_nsfw_video_path"] = str((split_root / LQ_DIR / f"{stem}.mp4").resolve())
        (split_root / META_DIR / f"{stem}.json").write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="scene left out"):
        dataset = RestorationDataset(root, "train")
    assert [item.meta_path.stem for item in dataset] == ["good.mp4-000001-"]
    assert len(RestorationDataset.read(dataset.items[0], "gt")) == len(crops)
    by_file = {line.split(":")[0].rsplit("/", 1)[-1]: line for line in dataset.rejected}
    assert set(by_file) == {"escapes.mp4-000001-.json", "absolute.mp4-000001-.json"}
    assert "relative_nsfw_video_path" in by_file["escapes.mp4-000001-.json"]
    assert "outside the dataset root" in by_file["escapes.mp4-000001-.json"]
    assert "relative_mosaic_nsfw_video_path" in by_file["absolute.mp4-000001-.json"]
    assert "absolute" in by_file["absolute.mp4-000001-.json"]

def test_our_meta_files_satisfy_lada_readers_key_access(lineage):
    for split in ("train", "val"):
        for meta_path in sorted((DATASET / split / META_DIR).glob("*.json")):
            meta = json.loads(meta_path.read_text())
            fields = lada_v2_fields(meta)
            assert fields["mosaic"] is not None  # pre-generated LQ pairs: Lada's random_mosaic_params=False path
            for key in ("relative_nsfw_video_path", "relative_mask_video_path", "relative_mosaic_nsfw_video_path",
                        "relative_mosaic_mask_video_path"):
                assert meta[key].startswith("../crop_unscaled_"), meta[key]


# ------------------------------------------------------------------------------------------------ interruption


def _cli(args: list[str], cwd: Path, **kw):
    return subprocess.Popen([str(AUBERGINE), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kw)


def _run_cli(args: list[str], cwd: Path) -> str:
    proc = _cli(args, cwd)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def _writing(tmp_dirs: list[Path]) -> bool:
    """True once the stage is inside its temporary folder writing a video."""
    for tmp in tmp_dirs:
        try:
            if any(p.suffix == ".mp4" for p in tmp.rglob("*")):
                return True
        except FileNotFoundError:
            pass
    return False


def _assert_complete(out: Path, tracks: Path) -> None:
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")], "temporary files inside the real folder"
    index = json.loads((out / "index.json").read_text())
    for clip in index["clips"]:
        assert clip["status"] == "ok"
        record = json.loads((tracks / f"{clip['clip_id']}.json").read_text())
        for scene in record["scenes"]:
            video = out / clip["clip_id"] / f"{clip['clip_id']}-{scene['id']:06d}-.mp4"
            frames = list(read_frames(video))  # decodes to the end without error
            assert len(frames) == scene["stop"] - scene["start"]
            assert all(f.shape[:2] == tuple(scene["scene_shape"]) for f in frames)


def test_killed_materialization_leaves_the_previous_output(project):
    for suffix in ("", "_b", "_c"):
        project.add_sample("carphone_pristine.mp4", f"carphone{suffix}.mp4")
    run_stage("raw_clips", project.params())
    run_stage("region_tracks", project.params())
    interim = project.root / "data/interim"
    out, tracks = interim / "eggplant_gt", interim / "region_tracks"

    _run_cli(["stage", "eggplant_gt", "-p", "params.yaml"], project.root)
    _assert_complete(out, tracks)
    before = tree_hashes(out)
    assert len([k for k in before if k.endswith(".mp4")]) == 6

    forget_clips(project.root)  # a stored clip would be linked in at once: make the run compute, so it can be cut
    proc = _cli(["stage", "eggplant_gt", "-p", "params.yaml"], project.root)
    deadline = time.monotonic() + 120
    try:
        while not _writing(list(interim.glob(".tmp-eggplant_gt.*"))):
            assert proc.poll() is None, "the stage finished before it could be interrupted"
            assert time.monotonic() < deadline, "the stage never started writing"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the process this test started
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the kill did not land mid-write"

    leftovers = list(interim.glob(".tmp-eggplant_gt.*"))
    assert leftovers, "a killed run leaves its temporary folder beside the real one"
    assert out.is_dir() and tree_hashes(out) == before  # the previous, complete output, untouched
    _assert_complete(out, tracks)

    stdout = _run_cli(["stage", "eggplant_gt", "-p", "params.yaml"], project.root)
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["stage"] == "eggplant_gt" and summary["failed_clips"] == 0 and summary["clips"] == 3
    assert not list(interim.glob(".tmp-*")), "the next run clears the leftovers"
    _assert_complete(out, tracks)
    assert tree_hashes(out) == before  # and the re-run writes the same bytes


# ------------------------------------------------------------------------------------------------ determinism


def test_mosaic_lq_rerun_gives_identical_masks_and_parameters(lineage):
    """Everything mosaic_lq writes besides the x264 streams: FFV1 masks, mosaic_params.json, index.json."""
    folder = Path("data/interim/mosaic_lq")
    first = {k: v for k, v in tree_hashes(folder).items() if not k.endswith(".mp4")}
    assert any(k.endswith("-mask.mkv") for k in first) and any(k.endswith("mosaic_params.json") for k in first)
    forget_clips(Path("."))
    run_stage("mosaic_lq", lineage.params())
    second = {k: v for k, v in tree_hashes(folder).items() if not k.endswith(".mp4")}
    assert second == first


def test_mosaic_lq_twice_gives_identical_bytes(lineage):
    """Each run in its own process, as `aubergine lineage`, DVC and Dagster run stages: every file, every byte."""
    folder = lineage.root / "data/interim/mosaic_lq"
    _run_cli(["stage", "mosaic_lq", "-p", "params.yaml"], lineage.root)
    first = tree_hashes(folder)
    assert len(first) > 5 and any(k.endswith(".mp4") for k in first) and any(k.endswith(".mkv") for k in first)
    for _ in range(2):
        forget_clips(lineage.root)  # recomputed, not taken from the per-clip store
        _run_cli(["stage", "mosaic_lq", "-p", "params.yaml"], lineage.root)
        assert tree_hashes(folder) == first


def test_mosaic_lq_twice_in_one_process_gives_identical_bytes(lineage):
    folder = Path("data/interim/mosaic_lq")
    run_stage("mosaic_lq", lineage.params())
    first = tree_hashes(folder)
    for _ in range(2):
        forget_clips(Path("."))
        run_stage("mosaic_lq", lineage.params())
        assert tree_hashes(folder) == first
