"""The synthetic people drawn at set-up (assets/synthetic_people.py) and their faces composited into frames
(assets/synthetic_faces.py): identities that dlib tells apart, variants it still matches, a split by person."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assets import synthetic_people as sp
from assets.synthetic_faces import load_people, render_synthetic_faces
from orchestration.config import SyntheticFacesParams
from tests.conftest import PEOPLE, ROOT, need_media


@pytest.fixture(scope="module")
def people_index() -> Path:
    need_media()
    return PEOPLE


def test_provisioned_people_are_many_distinct_and_intact(people_index):
    doc = sp.read_index(ROOT)  # checks every image's sha256
    people = doc["people"]
    assert len(people) >= 20 and all(len(p["images"]) >= 4 for p in people)
    checks = doc["checks"]
    assert checks["max_distance_within_person"] < doc["recipe"]["same_person_max"]
    assert checks["min_distance_between_people"] >= doc["recipe"]["different_person_min"]
    assert "embedding" not in json.dumps(doc)  # aggregates only


def test_dlib_agrees_with_the_recorded_identities(people_index):
    """Recompute with the evaluation backend: photos of one person match, two people's first photos do not."""
    from evaluation.identity import DlibIdentity

    dlib = DlibIdentity()
    people = load_people(people_index)[:4]

    def embedding(path: Path) -> np.ndarray:
        return np.asarray(dlib.embed(np.asarray(Image.open(path).convert("RGB")))[0].embedding)

    firsts = [embedding(p["images"][0]["path"]) for p in people]
    for person, first in zip(people, firsts):
        assert np.linalg.norm(embedding(person["images"][-1]["path"]) - first) < dlib.threshold
    for i in range(len(firsts)):
        for j in range(i + 1, len(firsts)):
            assert np.linalg.norm(firsts[i] - firsts[j]) >= dlib.threshold


def test_a_small_recipe_draws_fresh_people_and_a_rerun_keeps_them(tmp_path, people_index):
    for rel in (sp.MODEL_DIR, "data/models/yunet"):
        shutil.copytree(ROOT / rel, tmp_path / rel)
    recipe = sp.PeopleRecipe(count=2, variants=2, side=128, seed=7)
    logs: list[str] = []
    doc = sp.provision_people(tmp_path, recipe, log=logs.append)
    assert [p["id"] for p in doc["people"]] == ["person_000", "person_001"]
    for person in doc["people"]:
        for image in person["images"]:
            with Image.open(tmp_path / sp.PEOPLE_DIR / image["file"]) as im:
                assert im.size == (128, 128)
            x0, y0, x1, y1 = image["face_box"]
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
    assert sp.provision_people(tmp_path, recipe, log=logs.append) == doc
    assert logs[-1].startswith("ok")
    (tmp_path / sp.PEOPLE_DIR / "person_001/01.jpg").write_bytes(b"broken")
    with pytest.raises(sp.PeopleError, match="person_001/01.jpg"):
        sp.read_index(tmp_path)


def test_a_missing_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="MappingNetwork.xml.*make setup"):
        sp.MobileStyleGan(tmp_path)


def _backgrounds(tmp_path: Path, n: int = 3) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = tmp_path / f"bg{i}.png"
        Image.fromarray(rng.integers(0, 255, (180, 320, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_composites_split_by_person_with_boxes_inside(tmp_path, people_index):
    params = SyntheticFacesParams(count=20, per_image=(1, 3), width_ratio=(0.1, 0.25), image_side=320)
    conv = render_synthetic_faces(people_index, _backgrounds(tmp_path), tmp_path / "faces", params, seed=3,
                                  val_fraction=0.2)
    assert len(conv.images) == 20
    split_of_person: dict[str, str] = {}
    for record in conv.images:
        assert record.split in ("train", "val") and record.source == "synthetic_faces"
        assert record.boxes
        for box in record.boxes:
            assert box.category == "face"
            assert 0 <= box.x and 0 <= box.y and box.x + box.w <= record.width and box.y + box.h <= record.height
            assert split_of_person.setdefault(box.extra["person"], record.split) == record.split
    assert {"train", "val"} <= set(split_of_person.values())
    assert sum(r.split == "val" for r in conv.images) == 4  # val's share of the people, evenly spaced
    again = render_synthetic_faces(people_index, _backgrounds(tmp_path), tmp_path / "again", params, seed=3,
                                   val_fraction=0.2)
    for a, b in zip(conv.images, again.images):
        assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
    smaller = SyntheticFacesParams(**{**params.model_dump(), "count": 5})
    render_synthetic_faces(people_index, _backgrounds(tmp_path), tmp_path / "faces", smaller, seed=3, val_fraction=0.2)
    assert len(list((tmp_path / "faces").glob("face_*.png"))) == 5  # an earlier, larger run's files are gone


def test_a_tampered_portrait_is_named(tmp_path, people_index):
    copy = tmp_path / "people"
    shutil.copytree(people_index.parent, copy)
    victim = copy / json.loads(people_index.read_text())["people"][0]["images"][0]["file"]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(ValueError, match=str(victim.name)):
        load_people(copy / "people.json")
    with pytest.raises(ValueError, match="missing; run `make setup`"):
        load_people(tmp_path / "nowhere.json")


def test_the_embedded_profile_gives_at_least_300_faces_of_20_people(tmp_path, people_index):
    """What `make demo` composites (the embedded overlay's coco.synthetic_faces), before the clip frames' own
    faces are added: the issue's floor of 300 face boxes of 20 people is met by this source alone."""
    from orchestration.config import load_params

    params = load_params(ROOT / "params.yaml").coco.synthetic_faces
    conv = render_synthetic_faces(people_index, _backgrounds(tmp_path, 5), tmp_path / "faces", params, seed=0,
                                  val_fraction=0.2)
    boxes = [b for r in conv.images for b in r.boxes]
    assert len(boxes) >= 300 and len({b.extra["person"] for b in boxes}) >= 20
