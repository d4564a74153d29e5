"""The embedded default's base detector (training/detector_base.py): what set-up provisioned is intact and was
made without the lineage's media, and a small recipe builds, trains, records and is skipped when current."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
import torch

from tests.conftest import DETECTOR_BASE, PEOPLE
from training import detector as det
from training.detector_base import MARKER, BaseRecipe, main, pretrain_base

PRETRAIN_PEOPLE = PEOPLE.parents[1] / "pretrain_people" / "people.json"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_provisioned_base_is_intact_labelled_and_never_saw_the_lineage_people():
    if not DETECTOR_BASE.is_file():
        pytest.fail(f"{DETECTOR_BASE}: missing; run `make setup`")
    marker = json.loads((DETECTOR_BASE.parent / MARKER).read_text())
    assert marker["file_sha256"] == _sha(DETECTOR_BASE)
    model, meta = det.load_detector(DETECTOR_BASE)
    assert "none of the lineage's media" in meta["about"] and meta["arch"] == marker["recipe"]["arch"]
    assert marker["people_index"].endswith("pretrain_people/people.json")
    lineage = {im["sha256"] for p in json.loads(PEOPLE.read_text())["people"] for im in p["images"]}
    base = {im["sha256"] for p in json.loads(PRETRAIN_PEOPLE.read_text())["people"] for im in p["images"]}
    assert base and not base & lineage
    # held-out people of its own set: a base that learned nothing would not pass this
    assert marker["held_out"]["AP50_face"] > 0.5 and marker["data"]["val_plates"] > 0


def test_a_small_recipe_trains_records_and_is_skipped_when_current(tmp_path, monkeypatch, capsys):
    recipe = replace(BaseRecipe(), fpn_channels=32, min_size=96, max_size=128, batch_size=2, iters=3, backgrounds=4,
                     image_side=128, face_images=8, plate_images=6)
    out = tmp_path / "base"
    marker = pretrain_base(PRETRAIN_PEOPLE, out, recipe, tmp_path / "work", progress=False)
    assert marker["file_sha256"] == _sha(out / "detector.pth") and marker["recipe"]["iters"] == 3
    assert marker["data"]["train_faces"] > 0 and marker["data"]["train_plates"] > 0
    sd = torch.load(out / "detector.pth", weights_only=True)
    assert sd["meta"]["fpn_channels"] == 32 and "optimizer" not in sd

    monkeypatch.setattr("training.detector_base.BaseRecipe", lambda: recipe)
    assert main(["--out", str(out), "--people", str(PRETRAIN_PEOPLE), "--work", str(tmp_path / "work")]) == 0
    assert "already pretrained" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="missing"):
        main(["--out", str(tmp_path / "other"), "--people", str(tmp_path / "nope.json")])
