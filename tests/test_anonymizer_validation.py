"""The anonymizer's validation metrics on real faces and a real plate, with the real models, offline.

Samples (256x256 region crops, as the anonymizer sees them):
  carphone0 / carphone40  frames 0 and 40 of data/raw/carphone_pristine.mp4 (one man), face box from YuNet, a
                          square 1.5x the face cut out and resized
  astronaut               skimage's astronaut (another person), cut the same way
  plate                   data/media/alpr/test.jpg, the 256x256 square around its plate "NO 23456"
                          (62,475,200,521), native pixels (EasyOCR reads it exactly there; measured: scaled to 128
                          it reads 'NQ23456')
The "anonymizations" are stand-ins with a known answer: the original itself, another face, a blur, a grey box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from training.anonymizer.validation import (
    FID_MIN_IMAGES,
    METRIC_KEYS,
    default_models,
    face_chips,
    region_coco,
    validation_metrics,
)

ROOT = Path(__file__).resolve().parents[1]
CARPHONE = ROOT / "data/raw/carphone_pristine.mp4"
YUNET = ROOT / "data/models/yunet/face_detection_yunet_2023mar.onnx"
ALPR = ROOT / "data/media/alpr/test.jpg"
PLATE_BOX, PLATE_TEXT = (62, 475, 200, 521), "NO 23456"
R = 256

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.usefixtures("one_torch_thread")]


@dataclass(frozen=True)
class Sample:  # the attributes of training.anonymizer.data.RegionSample that validation reads
    image: np.ndarray
    mask: np.ndarray
    kind: str
    box: tuple[float, float, float, float]
    text: str | None
    source: str


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"sample media not provisioned ({path}); run `make setup` (make test does it)")
    return path


def square_crop(image: np.ndarray, box, kind: str, source: str, context: float, text: str | None = None) -> Sample:
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    side = int(round(min(context * max(x1 - x0, y1 - y0), h, w)))
    cx0 = int(round(min(max((x0 + x1 - side) / 2, 0), w - side)))
    cy0 = int(round(min(max((y0 + y1 - side) / 2, 0), h - side)))
    crop = image[cy0:cy0 + side, cx0:cx0 + side]
    if side != R:
        crop = cv2.resize(crop, (R, R), interpolation=cv2.INTER_AREA if side > R else cv2.INTER_CUBIC)
    k = R / side
    crop_box = ((x0 - cx0) * k, (y0 - cy0) * k, (x1 - cx0) * k, (y1 - cy0) * k)
    mask = np.zeros((R, R), bool)
    mask[int(crop_box[1]):int(math.ceil(crop_box[3])), int(crop_box[0]):int(math.ceil(crop_box[2]))] = True
    return Sample(np.ascontiguousarray(crop), mask, kind, crop_box, text, source)


@pytest.fixture(scope="module")
def samples() -> dict[str, Sample]:
    import skimage.data
    from PIL import Image

    from assets.detect import YuNetFaces
    from assets.video import read_frames

    faces = YuNetFaces(need(YUNET), score_threshold=0.6, max_side=1280, min_box=10)
    frames = list(read_frames(need(CARPHONE), 0, 41))
    out = {}
    for name, image in (("carphone0", frames[0]), ("carphone40", frames[40]), ("astronaut", skimage.data.astronaut())):
        found = faces(image, 0)
        assert len(found) == 1, f"{name}: YuNet found {found}"  # measured: one face, score 0.91-0.93
        out[name] = square_crop(image, found[0].box, "face", name, context=1.5)
    photo = np.asarray(Image.open(need(ALPR)).convert("RGB"))
    out["plate"] = square_crop(photo, PLATE_BOX, "plate", "alpr", context=R / (PLATE_BOX[2] - PLATE_BOX[0]),
                               text=PLATE_TEXT)
    assert out["plate"].image.shape == (R, R, 3)
    return out


@pytest.fixture(scope="module")
def models() -> dict:
    loaded = default_models("cpu")
    missing = [k for k, v in loaded.items() if v is None]
    if missing:
        pytest.fail(f"validation models not provisioned: {missing}; run `make setup` / `uv sync`")
    return loaded


def blur(image: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)


def fill_box(sample: Sample, grow: float = 4.0) -> np.ndarray:
    x0, y0, x1, y1 = sample.box
    out = sample.image.copy()
    out[max(0, int(y0 - grow)):int(y1 + grow), max(0, int(x0 - grow)):int(x1 + grow)] = 128
    return out


# ------------------------------------------------------------------------------------------------ identity


def test_identical_faces_score_one(samples, models):
    faces = [samples["carphone0"], samples["astronaut"]]
    row = validation_metrics(faces, [s.image for s in faces], [None, None], embedder=models["embedder"],
                             identity=models["identity"])
    assert set(row) == set(METRIC_KEYS) and all(type(v) is float for v in row.values())  # aggregates only
    assert row["n_faces"] == 2 and row["n_plates"] == 0
    assert row["arcface_mean_sim"] == pytest.approx(1.0, abs=1e-6)
    assert row["dlib_pairs"] == 2 and row["dlib_mean_sim"] == pytest.approx(1.0, abs=1e-6)
    assert row["dlib_reid_rate"] == 1.0
    for key in ("easyocr_plate_acc", "original_text_rate", "fid", "val_map"):
        assert math.isnan(row[key]), key  # no plates, no FID / detector model given


def test_another_face_and_a_blur_score_lower(samples, models):
    face = samples["carphone0"]

    def sim(anonymized: np.ndarray) -> dict:
        return validation_metrics([face], [anonymized], [None], embedder=models["embedder"],
                                  identity=models["identity"])

    same_man = sim(samples["carphone40"].image)["arcface_mean_sim"]
    other = sim(samples["astronaut"].image)
    light, heavy = (sim(blur(face.image, sigma))["arcface_mean_sim"] for sigma in (3.0, 8.0))
    # measured (1 - dlib distance on box chips): 0.726 (same man, 40 frames on), 0.144 (another person);
    # blur sigma 3 / 6 / 8 / 12: 0.642 / 0.337 / 0.295 / 0.355
    assert same_man > 0.6  # dlib: same person above 0.4
    assert other["arcface_mean_sim"] < 0.3
    assert light > 0.5 and heavy < 0.4  # a light blur still shows who it is, a heavy one does not
    # dlib's own pipeline, independently: another person is not re-identified
    assert other["dlib_pairs"] == 1 and other["dlib_reid_rate"] == 0.0 and other["dlib_mean_sim"] < 0.4


def test_chips_are_the_face_box_resized(samples):
    face = samples["carphone0"]
    chips = face_chips([face.image, samples["plate"].image], [face.box, samples["plate"].box])
    assert chips.shape == (2, 3, 150, 150) and 0.0 <= float(chips.min()) and float(chips.max()) <= 1.0
    assert face_chips([], []).shape == (0, 3, 150, 150)
    # A crop that IS its box gives the whole crop back, resized.
    whole = face_chips([face.image], [(0.0, 0.0, float(R), float(R))])
    import torch
    from training.anonymizer.face_embedder import resize_to_chips

    expected = resize_to_chips(torch.from_numpy(face.image).permute(2, 0, 1)[None].float() / 255)
    assert torch.allclose(whole, expected)


# ------------------------------------------------------------------------------------------------ plates


def test_plate_read_as_fake_and_original(samples, models):
    plate = samples["plate"]
    kept = validation_metrics([plate], [plate.image], [PLATE_TEXT], plate_reader=models["plate_reader"])
    assert kept["n_plates"] == 1 and kept["n_faces"] == 0 and math.isnan(kept["arcface_mean_sim"])
    assert kept["easyocr_plate_acc"] == 1.0  # the "fake" text is the original here: read exactly
    assert kept["original_text_rate"] == 1.0
    filled = validation_metrics([plate], [fill_box(plate)], ["AB 12345"], plate_reader=models["plate_reader"])
    assert filled["easyocr_plate_acc"] == 0.0 and filled["original_text_rate"] == 0.0  # measured: reads ""


# ------------------------------------------------------------------------------------------------ FID


def test_fid_identical_and_blurred(samples, models):
    crops = [samples[k] for k in ("carphone0", "carphone40", "astronaut", "plate")]
    same = validation_metrics(crops, [s.image for s in crops], [None, None, None, PLATE_TEXT],
                              fid_model=models["fid_model"])
    blurred = validation_metrics(crops, [blur(s.image) for s in crops], [None, None, None, PLATE_TEXT],
                                 fid_model=models["fid_model"])
    assert abs(same["fid"]) < 1e-3
    assert blurred["fid"] > 10.0
    assert FID_MIN_IMAGES == 2
    one = validation_metrics(crops[:1], [crops[0].image], [None], fid_model=models["fid_model"])
    assert math.isnan(one["fid"])  # one image: no covariance, FID undefined


# ------------------------------------------------------------------------------------------------ detection


class BoxesDetector(nn.Module):
    """A stand-in with torchvision's detection interface that 'finds' given boxes (per image: xyxy, label)."""

    def __init__(self, answers: list[list[tuple[tuple[float, float, float, float], int]]]):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # raw_predict asks the model for its device
        self.score_thresh = 0.05
        self.answers = answers

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        out = []
        for _ in images:
            boxes = self.answers.pop(0)
            out.append({"boxes": torch.tensor([b for b, _ in boxes], dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor([label for _, label in boxes], dtype=torch.int64),
                        "scores": torch.full((len(boxes),), 0.9)})
        return out


def test_val_map_through_coco_eval(samples):
    crops = [samples["carphone0"], samples["plate"]]
    images, texts = [s.image for s in crops], [None, PLATE_TEXT]
    exact = BoxesDetector([[(crops[0].box, 1)], [(crops[1].box, 2)]])
    row = validation_metrics(crops, images, texts, detector=exact)
    assert row["val_map"] == pytest.approx(1.0) and row["val_map_face"] == pytest.approx(1.0)
    assert row["val_map_plate"] == pytest.approx(1.0)
    # the plate found as a face, the face missed: nothing right
    wrong = BoxesDetector([[], [(crops[1].box, 1)]])
    assert validation_metrics(crops, images, texts, detector=wrong)["val_map"] == pytest.approx(0.0)
    gt = region_coco(crops)
    assert [a["category_id"] for a in gt["annotations"]] == [1, 2]
    assert gt["annotations"][1]["bbox"] == pytest.approx([59.0, 105.0, 138.0, 46.0])


def test_val_map_with_a_real_detector(samples):
    from training.detector import build_detector

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_detector("fcos_resnet18_fpn", min_size=128, max_size=128, fpn_channels=64).eval()
    crops = [samples["carphone0"], samples["plate"]]
    row = validation_metrics(crops, [s.image for s in crops], [None, PLATE_TEXT], detector=model)
    assert 0.0 <= row["val_map"] <= 1.0  # random weights: a number, not a meaningful one


# ------------------------------------------------------------------------------------------------ robustness


def test_missing_models_give_nan(samples):
    crops = [samples[k] for k in ("carphone0", "astronaut", "plate")]
    row = validation_metrics(crops, [s.image for s in crops], [None, None, "AB 12345"])
    assert row["n_faces"] == 2 and row["n_plates"] == 1
    for key in METRIC_KEYS:
        if not key.startswith("n_"):
            assert math.isnan(row[key]), key
    empty = validation_metrics([], [], [])
    assert empty["n_faces"] == 0 and math.isnan(empty["arcface_mean_sim"]) and math.isnan(empty["fid"])


def test_missing_weights_load_as_none(monkeypatch):
    from assets.weights import WeightsError
    from evaluation import fid, ocr
    from training.anonymizer import face_embedder

    def gone(*args, **kwargs):
        raise WeightsError("weights file not provisioned")

    for module, name in ((face_embedder, "load_dlib_embedder"), (ocr, "PlateReader"), (fid, "load_inception")):
        monkeypatch.setattr(module, name, gone)
    with pytest.warns(UserWarning, match="unavailable"):
        loaded = default_models("cpu")
    assert loaded["embedder"] is None and loaded["plate_reader"] is None and loaded["fid_model"] is None
    assert loaded["identity"] is not None


def test_bad_inputs_are_refused(samples):
    face = samples["carphone0"]
    with pytest.raises(ValueError, match="one of each"):
        validation_metrics([face], [face.image, face.image], [None])
    with pytest.raises(ValueError, match="differs"):
        validation_metrics([face], [face.image[:100]], [None])
    with pytest.raises(ValueError, match="kind"):
        validation_metrics([Sample(face.image, face.mask, "car", face.box, None, "x")], [face.image], [None])
    with pytest.raises(ValueError, match="outside"):
        validation_metrics([Sample(face.image, face.mask, "face", (0, 0, 300, 10), None, "x")], [face.image], [None])
