"""Shared fixtures: a throwaway project folder whose params.yaml points at the provisioned weights and media
of this checkout, so stages run for real on small clips without touching the repository's data/."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from assets.video import EncoderSettings, write_video

ROOT = Path(__file__).resolve().parents[1]
YUNET = ROOT / "data/models/yunet/face_detection_yunet_2023mar.onnx"
EMOJI = ROOT / "data/media/eggplant/emoji_u1f346.png"
SAMPLE_RAW = ROOT / "data/raw"
PEOPLE = ROOT / "data/media/people/people.json"
DETECTOR_BASE = ROOT / "data/models/detector-base/detector.pth"
MOSAIC_DETECTOR_BASE = ROOT / "data/models/mosaic-detector-base/detector.pth"


def need_media() -> None:
    missing = [p for p in (YUNET, EMOJI, PEOPLE, DETECTOR_BASE, MOSAIC_DETECTOR_BASE, SAMPLE_RAW / "carphone_pristine.mp4") if not p.is_file()]
    if missing:
        pytest.fail(f"sample media not provisioned ({missing[0]}); run `make setup` (make test does it)")


class Project:
    def __init__(self, root: Path):
        self.root = root
        self.raw = root / "data" / "raw"
        self.raw.mkdir(parents=True)
        self.overrides: dict = {}

    def write_params(self, **sections) -> Path:
        """params.yaml = the repository's, with raw_dir/weights pointed here and `sections` merged in."""
        doc = yaml.safe_load((ROOT / "params.yaml").read_text())
        doc["data"]["raw_dir"] = "data/raw"
        doc["detection"]["yunet_model"] = str(YUNET)
        doc["eggplant"]["emoji_png"] = str(EMOJI)
        doc["coco"]["synthetic_faces"]["people_index"] = str(PEOPLE)
        doc["synthetic_scenes"]["people_index"] = str(PEOPLE)
        doc["synthetic_scenes"]["count"] = 0  # the lineage tests run on their own clips; test_synthetic_scenes renders
        # The fixtures' smooth gradients barely show a mosaic: the filter would drop their scenes (its own test,
        # test_eggplant_visibility, keeps the default).
        doc["dataset"]["min_mosaic_change"] = 0.0
        for section, base in (("detector", DETECTOR_BASE), ("mosaic_detector", MOSAIC_DETECTOR_BASE)):
            if doc["profiles"]["embedded"].get(section, {}).get("init_from"):
                doc["profiles"]["embedded"][section]["init_from"] = str(base)
        doc["mlflow"]["enabled"] = False
        for dotted, value in sections.items():
            node = doc
            *parents, leaf = dotted.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        path = self.root / "params.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def params(self):
        from orchestration.config import load_params

        return load_params(self.root / "params.yaml")

    def add_sample(self, name: str, as_name: str | None = None) -> Path:
        target = self.raw / (as_name or name)
        target.write_bytes((SAMPLE_RAW / name).read_bytes())
        return target


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    """A project folder as cwd (stages write data/... relative to it); MLflow off unless a test turns it on."""
    need_media()
    proj = Project(tmp_path / "proj")
    proj.write_params()
    monkeypatch.chdir(proj.root)
    return proj


def synthetic_frames(count: int, height: int, width: int, seed: int = 0, gray: bool = False) -> list[np.ndarray]:
    """Smoothly moving gradients: compressible, with no detectable faces or plates."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(count):
        base = (np.sin((xx + 3 * t + seed) / 17.0) + np.cos((yy - 2 * t) / 23.0)) * 60 + 128
        rgb = np.stack([base, np.roll(base, 5, axis=1), 255 - base], axis=-1)
        if gray:
            rgb = np.repeat(rgb.mean(axis=-1, keepdims=True), 3, axis=-1)
        frames.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return frames


def write_clip(path: Path, frames, fps: float = 25.0) -> Path:
    write_video(path, frames, fps, EncoderSettings(crf=18, preset="ultrafast", threads=1))
    return path


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))


@pytest.fixture(scope="module", autouse=True)
def _no_tracking_uri_from_an_earlier_module():
    """The same for module-scoped fixtures (a track materialized once per module), which run before any test's
    monkeypatch: under pytest-xdist a worker runs the modules in an order of its own, and the last module's store
    leaked into the next module's stage runs (seen: the browser test's MLflow UI found no runs)."""
    from orchestration import tracking

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    tracking._uri_we_set = None
    yield


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri(monkeypatch):
    """`mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI, and a user's MLFLOW_TRACKING_URI wins over params.yaml.
    Without this, the store of an earlier test leaks into the subprocesses (dvc, aubergine, dagster) of a later
    one, whose runs then land in the wrong store (seen in CI: test order decides)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from orchestration import tracking

    monkeypatch.setattr(tracking, "_uri_we_set", None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from more threads on the 2 shared cores, and a fixed thread count is part of
    what makes two CPU training runs bit-identical."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
