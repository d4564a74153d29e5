"""The synthetic scenes: clips with a face and a plate each, their sidecars, and a split by person and picture."""

from __future__ import annotations

import json

import numpy as np
import pytest

from assets.detect import SidecarCoco
from assets.synthetic_scenes import VAL_PICTURES, clip_id_of, is_synthetic, render_scenes
from assets.video import EncoderSettings, probe_video, read_frames
from orchestration.config import SyntheticScenesParams
from tests.conftest import PEOPLE


def test_scenes_hold_a_face_and_a_plate_inside_the_frame_in_both_splits(tmp_path):
    if not PEOPLE.is_file():
        pytest.fail(f"{PEOPLE}: not provisioned; run `make setup`")
    settings = SyntheticScenesParams(count=4, frames=10, width=160, height=120, val_fraction=0.25)
    manifest = render_scenes(PEOPLE, tmp_path, settings, seed=7, encoder=EncoderSettings(preset="ultrafast", threads=1))
    assert manifest["counts"] == {"train": 3, "val": 1}
    people = json.loads(PEOPLE.read_text())
    assert len(manifest["clips"]) == 4
    val_people = {r["person"] for r in manifest["clips"] if r["split"] == "val"}
    train_people = {r["person"] for r in manifest["clips"] if r["split"] == "train"}
    assert not val_people & train_people and val_people | train_people <= {p["id"] for p in people["people"]}
    assert all((r["background"] in VAL_PICTURES) == (r["split"] == "val") for r in manifest["clips"])
    for row in manifest["clips"]:
        clip = tmp_path / row["file"]
        probe = probe_video(clip)
        assert (probe.frames, probe.width, probe.height) == (10, 160, 120)
        boxes = SidecarCoco(clip.with_name(clip.name + ".coco.json"))
        frames = list(read_frames(clip))
        for index, frame in enumerate(frames):
            found = boxes(frame, index)
            assert sorted(d.kind for d in found) == ["face", "plate"]
            (fx0, fy0, fx1, fy1), (px0, py0, px1, py1) = (d.box for d in sorted(found, key=lambda d: d.kind))
            assert 0 <= fx0 < fx1 <= 160 and 0 <= px0 < px1 <= 160 and 0 <= fy0 < fy1 <= 120 and 0 <= py0 < py1 <= 120
            assert fx1 <= px0 or px1 <= fx0  # face and plate on different halves: never overlapping
        # the plate is really there: light panel pixels inside its box on the first frame
        plate = next(d for d in boxes(frames[0], 0) if d.kind == "plate").box
        x0, y0, x1, y1 = (int(round(v)) for v in plate)
        assert np.median(frames[0][y0:y1, x0:x1]) > 120
    assert clip_id_of(manifest["clips"][0]["file"]) == "synthetic__scene_000" and is_synthetic("synthetic__scene_000")
    again = render_scenes(PEOPLE, tmp_path / "again", settings, seed=7, encoder=EncoderSettings(preset="ultrafast", threads=1))
    assert [r["person"] for r in again["clips"]] == [r["person"] for r in manifest["clips"]]
    assert (tmp_path / "again/clips/scene_001.mp4").read_bytes() == (tmp_path / "clips/scene_001.mp4").read_bytes()
