"""Optional paths of the lineage: sidecar COCO boxes, user sprites, degraded LQ, parallel workers."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from assets.lada_meta import RestorationDataset
from orchestration.runner import run_stage
from tests.conftest import synthetic_frames, write_clip

STAGES = ["raw_clips", "region_tracks", "eggplant_gt", "mosaic_lq", "restoration_dataset"]


def run_all(project) -> None:
    params = project.params()
    for name in STAGES:
        run_stage(name, params)


def test_sidecar_coco_boxes_replace_the_detectors(project):
    """A clip with no detectable face still yields a scene where its sidecar COCO file puts a plate."""
    clip = write_clip(project.raw / "gradient.mp4", synthetic_frames(30, 120, 160))
    coco = {
        "images": [{"id": i + 1, "file_name": f"frame_{i:05d}.png", "width": 160, "height": 120} for i in range(30)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 2, "bbox": [40 + i, 30, 50, 20]} for i in range(30)],
        "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "plate"}],
    }
    (project.raw / (clip.name + ".coco.json")).write_text(json.dumps(coco))
    project.write_params(tracking__min_scene_frames=12)
    params = project.params()
    run_stage("raw_clips", params)
    run_stage("region_tracks", params)
    record = json.loads((project.root / "data/interim/region_tracks/gradient.mp4.json").read_text())
    assert [s["kind"] for s in record["scenes"]] == ["plate"]
    scene = record["scenes"][0]
    assert (scene["start"], scene["stop"]) == (0, 30)
    # The box moves one pixel per frame; the smoothed, margin-grown region follows it.
    assert scene["regions"][-1][0] > scene["regions"][0][0]


def test_sidecar_with_unknown_category_is_reported_with_the_file(project):
    clip = write_clip(project.raw / "gradient.mp4", synthetic_frames(20, 96, 128))
    sidecar = project.raw / (clip.name + ".coco.json")
    sidecar.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "f_0.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 7, "name": "dog"}],
    }))
    project.add_sample("carphone_pristine.mp4")
    params = project.params()
    run_stage("raw_clips", params)
    run_stage("region_tracks", params)
    index = json.loads((project.root / "data/interim/region_tracks/index.json").read_text())
    by_id = {c["clip_id"]: c for c in index["clips"]}
    assert by_id["gradient.mp4"]["status"] == "failed"
    error = by_id["gradient.mp4"]["error"]
    assert f"data/raw/{sidecar.name}" in error and "not face or plate" in error
    assert by_id["carphone_pristine.mp4"]["status"] == "ok" and by_id["carphone_pristine.mp4"]["scenes"] > 0


def test_user_sprites_degraded_lq_and_two_workers(project):
    project.add_sample("carphone_pristine.mp4")
    project.add_sample("carphone_pristine.mp4", as_name="carphone_copy.mp4")
    sprites = project.root / "sprites"
    sprites.mkdir()
    square = np.zeros((40, 40, 4), np.uint8)
    square[..., 1] = 255  # pure green, opaque
    square[..., 3] = 255
    Image.fromarray(square, "RGBA").save(sprites / "green.png")
    project.write_params(
        eggplant__sprites=str(sprites), eggplant__color_match=0.0, eggplant__edge_feather=0.0,
        mosaic__degrade__enabled=True, mosaic__degrade__crf=[30, 30], data__workers=2,
    )
    run_all(project)
    items = [i for split in ("train", "val") for i in RestorationDataset("data/datasets/restoration", split)]
    assert {i.meta["name"] for i in items} == {"carphone_pristine.mp4", "carphone_copy.mp4"}
    gt = RestorationDataset.read(items[0], "gt", stop=1, unpadded=True)[0].astype(int)
    green = (gt[..., 1] > 200) & (gt[..., 0] < 60) & (gt[..., 2] < 60)
    assert green.mean() > 0.05, "the user sprite is not in the GT"
    params = json.loads((project.root / "data/interim/mosaic_lq/carphone_copy.mp4/mosaic_params.json").read_text())
    assert all(p["degrade"]["crf"] == 30 for p in params.values())
    # Same clip content, same seed but another clip id: the per-scene draws differ, the pipeline does not.
    a = json.loads((project.root / "data/interim/mosaic_lq/carphone_pristine.mp4/mosaic_params.json").read_text())
    assert len(a) == len(params)
