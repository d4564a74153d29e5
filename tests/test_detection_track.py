"""The detection track end to end on sample clips: unified_coco → detector_checkpoint → detection_report through
the runner Dagster and DVC use, with MLflow on; plus the trained detector as the lineage's region detector."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestration.expectations import validate_coco
from orchestration.runner import run_stage
from tests.conftest import Project, need_media

TINY = {f"profiles__embedded__{k}": v for k, v in dict(
    coco__frames_every_n=20, coco__max_frames_per_clip=6,
    coco__synthetic_plates={"count": 16, "image_side": 192},
    detector={"min_size": 128, "max_size": 192, "batch_size": 2, "max_iters": 4, "log_interval": 2, "checkpoint_interval": 2},
).items()} | {"mlflow__enabled": True}


@pytest.fixture(scope="module")
def track(tmp_path_factory):
    need_media()
    project = Project(tmp_path_factory.mktemp("det") / "proj")
    project.write_params(**TINY)
    for clip in ("carphone_pristine.mp4", "bikes.mp4", "plates_pan.mp4"):
        project.add_sample(clip)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project.root)
        for name in ("raw_clips", "region_tracks"):
            run_stage(name, project.params())
        reports = {n: run_stage(n, project.params()) for n in ("unified_coco", "detector_checkpoint", "detection_report")}
        yield project, reports


def test_unified_coco_has_both_sources_splits_and_passes_its_suite(track):
    root = Path("data/datasets/coco")
    counts = json.loads(Path("data/metrics/unified_coco.json").read_text())
    assert counts["images_from_synthetic_plates"] == 16 and counts["images_from_clip_frames"] > 0
    for split in ("train", "val"):
        doc = json.loads((root / f"{split}.json").read_text())
        assert [c["name"] for c in doc["categories"]] == ["face", "plate"]
        assert all(o.success for o in validate_coco(doc, root)), split
    texts = [a["attributes"]["text"] for s in ("train", "val")
             for a in json.loads((root / f"{s}.json").read_text())["annotations"] if "attributes" in a]
    assert texts and all(t.strip() for t in texts)


def test_report_has_map_per_category_and_the_model_is_registered(track):
    import mlflow
    from mlflow.tracking import MlflowClient

    metrics = json.loads(Path("data/reports/detection/metrics.json").read_text())
    for key in ("AP", "AP50", "AP50_plate"):
        assert key in metrics
    assert Path("data/reports/detection/report.html").is_file()
    version = MlflowClient().get_model_version_by_alias("face-plate-detector", "challenger")
    assert int(version.version) == 1
    model = mlflow.pytorch.load_model("models:/face-plate-detector@challenger")
    assert hasattr(model, "forward")
    train = json.loads(Path("data/models/detector/train.json").read_text())
    assert train["iters_per_s"] == pytest.approx((train["iterations"] - train["resumed_from"]) / train["train_seconds"], rel=0.02)
    assert train["images_per_s_last_window"] > 0
    run = MlflowClient().get_run(track[1]["detector_checkpoint"].mlflow_run_id)
    assert run.data.tags["aubergine.stage"] == "detector_checkpoint"


def test_trained_detector_drives_region_tracks(track):
    project, _ = track
    Path("weights").mkdir(exist_ok=True)
    shutil.copyfile("data/models/detector/detector.pth", "weights/face_plate_detector.pth")
    project.write_params(**TINY, detection__faces="detector", detection__plates="detector", detection__detector_score_threshold=0.0,
                         detection__every_n_frames=10)  # the detector costs ~0.2 s/frame on CPU
    report = run_stage("region_tracks", project.params())
    assert report.output.metadata["clips"] == 3  # every clip went through the trained detector without error
