"""Validation metrics of the anonymizer: the `metrics.csv` columns the recipe asks for, on region crops.

    models = default_models("cpu")                       # once per run; the detector comes from the caller
    row = validation_metrics(samples, anonymized, fake_texts, detector=detector, **models)

Keys (every value a float; a part whose model is missing, or that has nothing to score, is NaN):

  arcface_mean_sim    mean identity similarity, original vs anonymized face, with the embedder the training
                      loss uses: the torch port of dlib's face-recognition ResNet (`face_embedder`) on 150 px
                      chips of each face box (`face_chips`), similarity = 1 - Euclidean distance (dlib's own
                      metric; same person above 0.4). The recipe's column name is kept although the network is
                      dlib's (no ArcFace weights are reachable offline). Lower = better anonymized. Measured on
                      64-px crops of the synthetic people: the same person in another photo ~0.61, another
                      person ~0.35.
  dlib_mean_sim       the evaluation backend, scored independently: `evaluation.identity.DlibIdentity` (5-point
                      alignment + dlib itself, on each sample's region box), 1 - Euclidean distance (same person
                      above 0.4), over the pairs it could embed; `dlib_pairs` counts them and
                      `dlib_reid_rate` is the share of originally found faces still called the same person.
  easyocr_plate_acc   share of anonymized plates on which EasyOCR reads exactly the FAKE text the generator was
                      anchored to (`PlateReader.read_plate` on the sample's box); higher = the fake text is legible.
  original_text_rate  share of anonymized plates on which EasyOCR still reads the ORIGINAL text (CER <= 0.2,
                      `evaluation.ocr.original_text_rate`); lower = better anonymized.
  fid                 FID between the original and the anonymized crops (FID Inception, `evaluation.fid`, the
                      eigh form of the Fréchet distance). Needs at least FID_MIN_IMAGES crops; with a few dozen it
                      is biased upwards and comparable only between evaluations of the SAME number of crops.
  val_map             COCO AP50 of the caller's detector on the anonymized crops, each crop's region box as the
                      ground truth of its category (`evaluation.detection_map`, pycocotools); `val_map_face` /
                      `val_map_plate` per category. Can a detector still find the anonymized faces and plates?
  n_faces, n_plates   samples of each kind.

Privacy rule of the recipe: no reversible features are kept. Face embeddings live only inside the functions
that compute the similarities; nothing here writes a file or returns anything but aggregates.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from assets.coco_records import CATEGORIES, CATEGORY_IDS
from evaluation.images import as_rgb

ROOT = Path(__file__).resolve().parents[2]
NAN = float("nan")
KINDS = ("face", "plate")
# FID needs a covariance per set, i.e. at least 2 feature vectors (evaluation.fid.statistics).
FID_MIN_IMAGES = 2
# Every detection counts towards AP (COCOeval ranks by score); the same floor as training.detector.evaluate_coco.
MAP_SCORE_THRESHOLD = 0.0
EMBED_BATCH = 16

METRIC_KEYS = (
    "arcface_mean_sim", "easyocr_plate_acc", "fid", "val_map",
    "n_faces", "n_plates", "dlib_mean_sim", "dlib_pairs", "dlib_reid_rate", "original_text_rate",
    "val_map_face", "val_map_plate",
)

Box = tuple[float, float, float, float]


@runtime_checkable
class RegionSampleLike(Protocol):
    """What validation needs of a sample (training.anonymizer.data.RegionSample has it)."""

    image: np.ndarray  # (R, R, 3) uint8 RGB, the original crop
    mask: np.ndarray  # (R, R) bool, the region
    kind: str  # "face" | "plate"
    box: Box  # (x0, y0, x1, y1) of the region in crop pixels
    text: str | None  # original plate text, None for faces / unknown
    source: str


def _nan_if_none(value: Any) -> float:
    return NAN if value is None else float(value)


def _check(samples: Sequence[RegionSampleLike], anonymized: Sequence[np.ndarray],
           fake_texts: Sequence[str | None]) -> list[np.ndarray]:
    if not (len(samples) == len(anonymized) == len(fake_texts)):
        raise ValueError(f"{len(samples)} samples, {len(anonymized)} anonymized images and {len(fake_texts)} fake "
                         "texts: need one of each per sample")
    out = []
    for i, (sample, anon) in enumerate(zip(samples, anonymized)):
        where = f"sample {i} ({getattr(sample, 'source', '?')})"
        if sample.kind not in KINDS:
            raise ValueError(f"{where}: kind {sample.kind!r}, expected one of {KINDS}")
        original = as_rgb(sample.image)
        anon = as_rgb(anon)
        if anon.shape != original.shape:
            raise ValueError(f"{where}: anonymized image {anon.shape} differs from the original {original.shape}")
        x0, y0, x1, y1 = (float(v) for v in sample.box)
        h, w = original.shape[:2]
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ValueError(f"{where}: box {tuple(sample.box)} is empty or outside the {w}x{h} crop")
        out.append(anon)
    return out


# ------------------------------------------------------------------------------------------------ identity


def face_chips(images: Sequence[np.ndarray], boxes: Sequence[tuple[float, float, float, float]],
               device: str | torch.device = "cpu", size: int = 150) -> torch.Tensor:
    """(N, 3, 150, 150) float chips in [0, 1] of uint8 RGB crops: the square around each face box, exactly the
    chips the joint loop's identity loss makes (`face_embedder.box_chips`), so the metric scores what the loss
    pushes on."""
    from training.anonymizer.face_embedder import box_chips

    crops = [torch.from_numpy(as_rgb(image)).to(device).permute(2, 0, 1).float().div_(255.0) for image in images]
    return box_chips(torch.stack(crops) if crops else torch.zeros((0, 3, 1, 1), device=device), boxes, size)


@torch.no_grad()
def embedder_mean_similarity(embedder, originals: Sequence[np.ndarray], anonymized: Sequence[np.ndarray],
                             boxes: Sequence[tuple[float, float, float, float]]) -> float:
    """Mean similarity of paired crops under the loss's embedder (its own metric: 1 - distance for the dlib
    port, cosine for ArcFace); NaN for no pairs. Embeddings never leave."""
    if not originals:
        return NAN
    device = embedder.input_mean.device
    sims: list[torch.Tensor] = []
    for i in range(0, len(originals), EMBED_BATCH):
        part = boxes[i:i + EMBED_BATCH]
        a = embedder.embed(face_chips(originals[i:i + EMBED_BATCH], part, device, embedder.chip_size)).double()
        b = embedder.embed(face_chips(anonymized[i:i + EMBED_BATCH], part, device, embedder.chip_size)).double()
        sims.append(embedder.similarity(a, b))
        del a, b
    return float(torch.cat(sims).mean())


def _dlib_scores(identity, originals: Sequence[np.ndarray], anonymized: Sequence[np.ndarray],
                 boxes: Sequence[tuple[float, float, float, float]]) -> dict[str, float]:
    from evaluation.identity import identity_scores

    if identity is None or not originals:
        return {"dlib_mean_sim": NAN, "dlib_pairs": NAN if identity is None else 0.0, "dlib_reid_rate": NAN}
    # Only aggregates are kept; identity_scores' per-image list holds similarities, never descriptors.
    # The region boxes are known (they are what was anonymized): dlib aligns and embeds there, as the pipeline
    # does after its own HOG finder, which misses most faces of 64-px crops.
    scores = identity_scores(list(originals), list(anonymized), identity, boxes=list(boxes))
    return {"dlib_mean_sim": _nan_if_none(scores["mean_similarity"]), "dlib_pairs": float(scores["pairs"]),
            "dlib_reid_rate": _nan_if_none(scores["reid_rate"])}


# ------------------------------------------------------------------------------------------------ plates


def _plate_scores(plate_reader, plates: list[tuple[RegionSampleLike, np.ndarray, str | None]]) -> dict[str, float]:
    from evaluation.ocr import original_text_rate, plate_accuracy

    out = {"easyocr_plate_acc": NAN, "original_text_rate": NAN}
    if plate_reader is None or not plates:
        return out
    # One read per plate serves both scores: EasyOCR is ~1 s a plate on a CPU.
    reads = [plate_reader.read_plate(as_rgb(anon), tuple(float(v) for v in sample.box)) for sample, anon, _ in plates]
    fake = [(r, t) for r, (_, _, t) in zip(reads, plates) if t is not None and str(t).strip()]
    if fake:
        out["easyocr_plate_acc"] = _nan_if_none(plate_accuracy([r for r, _ in fake], [t for _, t in fake])["exact"])
    original = [(r, s.text) for r, (s, _, _) in zip(reads, plates) if s.text is not None and str(s.text).strip()]
    if original:
        out["original_text_rate"] = _nan_if_none(original_text_rate([r for r, _ in original],
                                                                     [t for _, t in original]))
    return out


# ------------------------------------------------------------------------------------------------ FID


def _fid(fid_model, originals: Sequence[np.ndarray], anonymized: Sequence[np.ndarray]) -> float:
    from evaluation.fid import fid_between

    if fid_model is None or len(originals) < FID_MIN_IMAGES:
        return NAN
    # eigh: the same distance as pytorch-fid's sqrtm, ~10x faster on a CPU, ~0 (not rounding noise) for equal sets.
    return float(fid_between(originals, anonymized, model=fid_model, progress=False, method="eigh"))


# ------------------------------------------------------------------------------------------------ detection


def region_coco(samples: Sequence[RegionSampleLike]) -> dict:
    """COCO ground truth of the crops: image i+1 is crop i, its one annotation the region box of its kind."""
    images, annotations = [], []
    for i, sample in enumerate(samples):
        h, w = np.asarray(sample.image).shape[:2]
        x0, y0, x1, y1 = (float(v) for v in sample.box)
        images.append({"id": i + 1, "width": int(w), "height": int(h), "file_name": f"crop_{i:05d}.png"})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": CATEGORY_IDS[sample.kind],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}


def _val_map(detector, samples: Sequence[RegionSampleLike], anonymized: Sequence[np.ndarray]) -> dict[str, float]:
    from evaluation.detection_map import coco_map
    from training.detector import predict

    out = {"val_map": NAN, "val_map_face": NAN, "val_map_plate": NAN}
    if detector is None or not samples:
        return out
    gt = region_coco(samples)  # in memory: coco_map takes dicts, nothing is written
    detections = []
    for i, dets in enumerate(predict(detector, list(anonymized), MAP_SCORE_THRESHOLD)):
        for d in dets:
            if d["category"] in CATEGORY_IDS:  # a detector trained on other categories scores only ours
                detections.append({"image_id": i + 1, "category_id": CATEGORY_IDS[d["category"]],
                                   "bbox": [float(v) for v in d["bbox"]], "score": float(d["score"])})
    metrics = coco_map(gt, detections)
    out["val_map"] = _nan_if_none(metrics["AP50"])
    out["val_map_face"] = _nan_if_none(metrics.get("AP50_face"))
    out["val_map_plate"] = _nan_if_none(metrics.get("AP50_plate"))
    return out


# ------------------------------------------------------------------------------------------------ entry points


def validation_metrics(samples: Sequence[RegionSampleLike], anonymized: Sequence[np.ndarray],
                       fake_texts: Sequence[str | None], *, embedder=None, detector=None, plate_reader=None,
                       fid_model=None, identity=None) -> dict[str, float]:
    """The validation row for `samples` (originals) and `anonymized` (one (R, R, 3) uint8 image per sample)
    with `fake_texts` (the anchored fake plate text per sample, None for faces). Keys and meaning: see the module
    docstring. Each model is optional: embedder (dlib port, `load_dlib_embedder`), detector (the detection
    track's, `load_detector`), plate_reader (`PlateReader`), fid_model (`load_inception`), identity
    (`DlibIdentity`); a missing one gives NaN for its metrics."""
    anonymized = _check(samples, anonymized, fake_texts)
    originals = [as_rgb(s.image) for s in samples]
    faces = [i for i, s in enumerate(samples) if s.kind == "face"]
    plates = [i for i, s in enumerate(samples) if s.kind == "plate"]
    face_orig, face_anon = [originals[i] for i in faces], [anonymized[i] for i in faces]

    row: dict[str, float] = {"n_faces": float(len(faces)), "n_plates": float(len(plates))}
    row["arcface_mean_sim"] = (NAN if embedder is None else
                               embedder_mean_similarity(embedder, face_orig, face_anon, [samples[i].box for i in faces]))
    row.update(_dlib_scores(identity, face_orig, face_anon, [samples[i].box for i in faces]))
    row.update(_plate_scores(plate_reader, [(samples[i], anonymized[i], fake_texts[i]) for i in plates]))
    row["fid"] = _fid(fid_model, originals, anonymized)
    row.update(_val_map(detector, samples, anonymized))
    return {k: float(row[k]) for k in METRIC_KEYS}


def default_models(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load once what validation_metrics needs besides the detector: {"embedder", "plate_reader", "fid_model",
    "identity"}, to pass as keyword arguments. A model whose weights (or package) are missing comes back as None
    with a warning naming it, so its metrics are NaN instead of the run failing."""
    from assets.weights import WeightsError

    device = torch.device(device)

    def embedder():
        from training.anonymizer.face_embedder import load_dlib_embedder
        return load_dlib_embedder(device=device)

    def plate_reader():
        from evaluation.ocr import PlateReader
        return PlateReader(gpu=device.type == "cuda")

    def fid_model():
        from evaluation.fid import FID_WEIGHTS, load_inception
        return load_inception(ROOT / FID_WEIGHTS, device=device)  # FID_WEIGHTS is relative to the checkout

    def identity():
        from evaluation.identity import DlibIdentity
        return DlibIdentity()  # dlib runs on the CPU whatever `device` is

    loaders = {"embedder": embedder, "plate_reader": plate_reader, "fid_model": fid_model, "identity": identity}
    models: dict[str, Any] = {}
    for name, load in loaders.items():
        try:
            models[name] = load()
        except (WeightsError, ImportError) as err:  # WeightsError: missing file, LFS pointer, wrong checksum
            warnings.warn(f"validation: {name} unavailable, its metrics will be NaN: {err}", stacklevel=2)
            models[name] = None
    return models
