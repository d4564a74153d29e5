"""unified_coco assembly: content dedup, split by source group, stable categories, the GX suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from assets.coco_records import Box, Conversion, ImageRecord, Problem
from assets.unified_coco import assemble, assign_splits, clean_background_frames
from orchestration.expectations import validate_coco


def _image(path: Path, seed: int, size=(64, 48)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _conversion(tmp_path: Path) -> Conversion:
    conv = Conversion()
    for g in range(6):
        for k in range(2):
            p = _image(tmp_path / f"clip{g}_{k}.png", seed=10 * g + k)
            conv.images.append(ImageRecord(p, 64, 48, [Box("face", 2, 3, 10, 12), Box("plate", 30, 30, 20, 8, text="AB 123")],
                                           "clip_frames", f"clip{g}", f"clip{g}:{k}"))
    dup = tmp_path / "dup.png"
    dup.write_bytes((tmp_path / "clip0_0.png").read_bytes())
    conv.images.append(ImageRecord(dup, 64, 48, [Box("face", 1, 1, 5, 5)], "coco:extra", "x", "extra.json#1"))
    conv.problems.append(Problem("wider.txt", "line 7", "negative width"))
    return conv


def test_assemble_dedups_splits_by_group_and_keeps_text(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "coco"
    result = assemble(_conversion(src), out, val_fraction=0.3)
    train, val = (json.loads((out / f"{s}.json").read_text()) for s in ("train", "val"))
    assert result.counts["duplicates_dropped"] == 1
    assert result.counts["train_images"] + result.counts["val_images"] == 12
    assert val["images"] and train["images"]  # every source with >= 2 groups has both splits
    groups = {s: {im["group"] for im in d["images"]} for s, d in (("train", train), ("val", val))}
    assert not groups["train"] & groups["val"]  # a clip never sits on both sides
    assert [c["name"] for c in train["categories"]] == ["face", "plate"] and [c["id"] for c in train["categories"]] == [1, 2]
    plates = [a for a in train["annotations"] if a["category_id"] == 2]
    assert plates and all(a["attributes"]["text"] == "AB 123" for a in plates)
    ids = [im["id"] for d in (train, val) for im in d["images"]]
    assert len(ids) == len(set(ids))
    problems = json.loads((out / "problems.json").read_text())
    assert {"file": "wider.txt", "where": "line 7", "reason": "negative width"} in problems
    # Same input, same output: ids and splits are stable.
    out2 = tmp_path / "coco2"
    assemble(_conversion(src), out2, val_fraction=0.3)
    assert (out / "train.json").read_bytes() == (out2 / "train.json").read_bytes()


def test_gx_suite_passes_on_assembled_and_names_broken_entries(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "coco"
    assemble(_conversion(src), out, val_fraction=0.3)
    doc = json.loads((out / "train.json").read_text())
    assert all(o.success for o in validate_coco(doc, out))
    broken = json.loads(json.dumps(doc))
    broken["annotations"][0]["bbox"] = [60, 40, 10, 10]  # runs off a 64x48 image
    broken["annotations"][1]["category_id"] = 9
    broken["annotations"][2]["id"] = broken["annotations"][3]["id"]
    broken["images"][0]["file_name"] = "images/missing.png"
    outcomes = {o.suite: o for o in validate_coco(broken, out)}
    assert not outcomes["unified_coco_images"].success and not outcomes["unified_coco_annotations"].success
    failed = json.dumps(outcomes["unified_coco_annotations"].failed)
    for column in ("right_margin", "category_id", '"id"'):
        assert column in failed, column


def test_split_assignment_is_by_group_and_stable():
    records = [ImageRecord(Path(f"{g}.png"), 1, 1, [], "s", f"g{g}", "o") for g in range(50)]
    a, b = assign_splits(records, 0.2), assign_splits(list(reversed(records)), 0.2)
    assert a == b
    assert 3 <= sum(v == "val" for v in a.values()) <= 20


def test_background_frames_avoid_every_track():
    record = {"frames": 100, "tracks": [{"start": 0, "stop": 40}, {"start": 60, "stop": 70}]}
    frames = clean_background_frames(record, 4)
    assert frames and all(40 <= f < 60 or f >= 70 for f in frames)
    assert clean_background_frames({"frames": 10, "tracks": [{"start": 0, "stop": 10}]}, 4) == []
