"""The mosaic detector's parts without a lineage: the data it is trained on, the head swap that fine-tunes the
face/plate base for one class, batched detection, and restore's decode-ahead queue and hardware decoding."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from assets.detect import CombinedDetector, Detection
from assets.mosaic import MosaicSpec, apply_mosaic
from assets.mosaic_coco import coco_document, MosaicImage, pasted_mosaics
from assets.video import VideoError, prefetch, read_frames
from orchestration.config import MosaicCocoParams, MosaicParams
from tests.conftest import synthetic_frames, write_clip


def test_pasted_mosaics_are_boxed_where_the_pixels_changed_and_do_not_overlap():
    import cv2

    frame = cv2.GaussianBlur(np.random.default_rng(3).integers(0, 256, (240, 320, 3)).astype(np.uint8), (5, 5), 1.5)
    rng = np.random.default_rng(0)
    data = MosaicCocoParams(pasted_per_frame=(3, 3))
    # over flat content a mosaic is invisible: nothing is pasted (and so nothing labelled)
    assert pasted_mosaics(np.full((240, 320, 3), 128, np.uint8), rng, MosaicParams(), data)[1] == []
    for _ in range(5):
        out, boxes = pasted_mosaics(frame, rng, MosaicParams(), data)
        assert 1 <= len(boxes) <= 3
        changed = np.abs(out.astype(int) - frame.astype(int)).sum(axis=2) > 0
        inside = np.zeros(changed.shape, bool)
        for x, y, w, h in boxes:
            inside[y : y + h, x : x + w] = True
            assert changed[y : y + h, x : x + w].any()
        assert not (changed & ~inside).any()  # nothing changed outside the boxes
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not (a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3])


def test_coco_document_has_one_mosaic_category_and_an_annotation_per_box():
    images = [MosaicImage("images/train/a.png", 320, 240, "a.mp4", 0, "pasted", [[1, 2, 30, 40], [100, 100, 20, 20]]),
              MosaicImage("images/train/b.png", 320, 240, "b.mp4", 3, "clean", [])]
    doc = coco_document(images)
    assert doc["categories"] == [{"id": 1, "name": "mosaic", "supercategory": "privacy"}]
    assert [a["image_id"] for a in doc["annotations"]] == [1, 1] and doc["annotations"][0]["area"] == 1200.0
    assert [im["source"] for im in doc["images"]] == ["pasted", "clean"]


def test_lineage_mosaic_box_is_the_block_aligned_mask():
    frame = synthetic_frames(1, 120, 160, seed=1)[0]
    mask = np.zeros((120, 160), np.uint8)
    mask[30:70, 40:90] = 255
    out, lq_mask = apply_mosaic(frame, mask, MosaicSpec("square_mid", 8, 1.0, 0))
    ys, xs = np.nonzero(lq_mask)
    assert xs.min() % 8 == 0 and ys.min() % 8 == 0  # the box a detector must find is the pixelated area


def test_a_face_plate_base_fine_tunes_into_a_one_class_detector_with_new_class_layers(tmp_path):
    from training.detector import build_detector, save_detector
    from training.detector_loop import CLASS_LAYERS, DetectorTrainSettings, _init_from

    torch.manual_seed(0)
    base = build_detector("fcos_resnet18_fpn", 3, min_size=128, max_size=160, fpn_channels=64)
    path = save_detector(base, tmp_path / "base.pth")
    torch.manual_seed(1)
    mosaic = build_detector("fcos_resnet18_fpn", 2, min_size=128, max_size=160, fpn_channels=64, categories={"mosaic": 1})
    fresh = {k: v.clone() for k, v in mosaic.state_dict().items()}
    settings = DetectorTrainSettings(train_json=tmp_path / "t.json", train_images=tmp_path, work_dir=tmp_path, fingerprint="x",
                                     num_classes=2, categories={"mosaic": 1}, fpn_channels=64, init_from=path)
    meta = _init_from(mosaic, settings)
    assert "class layers new for mosaic" in meta["about"]
    got, source = mosaic.state_dict(), base.state_dict()
    for key, value in got.items():
        if key.startswith(CLASS_LAYERS):
            assert torch.equal(value, fresh[key]), key
        else:
            assert torch.equal(value, source[key]), key
    # the same categories load strictly, as before
    other = build_detector("fcos_resnet18_fpn", 3, min_size=128, max_size=160, fpn_channels=64)
    _init_from(other, DetectorTrainSettings(train_json=tmp_path / "t.json", train_images=tmp_path, work_dir=tmp_path,
                                            fingerprint="x", fpn_channels=64, init_from=path))
    assert all(torch.equal(v, source[k]) for k, v in other.state_dict().items())


def test_batched_detection_finds_what_frame_by_frame_detection_finds():
    from training.detector import DetectorRegions, build_detector

    torch.manual_seed(0)
    model = build_detector("fcos_resnet18_fpn", 2, min_size=128, max_size=160, fpn_channels=64, categories={"mosaic": 1})
    regions = DetectorRegions(model, score_threshold=0.0, kinds=("mosaic",))
    frames = synthetic_frames(3, 120, 160, seed=5)
    batched = regions.detect_batch(frames, [0, 1, 2])
    for frame, index, dets in zip(frames, range(3), batched):
        single = regions(frame, index)
        assert len(single) == len(dets) > 0
        assert np.allclose([d.box for d in single], [d.box for d in dets], atol=1e-3)

    calls = []

    def per_frame(frame, index):
        calls.append(index)
        return [Detection("mosaic", (0.0, 0.0, 1.0, 1.0), 0.9)]

    combined = CombinedDetector([per_frame, regions]).detect_batch(frames, [4, 5, 6])
    assert calls == [4, 5, 6] and [len(c) for c in combined] == [len(b) + 1 for b in batched]


def test_prefetch_keeps_order_stays_bounded_and_hands_errors_over():
    produced = []

    def items(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise VideoError("clip.mp4: decoding failed at frame 3")
            produced.append(i)
            yield i

    assert list(prefetch(items(10), 2)) == list(range(10))
    produced.clear()
    stream = prefetch(items(100), 3)
    assert next(stream) == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 3 + 1  # the consumed one, the queue, one waiting to be put
    stream.close()  # a consumer that stops early stops the producer
    time.sleep(0.3)
    assert not any(t.name == "decode-ahead" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(VideoError, match="frame 3"):
        list(prefetch(items(10, fail_at=3), 2))
    with pytest.raises(ValueError, match="size"):
        list(prefetch(items(1), 0))


def test_hw_decode_auto_falls_back_to_the_cpu_and_a_named_device_that_does_not_open_is_an_error(tmp_path):
    from av.codec.hwaccel import hwdevices_available

    clip = write_clip(tmp_path / "c.mp4", synthetic_frames(6, 64, 96, seed=2))
    plain = list(read_frames(clip))
    auto = list(read_frames(clip, hw_decode="auto"))
    assert len(auto) == len(plain) == 6
    if not torch.cuda.is_available():
        assert all(np.array_equal(a, b) for a, b in zip(auto, plain))  # decoded on the CPU, the same frames
        name = "cuda" if "cuda" in hwdevices_available() else "vaapi"
        with pytest.raises(VideoError, match=f"{name}"):
            list(read_frames(clip, hw_decode=name))


def test_auto_takes_the_trained_detector_only_where_its_report_measured_it_beating_the_grid(tmp_path):
    import json

    from inference.restore_video import mosaic_detector_choice
    from orchestration.config import Params

    model, metrics = tmp_path / "detector.pth", tmp_path / "mosaic_detection.json"
    params = Params().model_copy(update={"restore": Params().restore.model_copy(
        update={"mosaic_detector_model": str(model), "mosaic_detection_metrics": str(metrics)})})
    assert mosaic_detector_choice(params)[0] == "grid"  # no model yet
    model.write_bytes(b"weights")
    choice, why = mosaic_detector_choice(params)
    assert choice == "grid" and "no mosaic_detection_report figures" in why
    metrics.write_text(json.dumps({"AP50": 0.2, "grid_AP50": 0.4}))
    choice, why = mosaic_detector_choice(params)
    assert choice == "grid" and "0.200 does not beat the grid's 0.400" in why
    metrics.write_text(json.dumps({"AP50": 0.6, "grid_AP50": 0.4}))
    assert mosaic_detector_choice(params)[0] == "model"
    forced = params.model_copy(update={"restore": params.restore.model_copy(update={"mosaic_detector": "grid"})})
    assert mosaic_detector_choice(forced) == ("grid", "restore.mosaic_detector = grid")


def test_restore_flags_are_checked_like_params_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from orchestration.cli import app

    clip = write_clip(tmp_path / "c.mp4", synthetic_frames(4, 64, 96, seed=2))
    result = CliRunner().invoke(app, ["restore", str(clip), "-o", str(tmp_path / "o.mp4"), "--checkpoint",
                                      str(tmp_path / "none.pth"), "--hw-decode", "nvdec-please"])
    assert result.exit_code == 2
    assert "restore.hw_decode = 'nvdec-please'" in result.output
    assert not (tmp_path / "o.mp4").exists()


def test_hw_decode_survives_yaml_booleans():
    """DVC's `exp run -S` rewrites params.yaml with `hw_decode: off` unquoted, which YAML reads as false."""
    import yaml

    from orchestration.config import RestoreParams

    assert RestoreParams.model_validate(yaml.safe_load("hw_decode: off")).hw_decode == "off"
    assert RestoreParams.model_validate(yaml.safe_load("hw_decode: on")).hw_decode == "auto"
    assert RestoreParams.model_validate({"hw_decode": "cuda"}).hw_decode == "cuda"
