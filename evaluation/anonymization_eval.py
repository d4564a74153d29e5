"""The anonymization report's measurements: every method on the same val images, with the evaluation backends.

For each method (the trained anonymizer and the baselines of `inference.anonymize_methods`) and every face and
plate of the chosen val images:

  identity   the identity backend (dlib by default; ArcFace with the insightface pack) embeds each face box in
             the original and in the anonymized image; `id_mean_sim` is the mean of the backend's own
             similarity (dlib: 1 - distance; ArcFace: cosine), `reid_rate` the share of faces the backend still
             calls the same person at its own threshold. Embeddings are never written anywhere.
  plates     EasyOCR reads each anonymized plate: `orig_text_read_rate` is the share on which it still reads the
             ORIGINAL text (CER <= 0.2); for a method that paints a fake text (the anonymizer),
             `fake_text_exact` / `fake_text_char_acc` score that read against the painted text.
  realism    FID of the anonymized images against the originals (`fid_image`), and of the region crops
             (`fid_region`), with the FID Inception weights; the sample sizes are in the table.
  utility    the trained detector's COCO AP50 on the anonymized images, and `map_retention` = that / the same
             detector's AP50 on the originals (per category as well).

Plain functions over loaded models; files only under the `work` folder the caller gives.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from inference.anonymize_methods import Anonymized, Region

NAN = float("nan")
FID_MIN_IMAGES = 2  # a covariance needs two vectors; below evaluation.fid.FID_RELIABLE_IMAGES it is indicative
CROP_SIDE = 128


@dataclass
class ValImage:
    image_id: int
    file_name: str
    image: np.ndarray
    regions: list[Region]
    texts: list[str | None]  # per region: the original plate text where the annotation has it


@dataclass
class MethodResult:
    method: str
    metrics: dict[str, float]
    images: list[np.ndarray] = field(default_factory=list)
    fake_texts: list[list[str | None]] = field(default_factory=list)


def load_val_images(coco_json: Path, images_root: Path, max_images: int, min_box: int = 8) -> tuple[list[ValImage], dict]:
    """Up to `max_images` val images that hold faces or plates, half of them with faces first (the val split is
    mostly plate images), in id order; the COCO doc of exactly those images back."""
    doc = json.loads(Path(coco_json).read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    anns: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        if not a.get("iscrowd") and min(a["bbox"][2], a["bbox"][3]) >= min_box:
            anns.setdefault(a["image_id"], []).append(a)
    with_regions = [im for im in sorted(doc["images"], key=lambda i: i["id"]) if im["id"] in anns]
    faces = [im for im in with_regions if any(names[a["category_id"]] == "face" for a in anns[im["id"]])]
    others = [im for im in with_regions if im not in faces]
    take_faces = faces[:max(max_images // 2, max_images - len(others))]
    chosen = sorted(take_faces + others[:max_images - len(take_faces)], key=lambda i: i["id"])
    out = []
    for im in chosen:
        with Image.open(Path(images_root) / im["file_name"]) as f:
            rgb = np.asarray(f.convert("RGB")).copy()
        regions, texts = [], []
        for a in sorted(anns[im["id"]], key=lambda a: a["id"]):
            regions.append(Region(names[a["category_id"]], tuple(float(v) for v in a["bbox"]), seed=int(a["id"])))
            texts.append((a.get("attributes") or {}).get("text"))
        out.append(ValImage(im["id"], im["file_name"], rgb, regions, texts))
    ids = {im["id"] for im in chosen}
    subset = {**doc, "images": [im for im in doc["images"] if im["id"] in ids],
              "annotations": [a for a in doc["annotations"] if a["image_id"] in ids]}
    return out, subset


def _xyxy(box: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = box
    return (x, y, x + w, y + h)


def _crop(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    import cv2

    x, y, w, h = (int(round(v)) for v in box)
    H, W = image.shape[:2]
    patch = image[max(0, y):min(H, y + h), max(0, x):min(W, x + w)]
    return cv2.resize(patch, (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_AREA) if patch.size else \
        np.zeros((CROP_SIDE, CROP_SIDE, 3), np.uint8)


def identity_metrics(identity, val: Sequence[ValImage], anonymized: Sequence[np.ndarray]) -> dict[str, float]:
    sims, same = [], []
    for v, anon in zip(val, anonymized):
        for r in v.regions:
            if r.kind != "face":
                continue
            a, b = identity.embed(v.image, _xyxy(r.box)), identity.embed(anon, _xyxy(r.box))
            if not a:
                continue  # the backend cannot embed the ORIGINAL face: not a face it can judge
            if not b:
                same.append(False)  # nothing left to recognise
                continue
            cmp = identity.compare(a[0], b[0])
            sims.append(cmp.similarity)
            same.append(bool(cmp.same))
    return {"id_mean_sim": float(np.mean(sims)) if sims else NAN,
            "reid_rate": float(np.mean(same)) if same else NAN, "faces": float(len(same))}


def plate_metrics(reader, val: Sequence[ValImage], results: Sequence[Anonymized], max_plates: int) -> dict[str, float]:
    from evaluation.ocr import original_text_rate, plate_accuracy

    reads, originals, fakes_read, fakes = [], [], [], []
    for v, res in zip(val, results):
        for r, text, fake in zip(v.regions, v.texts, res.fake_texts or [None] * len(v.regions)):
            if r.kind != "plate" or len(originals) >= max_plates:
                continue
            read = reader.read_plate(res.image, _xyxy(r.box))
            if text:
                reads.append(read)
                originals.append(text)
            if fake:
                fakes_read.append(read)
                fakes.append(fake)
    out = {"orig_text_read_rate": NAN, "fake_text_exact": NAN, "fake_text_char_acc": NAN, "plates": float(len(originals))}
    rate = original_text_rate(reads, originals)
    if rate is not None:
        out["orig_text_read_rate"] = float(rate)
    if fakes:
        acc = plate_accuracy(fakes_read, fakes)
        out["fake_text_exact"], out["fake_text_char_acc"] = float(acc["exact"]), float(acc["char_accuracy"])
    return out


def _fid(reference, fid_model, images: Sequence[np.ndarray]) -> float:
    from evaluation.fid import features

    if reference is None or len(images) < FID_MIN_IMAGES:
        return NAN
    return float(reference(features(images, fid_model, progress=False)))


def detector_ap50(detector, subset_doc: dict, images: Sequence[np.ndarray], val: Sequence[ValImage], work: Path) -> dict[str, float]:
    """AP50 (overall, face, plate) of `detector` on `images` (in `val`'s order) against the val boxes."""
    from evaluation.detection_map import evaluate
    from training.detector import evaluate_coco

    if detector is None:
        return {"AP50": NAN, "AP50_face": NAN, "AP50_plate": NAN}
    work.mkdir(parents=True, exist_ok=True)
    doc = json.loads(json.dumps(subset_doc))
    by_id = {v.image_id: k for k, v in enumerate(val)}
    for im in doc["images"]:
        name = f"{im['id']:08d}.png"
        Image.fromarray(images[by_id[im["id"]]]).save(work / name)
        im["file_name"] = name
    (work / "gt.json").write_text(json.dumps(doc))
    metrics = evaluate(doc, evaluate_coco(detector, work / "gt.json", work, score_threshold=0.0)).metrics
    return {k: (NAN if metrics.get(k) is None else float(metrics[k])) for k in ("AP50", "AP50_face", "AP50_plate")}


def evaluate_methods(val: Sequence[ValImage], subset_doc: dict, methods: dict[str, Callable[[np.ndarray, list[Region]], Anonymized]],
                     *, identity=None, plate_reader=None, fid_model=None, detector=None, max_plates: int = 12,
                     work: Path, progress: bool = True) -> tuple[list[MethodResult], dict[str, float]]:
    """Every method on every val image; per-method metrics, and the originals' own figures (detector AP50 on
    the unchanged images, the sample sizes)."""
    from tqdm import tqdm

    from evaluation.fid import distance_to_reference, features

    originals = [v.image for v in val]
    crops = [_crop(v.image, r.box) for v in val for r in v.regions]
    ref_image = ref_crop = None
    if fid_model is not None and len(val) >= FID_MIN_IMAGES:
        ref_image = distance_to_reference(features(originals, fid_model, progress=False))
        ref_crop = distance_to_reference(features(crops, fid_model, progress=False))
    base = detector_ap50(detector, subset_doc, originals, val, work / "original")
    reference = {"images": float(len(val)), "regions": float(len(crops)), "original_AP50": base["AP50"],
                 "original_AP50_face": base["AP50_face"], "original_AP50_plate": base["AP50_plate"]}
    results = []
    for name, run in methods.items():
        outs = [run(v.image, list(v.regions)) for v in tqdm(val, desc=f"anonymize ({name})", unit="image", disable=not progress)]
        images = [o.image for o in outs]
        m: dict[str, float] = {}
        if identity is not None:
            m.update(identity_metrics(identity, val, images))
        if plate_reader is not None:
            m.update(plate_metrics(plate_reader, val, outs, max_plates))
        m["fid_image"] = _fid(ref_image, fid_model, images)
        m["fid_region"] = _fid(ref_crop, fid_model, [_crop(o.image, r.box) for o, v in zip(outs, val) for r in v.regions])
        ap = detector_ap50(detector, subset_doc, images, val, work / name)
        for key in ("AP50", "AP50_face", "AP50_plate"):
            m[key] = ap[key]
            ref = base[key]
            m[f"map_retention{key[4:]}"] = ap[key] / ref if ref and not math.isnan(ref) and ref > 0 else NAN
        results.append(MethodResult(name, m, images, [o.fake_texts for o in outs]))
    return results, reference


def method_table(results: Sequence[MethodResult], backend: str) -> list[dict[str, Any]]:
    """One row per method, the identity backend's name in the identity columns' headers."""
    rows = []
    for r in results:
        m = r.metrics
        rows.append({"method": r.method, f"id mean sim ({backend})": m.get("id_mean_sim"),
                     f"re-id rate ({backend})": m.get("reid_rate"), "original text read": m.get("orig_text_read_rate"),
                     "fake text exact": m.get("fake_text_exact"), "fake text 1-CER": m.get("fake_text_char_acc"),
                     "FID image": m.get("fid_image"), "FID region": m.get("fid_region"), "AP50": m.get("AP50"),
                     "mAP retention": m.get("map_retention")})
    return rows
