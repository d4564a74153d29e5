"""The anonymization methods (inference/anonymize_methods.py), their measurements (evaluation/anonymization_eval.py)
and the registered pyfunc: only region pixels change, the baselines hide real plate text, the anonymizer is
seeded per region and refuses a LoRA of another base, and the measurement chain tells methods apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.anonymize_methods import (
    BASELINE_FUNCS, METHODS, AnonymizeError, Anonymized, LoraAnonymizer, Region, anonymize, region_mask,
)
from tests.conftest import PEOPLE, ROOT

STAND_IN = ROOT / "data/models/tiny-sd2-inpainting"
ALPR = ROOT / "data/media/alpr/test.jpg"
PLATES = {"NO 23456": (62, 475, 200, 521), "MLB 803": (560, 485, 716, 537)}  # x0, y0, x1, y1 (tests/test_eval_ocr.py)
SETTINGS = dict(resolution=64, context_pad=0.5, face_steps=4, plate_steps=3, plate_text_anchor_strength=0.6,
                font_ratio=(0.55, 0.75), prompt_face="a photo of a person's face", prompt_plate="a car license plate")


def _lora(base: Path, out: Path, seed: int = 0) -> Path:
    from diffusers import UNet2DConditionModel

    from training.anonymizer.generator import add_lora, lora_target_modules, save_lora

    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    add_lora(unet, lora_target_modules(unet, ["unet.mid_block", "unet.up_blocks[-1]"]), 4, 4.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # peft starts B at 0 (a no-op adapter); a trained one is not
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return save_lora(unet, out).parent


@pytest.fixture(scope="module")
def alpr() -> tuple[np.ndarray, list[Region]]:
    if not ALPR.is_file():
        pytest.fail(f"{ALPR}: missing; run `make setup`")
    image = np.asarray(Image.open(ALPR).convert("RGB")).copy()
    return image, [Region("plate", (x0, y0, x1 - x0, y1 - y0), seed=k) for k, (x0, y0, x1, y1) in enumerate(PLATES.values())]


@pytest.fixture(scope="module")
def portrait() -> tuple[np.ndarray, list[Region]]:
    person = json.loads(PEOPLE.read_text())["people"][0]["images"][0]
    image = np.asarray(Image.open(PEOPLE.parent / person["file"]).convert("RGB")).copy()
    x0, y0, x1, y1 = person["face_box"]
    return image, [Region("face", (x0, y0, x1 - x0, y1 - y0), seed=7)]


@pytest.fixture(scope="module")
def anonymizer(tmp_path_factory) -> LoraAnonymizer:
    if not (STAND_IN / "model_index.json").is_file():
        pytest.fail(f"{STAND_IN}: missing; run `make setup`")
    return LoraAnonymizer(STAND_IN, _lora(STAND_IN, tmp_path_factory.mktemp("lora")), **SETTINGS)


def _outside(image: np.ndarray, regions: list[Region]) -> np.ndarray:
    inside = np.zeros(image.shape[:2], bool)
    for r in regions:
        inside |= region_mask(r.kind, r.box, image.shape)
    return ~inside


@pytest.mark.parametrize("method", METHODS)
def test_every_method_changes_only_the_regions(method, anonymizer, alpr, portrait):
    for image, regions in (alpr, portrait):
        out = anonymize(image, regions, method, anonymizer).image
        outside = _outside(image, regions)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(out[outside], image[outside]), f"{method} changed pixels outside the regions"
        assert not np.array_equal(out[~outside], image[~outside]), f"{method} left the regions as they were"


def test_blur_and_fill_hide_the_original_plate_text():
    from evaluation.ocr import PlateReader, original_text_rate

    image = np.asarray(Image.open(ALPR).convert("RGB")).copy()
    regions = [Region("plate", (x0, y0, x1 - x0, y1 - y0)) for x0, y0, x1, y1 in PLATES.values()]
    reader = PlateReader()
    assert [reader.read_plate(image, b) for b in PLATES.values()] == list(PLATES)  # readable before
    for method in ("blur", "fill"):
        out = BASELINE_FUNCS[method](image, regions).image
        reads = [reader.read_plate(out, b) for b in PLATES.values()]
        assert original_text_rate(reads, list(PLATES)) == 0.0, (method, reads)


def test_the_anonymizer_is_seeded_per_region_and_records_its_fake_text(anonymizer, alpr, portrait):
    image, regions = alpr
    a, b = anonymizer(image, regions), anonymizer(image, regions)
    assert np.array_equal(a.image, b.image)
    assert all(isinstance(t, str) and t for t in a.fake_texts) and a.fake_texts == b.fake_texts
    reseeded = anonymizer(image, [Region(r.kind, r.box, r.seed + 100) for r in regions])
    assert reseeded.fake_texts != a.fake_texts
    face_image, face = portrait
    assert anonymizer(face_image, face).fake_texts == [None]


def test_a_lora_of_another_base_and_bad_arguments_are_refused(tmp_path, alpr):
    from training.anonymizer.tiny_base import write_tiny_inpaint_base

    other = tmp_path / "other-base"
    tok = STAND_IN / "tokenizer"
    write_tiny_inpaint_base(other, tok, seed=1, block_out_channels=(16, 32))
    foreign = _lora(other, tmp_path / "foreign-lora")
    with pytest.raises(AnonymizeError, match=r"foreign-lora: this LoRA does not fit the base model"):
        LoraAnonymizer(STAND_IN, foreign, **SETTINGS)
    image, regions = alpr
    with pytest.raises(AnonymizeError, match="unknown method 'smudge'"):
        anonymize(image, regions, "smudge")
    with pytest.raises(AnonymizeError, match="needs a trained anonymizer"):
        anonymize(image, regions, "lora")
    with pytest.raises(AnonymizeError, match="region kind must be face or plate"):
        anonymize(image, [Region("car", (1, 1, 5, 5))], "blur")


def test_the_measurements_tell_an_unchanged_image_from_a_filled_one(portrait, tmp_path):
    """Identity, FID and detector retention on images the methods leave unchanged vs fill: the chain can fail."""
    from evaluation.anonymization_eval import ValImage, evaluate_methods
    from evaluation.fid import load_inception
    from evaluation.identity import DlibIdentity

    people = json.loads(PEOPLE.read_text())["people"]
    val = []
    for k, person in enumerate(people[:4]):
        shot = person["images"][0]
        image = np.asarray(Image.open(PEOPLE.parent / shot["file"]).convert("RGB")).copy()
        x0, y0, x1, y1 = shot["face_box"]
        val.append(ValImage(k, shot["file"], image, [Region("face", (x0, y0, x1 - x0, y1 - y0), seed=k)], [None]))
    subset = {"images": [], "annotations": [], "categories": []}
    methods = {"unchanged": lambda im, regions: Anonymized(im.copy(), [None] * len(regions)), "fill": BASELINE_FUNCS["fill"]}
    results, reference = evaluate_methods(val, subset, methods, identity=DlibIdentity(), fid_model=load_inception(),
                                          work=tmp_path, progress=False)
    same, filled = (r.metrics for r in results)
    assert reference["images"] == 4 and same["faces"] == filled["faces"] == 4
    assert same["reid_rate"] == 1.0 and same["id_mean_sim"] > 0.99 and abs(same["fid_image"]) < 1e-6
    assert filled["reid_rate"] < 0.5 and filled["id_mean_sim"] < 0.6 and filled["fid_region"] > 10


def test_the_registered_pyfunc_loads_back_and_anonymizes(anonymizer, alpr, tmp_path):
    # save_model/load_model: the same MLmodel folder a registered version holds, without touching the
    # process-wide tracking URI and experiment that the other tests' stages rely on.
    import mlflow
    import pandas as pd

    from inference.anonymizer_pyfunc import AnonymizerPyfunc

    settings = tmp_path / "anonymizer.json"
    settings.write_text(json.dumps({"anonymizer": {k: list(v) if isinstance(v, tuple) else v for k, v in SETTINGS.items()},
                                    "base_dir": str(STAND_IN)}))
    mlflow.pyfunc.save_model(path=str(tmp_path / "model"), python_model=AnonymizerPyfunc(),
                             artifacts={"lora": str(anonymizer.lora_dir), "settings": str(settings), "base": str(STAND_IN)})
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    image, regions = alpr
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    frame = pd.DataFrame({"image": [buf.getvalue()],
                          "regions": [json.dumps([{"kind": r.kind, "box": list(r.box), "seed": r.seed} for r in regions])]})
    out = model.predict(frame)
    got = np.asarray(Image.open(io.BytesIO(out["image"][0])).convert("RGB"))
    assert np.array_equal(got, anonymizer(image, regions).image)
    assert json.loads(out["fake_texts"][0]) == anonymizer(image, regions).fake_texts
