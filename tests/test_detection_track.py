"""The detection track end to end on sample clips: unified_coco → detector_checkpoint → detection_report through
the runner Dagster and DVC use, with MLflow on; plus the trained detector as the lineage's region detector, and
the anonymizer (lora_checkpoint) trained on the same COCO set with that detector in its loop, and its report
against the baselines (anonymization_report)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestration.expectations import validate_coco
from orchestration import tracking
from orchestration.runner import run_stage
from tests.conftest import Project, need_media

TINY = {f"profiles__embedded__{k}": v for k, v in dict(
    coco__frames_every_n=20, coco__max_frames_per_clip=6,
    coco__synthetic_plates={"count": 16, "image_side": 192},
    coco__synthetic_faces={"count": 12, "image_side": 192},
    detector={"min_size": 128, "max_size": 192, "batch_size": 2, "max_iters": 4, "log_interval": 2, "checkpoint_interval": 2},
    anonymization={"generator": {"model_dir": str(Path(__file__).resolve().parents[1] / "data/models/tiny-sd2-inpainting")},
                   "precision": "fp32", "resolution": 64, "batch_size": 2, "lora_rank": 4, "lora_alpha": 4.0,
                   "discriminator": {"channels": 8}, "pretrain_steps": 2, "max_steps": 4,
                   "checkpoint": {"save_every_steps": 2}, "val_every_steps": 2, "num_val_samples": 4,
                   "log_every_steps": 1, "plate_steps": 2, "vgg19_weights": None,
                   "report": {"max_images": 6, "max_plates": 3, "face_steps": 2, "grid_rows": 2, "flicker_frames": 8}},
    # Lenient gates: these tests are about what the gate compares, not about 4-iteration models' quality.
    promotion={"models": {"face-plate-detector": {"compare": [{"metric": "AP50"}], "floors": []},
                          "face-plate-anonymizer": {"compare": [{"metric": "reid_rate", "better": "lower"}],
                                                    "floors": [{"metric": "reid_rate", "max": 1.0}]}}},
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
        reports = {n: run_stage(n, project.params())
                   for n in ("unified_coco", "detector_checkpoint", "detection_report", "lora_checkpoint",
                             "anonymization_report")}
        yield project, reports


def test_unified_coco_has_both_sources_splits_and_passes_its_suite(track):
    root = Path("data/datasets/coco")
    counts = json.loads(Path("data/metrics/unified_coco.json").read_text())
    assert counts["images_from_synthetic_plates"] == 16 and counts["images_from_clip_frames"] > 0
    assert counts["images_from_synthetic_faces"] == 12
    for split in ("train", "val"):
        doc = json.loads((root / f"{split}.json").read_text())
        assert [c["name"] for c in doc["categories"]] == ["face", "plate"]
        assert all(o.success for o in validate_coco(doc, root)), split
    annotations = {s: json.loads((root / f"{s}.json").read_text())["annotations"] for s in ("train", "val")}
    texts = [a["attributes"]["text"] for s in annotations for a in annotations[s] if "text" in a.get("attributes", {})]
    assert texts and all(t.strip() for t in texts)
    people = {s: {a["attributes"]["person"] for a in annotations[s] if "person" in a.get("attributes", {})}
              for s in annotations}
    assert people["train"] and people["val"] and not people["train"] & people["val"]  # split by person


def test_report_has_map_per_category_and_the_model_is_registered(track):
    import mlflow

    metrics = json.loads(Path("data/reports/detection/metrics.json").read_text())
    for key in ("AP", "AP50", "AP50_plate"):
        assert key in metrics
    assert Path("data/reports/detection/report.html").is_file()
    version = tracking.client(track[0].params()).get_model_version_by_alias("face-plate-detector", "challenger")
    assert int(version.version) == 1
    model = mlflow.pytorch.load_model("models:/face-plate-detector@challenger")
    assert hasattr(model, "forward")
    train = json.loads(Path("data/models/detector/train.json").read_text())
    timing = json.loads(Path("data/timings/detector.json").read_text())
    assert timing["iters_per_s"] == pytest.approx((train["iterations"] - train["resumed_from"]) / timing["train_seconds"], rel=0.02)
    assert timing["images_per_s_last_window"] > 0
    from orchestration.stage_io import TIMING_KEYS

    for tracked in ("data/metrics/detector.json", "data/models/detector/train.json", "data/metrics/lora.json",
                    "data/models/anonymizer/train.json"):
        assert not TIMING_KEYS & set(json.loads(Path(tracked).read_text())), tracked
    run = tracking.client(track[0].params()).get_run(track[1]["detector_checkpoint"].mlflow_run_id)
    assert run.data.tags["aubergine.stage"] == "detector_checkpoint"


def test_trained_detector_drives_region_tracks(track):
    project, _ = track
    Path("weights").mkdir(exist_ok=True)
    shutil.copyfile("data/models/detector/detector.pth", "weights/face_plate_detector.pth")
    project.write_params(**TINY, detection__faces="detector", detection__plates="detector", detection__detector_score_threshold=0.0,
                         detection__every_n_frames=10)  # the detector costs ~0.2 s/frame on CPU
    report = run_stage("region_tracks", project.params())
    assert report.output.metadata["clips"] == 3  # every clip went through the trained detector without error


def test_anonymizer_writes_metrics_samples_and_a_lora_a_stock_pipeline_loads(track):
    import csv

    import numpy as np
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    out = Path("data/models/anonymizer")
    with (out / "metrics.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:7] == ["step", "l1", "perceptual", "arcface_mean_sim", "easyocr_plate_acc", "fid", "val_map"]
    assert [r[0] for r in rows[1:]] == ["2", "4"]  # one row per validation
    assert sorted(p.name for p in (out / "val_samples").iterdir()) == ["step0002", "step0004"]
    assert list((out / "val_samples/step0004").glob("*.png"))
    train = json.loads((out / "train.json").read_text())
    assert train["tiny_stand_in"] is True and "stand-in" in train["base"]

    client = tracking.client(track[0].params())
    run = client.get_run(track[1]["lora_checkpoint"].mlflow_run_id)
    assert run.data.tags["anonymizer.tiny_stand_in"] == "true"
    assert len(client.get_metric_history(run.info.run_id, "lora/l1")) >= 2
    assert client.list_artifacts(run.info.run_id, "val_samples/step0004")

    base = TINY["profiles__embedded__anonymization"]["generator"]["model_dir"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16))

    def paint(with_lora: bool) -> np.ndarray:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(base)
        pipe.set_progress_bar_config(disable=True)
        if with_lora:
            pipe.load_lora_weights(str(out / "lora"))
        result = pipe("a photo of a person's face", image=image, mask_image=mask, height=64, width=64,
                      num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
        return result.images[0]

    plain, adapted, again = paint(False), paint(True), paint(True)
    assert np.array_equal(adapted, again)
    assert not np.array_equal(plain, adapted)


def test_anonymization_report_compares_four_methods_and_registers_a_loadable_pyfunc(track):
    import io

    import mlflow
    import numpy as np
    import pandas as pd
    from PIL import Image

    metrics = json.loads(Path("data/metrics/anonymization.json").read_text())
    per_method = ("id_mean_sim", "reid_rate", "orig_text_read_rate", "fid_image", "fid_region", "AP50", "map_retention")
    for prefix in ("", "blur_", "pixelate_", "fill_"):
        assert all(prefix + k in metrics for k in per_method), prefix
    assert "fake_text_char_acc" in metrics and "fake_text_exact" in metrics
    assert 0.0 <= metrics["reid_rate"] <= 1.0 and metrics["original_AP50"] >= 0.0
    report = Path("data/reports/anonymization")
    html = (report / "report.html").read_text()
    assert "pixelate" in html and "dlib" in html and "stand-in" in html.lower()
    assert list((report / "images").glob("*.png"))  # the method grids

    client = tracking.client(track[0].params())
    version = client.get_model_version_by_alias("face-plate-anonymizer", "challenger")
    assert version.tags["identity_backend"].startswith("dlib")
    model = mlflow.pyfunc.load_model("models:/face-plate-anonymizer@challenger")
    image = np.random.default_rng(1).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    regions = json.dumps([{"kind": "face", "box": [24, 24, 40, 40], "seed": 3}])
    out = model.predict(pd.DataFrame({"image": [buf.getvalue()], "regions": [regions]}))
    painted = np.asarray(Image.open(io.BytesIO(out["image"][0])).convert("RGB"))
    assert painted.shape == image.shape and not np.array_equal(painted, image)
    assert np.array_equal(painted[:20], image[:20])  # outside the region nothing changes


def _decisions() -> dict:
    return {d["model"]: d for d in json.loads(Path("data/reports/promotion/decisions.json").read_text())["decisions"]}


def test_the_gate_rescores_champions_on_the_challengers_new_val_data(track):
    """Detector and anonymizer: v1 promoted, then the val split changes and the same weights are registered
    again (v2) measured on it; the gate re-scores each v1 champion on the new data before comparing."""

    project, _ = track
    project.write_params(**TINY)
    run_stage("promoted_models", project.params())
    first = _decisions()
    for model in ("face-plate-detector", "face-plate-anonymizer"):
        assert first[model]["outcome"] == "promoted" and first[model]["champion_after"] == 1, first[model]

    val_path = Path("data/datasets/coco/val.json")
    val = json.loads(val_path.read_text())
    dropped = val["images"][-1]["id"]  # new val data: one image fewer
    val["images"] = val["images"][:-1]
    val["annotations"] = [a for a in val["annotations"] if a["image_id"] != dropped]
    val_path.write_text(json.dumps(val))
    for name in ("detection_report", "anonymization_report", "promoted_models"):
        run_stage(name, project.params())
    fair = _decisions()
    client = tracking.client(track[0].params())
    for model, metric in (("face-plate-detector", "AP50"), ("face-plate-anonymizer", "reid_rate")):
        d = fair[model]
        assert d["challenger_version"] == 2 and "champion v1 re-scored on the challenger's data" in d["reasons"][0], d
        challenger = client.get_run(d["challenger_run_id"]).data
        champion = client.get_run(d["champion_run_id"]).data
        assert challenger.tags["eval.data_hash"] != champion.tags["eval.data_hash"]
        # the same weights on the same data: the re-score reproduces the challenger's own numbers
        assert d["champion_rescored"][metric] == pytest.approx(challenger.metrics[metric], abs=1e-6)
        assert d["outcome"] == "promoted"
    assert fair["face-plate-anonymizer"]["champion_rescored"]["fid_image"] == pytest.approx(
        client.get_run(fair["face-plate-anonymizer"]["challenger_run_id"]).data.metrics["fid_image"], rel=1e-4)
