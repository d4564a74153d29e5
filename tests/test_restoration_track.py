"""The restoration track end to end on a real sample clip: stage1 → stage2 → restoration_report through the
same runner Dagster and DVC use, with MLflow on: curves, samples, report and the registered model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from assets.video import probe_video
from orchestration.runner import run_stage
from tests.conftest import Project, need_media

DATA_STAGES = ("raw_clips", "region_tracks", "eggplant_gt", "mosaic_lq", "restoration_dataset")
# The overlay of the active (embedded) profile wins over the body, so the tiny sizes go into the overlay.
TINY = {f"profiles__embedded__{k}": v for k, v in dict(
    restoration__stage1__max_iters=3, restoration__stage1__num_frame=4, restoration__stage1__mid_channels=8,
    restoration__stage1__num_blocks=1, restoration__stage1__checkpoint_interval=2, restoration__stage1__sample_interval=2,
    restoration__stage1__log_interval=1, restoration__stage1__lq_size=128, restoration__stage1__load_from=None,
    restoration__stage2__max_iters=2, restoration__stage2__discriminator_channels=8, restoration__stage2__log_interval=1,
    restoration__stage2__checkpoint_interval=2, restoration__stage2__sample_interval=2, restoration__stage2__vgg19_weights=None,
    restoration__report__max_scenes=2, restoration__report__sample_clip="astronaut_zoom.mp4", restore__preset="ultrafast",
    mosaic_detector={"min_size": 128, "max_size": 192, "batch_size": 2, "max_iters": 4, "log_interval": 2, "checkpoint_interval": 2,
                     "data": {"frames_every_n": 6, "max_frames_per_clip": 6, "pasted_frames_per_clip": 4, "clean_frames_per_clip": 2}},
).items()} | {"mlflow__enabled": True}
MOSAIC_STAGES = ("mosaic_coco", "mosaic_detector_checkpoint", "mosaic_detection_report")


@pytest.fixture(scope="module")
def track(tmp_path_factory):
    need_media()
    project = Project(tmp_path_factory.mktemp("track") / "proj")
    project.write_params(**TINY)
    project.add_sample("astronaut_zoom.mp4")
    project.add_sample("carphone_pristine.mp4")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project.root)
        for name in DATA_STAGES:
            run_stage(name, project.params())
        reports = {name: run_stage(name, project.params())
                   for name in ("stage1_checkpoint", "stage2_checkpoint", "restoration_report", *MOSAIC_STAGES)}
        yield project, reports


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def test_stage_outputs_and_metrics_files(track):
    project, reports = track
    train1 = json.loads(Path("data/models/restoration/stage1/train.json").read_text())
    assert train1["iterations"] == 3 and train1["frozen_params"] > train1["trainable_params"]
    assert "random init" in train1["labels"]["init"]
    # Speed: the run's average (iterations over seconds), with the last logging window under its own name -- in
    # the untracked timings file, never in what DVC tracks (a re-run with the same inputs would differ there).
    timing1 = json.loads(Path("data/timings/stage1.json").read_text())
    assert timing1["iters_per_s"] == pytest.approx((train1["iterations"] - train1["resumed_from"]) / timing1["train_seconds"], rel=0.02)
    assert timing1["iters_per_s_last_window"] > 0 and timing1["windows"][-1]["iteration"] == train1["iterations"]
    from orchestration.stage_io import TIMING_KEYS

    for tracked in ("data/metrics/stage1.json", "data/metrics/stage2.json", "data/metrics/restoration.json",
                    "data/models/restoration/stage1/train.json", "data/models/restoration/stage2/train.json"):
        assert not TIMING_KEYS & set(json.loads(Path(tracked).read_text())), tracked
    history = json.loads(Path("data/models/restoration/stage1/history.json").read_text())
    assert history and not any(TIMING_KEYS & set(r) for r in history) and "loss_pix" in history[-1]
    # The published generator records the size it was trained at; `aubergine restore` defaults to it.
    meta = torch.load("data/models/restoration/stage2/generator.pth", weights_only=True)["meta"]
    assert meta["input_size"] == 128
    assert Path("data/models/restoration/stage1/curves.png").is_file()
    sd = torch.load("data/models/restoration/stage2/generator.pth", weights_only=True)["state_dict"]
    assert any(k.startswith("generator_ema.") for k in sd) and any(k.startswith("generator.") for k in sd)
    assert not any(k.startswith("discriminator.") for k in sd)  # the published file is the generator only
    for name in ("stage1", "stage2", "restoration"):
        assert json.loads(Path(f"data/metrics/{name}.json").read_text())


def test_report_compares_input_and_output_and_shows_a_whole_video_restore(track):
    metrics = json.loads(Path("data/reports/restoration/metrics.json").read_text())
    for key in ("input_psnr_region", "output_psnr_region", "input_ssim", "output_ssim", "psnr_region_gain_db"):
        assert isinstance(metrics[key], float), key
    html = Path("data/reports/restoration/report.html").read_text()
    assert "embedded" in html.lower() and "astronaut_zoom.mp4" in html
    sample = Path("data/reports/restoration/sample/astronaut_zoom.mp4_restored.mp4")
    src, out = probe_video(Path("data/raw/astronaut_zoom.mp4")), probe_video(sample)
    assert (out.frames, out.width, out.height) == (src.frames, src.width, src.height)
    assert abs(out.fps - src.fps) < 1e-6
    assert metrics["sample_regions_found"] >= 1
    assert len(list(Path("data/reports/restoration/images").glob("grid-*.png"))) >= 2


def test_training_curves_and_samples_are_in_mlflow(track):
    project, reports = track
    client = _client()
    run = client.get_run(reports["stage1_checkpoint"].mlflow_run_id)
    history = client.get_metric_history(run.info.run_id, "stage1/loss_pix")
    assert [m.step for m in history] == [1, 2, 3]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "samples/stage1")]
    assert any(p.endswith(".png") for p in artifacts)
    assert run.data.tags["aubergine.stage"] == "stage1_checkpoint" and run.data.tags["data.input_hash"]
    assert run.data.params["restoration.stage1.lr_mult.backbone"] == str(project.params().restoration.stage1.lr_mult["backbone"])


def test_model_registered_as_challenger_and_loads_through_mlflow(track):
    import mlflow

    from training.checkpoints import load_generator

    client = _client()
    version = client.get_model_version_by_alias("eggplant-restorer", "challenger")
    assert int(version.version) == 1
    loaded = mlflow.pytorch.load_model("models:/eggplant-restorer@challenger").eval()
    reference, _ = load_generator("data/models/restoration/stage2/generator.pth")
    x = torch.rand(1, 2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), reference.eval()(x))
    # A second report registers a new version and moves `challenger` to it.
    run_stage("restoration_report", track[0].params())
    assert client.get_model_version_by_alias("eggplant-restorer", "challenger").version in (2, "2")


def test_mosaic_detector_is_trained_on_the_lineages_mosaics_compared_with_the_grid_and_registered(track):
    index = json.loads(Path("data/datasets/restoration/index.json").read_text())
    val_clips = {row["clip_id"] for row in index["scenes"] if row["split"] == "val"}
    coco = {split: json.loads(Path(f"data/datasets/mosaic_coco/{split}.json").read_text()) for split in ("train", "val")}
    assert [c["name"] for c in coco["train"]["categories"]] == ["mosaic"]
    # val images come from the val clips only, with the lineage's own mosaics; pasted mosaics only in train
    assert {im["clip_id"] for im in coco["val"]["images"]} <= val_clips
    assert {im["source"] for im in coco["val"]["images"]} <= {"lineage", "clean"}
    assert any(im["source"] == "pasted" for im in coco["train"]["images"]) and coco["train"]["annotations"]
    for clip in val_clips:  # each val clip's whole LQ video, every frame
        video = probe_video(Path(f"data/datasets/mosaic_coco/videos/{clip}"))
        assert video.frames == probe_video(Path(f"data/raw/{clip}")).frames
    metrics = json.loads(Path("data/reports/mosaic_detection/metrics.json").read_text())
    for key in ("AP50", "grid_AP50", "AP50_gain_over_grid", "video_scene_recall", "grid_video_scene_recall"):
        assert isinstance(metrics[key], float), key
    assert metrics["AP50_gain_over_grid"] == pytest.approx(metrics["AP50"] - metrics["grid_AP50"])
    # the grid heuristic finds these clean, unblurred mosaics: the whole-video pass recovers every lineage scene
    assert metrics["grid_video_scene_recall"] == 1.0
    client = _client()
    version = client.get_model_version_by_alias("mosaic-detector", "challenger")
    assert client.get_run(version.run_id).data.metrics["grid_AP50"] == pytest.approx(metrics["grid_AP50"])
    meta = torch.load("data/models/mosaic_detector/detector.pth", weights_only=True)["meta"]
    assert meta["categories"] == {"mosaic": 1} and meta["num_classes"] == 2


def test_restore_regions_mosaic_uses_the_trained_detector_and_restores_the_lineages_scenes(track):
    from inference.restore_video import RestoreError, restore_video

    project, _ = track
    params = project.params()
    index = json.loads(Path("data/datasets/restoration/index.json").read_text())
    clip = next(row["clip_id"] for row in index["scenes"] if row["split"] == "val")
    lq_video = Path(f"data/datasets/mosaic_coco/videos/{clip}")
    lineage = json.loads(Path(f"data/interim/region_tracks/{clip}.json").read_text())["scenes"]
    checkpoint = Path("data/models/restoration/stage2/generator.pth")
    # auto: the trained model only where its report measured it beating the grid, and the summary says which.
    assert params.restore.mosaic_detector == "auto"
    moved = params.model_copy(update={"restore": params.restore.model_copy(
        update={"mosaic_detector": "model", "mosaic_detector_model": "nowhere.pth"})})
    with pytest.raises(RestoreError, match="nowhere.pth.*mosaic_detector_checkpoint"):
        restore_video(lq_video, Path("out.mp4"), checkpoint, moved, regions="mosaic", progress=False)
    # With the grid heuristic (the 4-iteration model of this fixture finds nothing reliable), every lineage scene's
    # region is restored, in one batched, prefetched detection pass.
    grid = params.model_copy(update={"restore": params.restore.model_copy(
        update={"mosaic_detector": "grid", "detection_batch_size": 3, "detector_queue_size": 2})})
    summary = restore_video(lq_video, Path("restored.mp4"), checkpoint, grid, regions="mosaic", progress=False)
    assert summary["regions_mode"] == "mosaic" and summary["scenes"] >= 1
    assert summary["mosaic_detector"] == "restore.mosaic_detector = grid"
    covered = {i for s in lineage for i in range(s["start"], s["stop"])}
    assert summary["scene_frames"] >= len(covered)
