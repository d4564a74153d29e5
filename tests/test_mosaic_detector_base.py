"""The embedded default's base mosaic detector (training/mosaic_detector_base.py): its synthetic images box
exactly the mosaics drawn, the provisioned file is intact and labelled, and a small recipe trains, records and
is skipped when current."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import DETECTOR_BASE, MOSAIC_DETECTOR_BASE, PEOPLE
from training import detector as det
from training.mosaic_detector_base import MARKER, BaseRecipe, load_inputs, main, pretrain_base, synthetic_image

PRETRAIN_PEOPLE = PEOPLE.parents[1] / "pretrain_people" / "people.json"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_synthetic_images_box_the_mosaics_and_nothing_else():
    pictures, portraits, held_out, _ = load_inputs(PRETRAIN_PEOPLE, BaseRecipe())
    assert len(held_out) == BaseRecipe().held_out_portraits and not {str(p["path"]) for p in held_out} & {str(p["path"]) for p in portraits}
    faces_only = replace(BaseRecipe(), faces=(2, 2), face_mosaic_rate=1.0, clean_rate=0.0)
    clean = replace(BaseRecipe(), clean_rate=1.0)
    boxed = 0
    for k in range(6):
        image, boxes = synthetic_image(pictures, portraits, faces_only, np.random.default_rng(k))
        again, same = synthetic_image(pictures, portraits, faces_only, np.random.default_rng(k))
        assert np.array_equal(image, again) and boxes == same  # seeded: the set is reproducible
        h, w = image.shape[:2]
        assert max(h, w) == faces_only.long_side and boxes
        for x, y, bw, bh in boxes:
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
            patch = image[y:y + bh, x:x + bw].astype(np.int16)
            # pixelated: neighbouring pixels are mostly equal inside a box (blocks), unlike natural content
            boxed += float((np.abs(np.diff(patch, axis=1)).sum(-1) == 0).mean()) > 0.3
        assert not synthetic_image(pictures, portraits, clean, np.random.default_rng(k))[1]
    assert boxed >= 6


def test_the_provisioned_base_is_intact_and_labelled():
    if not MOSAIC_DETECTOR_BASE.is_file():
        pytest.fail(f"{MOSAIC_DETECTOR_BASE}: missing; run `make setup`")
    marker = json.loads((MOSAIC_DETECTOR_BASE.parent / MARKER).read_text())
    assert marker["file_sha256"] == _sha(MOSAIC_DETECTOR_BASE) and marker["init_sha256"] == _sha(DETECTOR_BASE)
    model, meta = det.load_detector(MOSAIC_DETECTOR_BASE)
    assert "none of the lineage's media" in meta["about"] and meta["categories"] == {"mosaic": 1}
    assert {"AP50"} <= set(marker["held_out"]) and {"AP50"} <= set(marker["held_out_grid"])


def test_a_small_recipe_trains_records_and_is_skipped_when_current(tmp_path, monkeypatch, capsys):
    recipe = replace(BaseRecipe(), min_size=96, max_size=128, batch_size=2, iters=2, train_images=6, val_images=3,
                     long_side=160)
    out = tmp_path / "base"
    marker = pretrain_base(PRETRAIN_PEOPLE, DETECTOR_BASE, out, recipe, tmp_path / "work", progress=False)
    assert marker["file_sha256"] == _sha(out / "detector.pth") and marker["recipe"]["iters"] == 2
    assert (out / "sample.png").is_file()
    monkeypatch.setattr("training.mosaic_detector_base.BaseRecipe", lambda: recipe)
    args = ["--out", str(out), "--people", str(PRETRAIN_PEOPLE), "--init", str(DETECTOR_BASE), "--work", str(tmp_path / "work")]
    assert main(args) == 0
    assert "already pretrained" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="missing"):
        main(["--out", str(tmp_path / "other"), "--people", str(PRETRAIN_PEOPLE), "--init", str(tmp_path / "nope.pth")])
