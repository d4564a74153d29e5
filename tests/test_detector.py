"""The face/plate detector: builders (offline, all three architectures), backbone-weight errors, data and
augmentation, a tiny training run on synthetic shapes, checkpoint round trip, kill-and-resume, region detector.

Sizes are cut for a 2-core CPU: 128 px images and an FPN/head width of 64 for the training runs (the
loop and the code paths are the same as at full size; only `fpn_channels` differs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from assets.detect import Detection
from training import detector as det
from training.detector_data import Aug, BoxSampler, CocoBoxes, DetectorDataError, apply_aug, write_shapes_coco
from training.detector_loop import DetectorTrainSettings, train_detector

TIMING = ("images_per_s", "peak_memory_mb")


def settings(data: tuple[Path, Path], work: Path, **kw) -> DetectorTrainSettings:
    values = dict(train_json=data[0], train_images=data[1], val_json=data[0], val_images=data[1], work_dir=work,
                  fingerprint="shapes-v1", arch="fcos_resnet18_fpn", fpn_channels=64, min_size=128, max_size=160,
                  batch_size=4, lr=0.01, max_iters=60, log_interval=5, checkpoint_interval=20, sample_interval=30,
                  sample_images=2, score_threshold=0.05, seed=7, device="cpu", workers=2, progress=False)
    values.update(kw)
    return DetectorTrainSettings(**values)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    return write_shapes_coco(tmp_path_factory.mktemp("shapes"), 20, seed=3, size=(160, 120))


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """One uninterrupted 60-iteration run, shared by the tests that need a trained model."""
    work = tmp_path_factory.mktemp("straight")
    logs, samples = [], []
    result = train_detector(settings(shapes, work), on_log=lambda m, i: logs.append((i, m)),
                            on_sample=lambda p, i: samples.append((i, p)))
    return result, logs, samples


# ------------------------------------------------------------------------------------------ builders


@pytest.mark.parametrize("arch", det.ARCHS)
def test_each_arch_builds_offline_and_detects(arch, monkeypatch):
    # resnet50-RetinaNet is kept: built with random init and one 128 px forward it costs about a second.
    def no_hub(*a, **k):
        raise AssertionError("a model hub download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_hub)
    torch.manual_seed(0)
    model = det.build_detector(arch, min_size=128, max_size=128).eval()
    assert model.spec.arch == arch and model.spec.frozen_bn is False
    assert all(p.requires_grad for p in model.parameters())  # random init: every stage trains
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128)])[0]
    assert set(out) == {"boxes", "labels", "scores"}
    assert set(out["labels"].tolist()) <= {0, 1, 2}  # 0: background / the unused sigmoid slot
    frame = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    assert {d["category"] for d in det.predict(model, [frame], 0.0)[0]} <= {"face", "plate"}


def test_unknown_arch_is_refused():
    with pytest.raises(det.DetectorError, match="unknown detector arch 'yolo'.*fcos_resnet18_fpn"):
        det.build_detector("yolo")


@pytest.fixture(scope="module")
def imagenet_resnet18(tmp_path_factory) -> Path:
    """A file in the layout of torchvision's resnet18-f37072fd.pth (the classifier's state dict)."""
    from torchvision.models import resnet18

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def test_pretrained_backbone_loads_into_the_body_frozen_like_torchvision(imagenet_resnet18):
    from assets.weights import sha256_file

    sd = torch.load(imagenet_resnet18, weights_only=True)
    model = det.build_detector("fcos_resnet18_fpn", pretrained_backbone=imagenet_resnet18, sha256=sha256_file(imagenet_resnet18))
    body = model.backbone.body.state_dict()
    assert torch.equal(body["layer3.1.conv2.weight"], sd["layer3.1.conv2.weight"])
    assert torch.equal(body["bn1.running_var"], sd["bn1.running_var"])
    assert model.spec.frozen_bn and model.spec.trainable_layers == 3
    frozen = {n for n, p in model.backbone.body.named_parameters() if not p.requires_grad}
    assert "conv1.weight" in frozen and "layer1.0.conv1.weight" in frozen and "layer2.0.conv1.weight" not in frozen


def test_backbone_weight_files_fail_clearly(imagenet_resnet18, tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth: weights file not found.*resnet18-f37072fd\.pth"):
        det.build_detector("fcos_resnet18_fpn", pretrained_backbone=missing)
    pointer = tmp_path / "lfs.pth"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 46830571\n")
    with pytest.raises(FileNotFoundError, match=r"lfs\.pth: is a Git-LFS pointer"):
        det.build_detector("fcos_resnet18_fpn", pretrained_backbone=pointer)
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        det.build_detector("fcos_resnet18_fpn", pretrained_backbone=imagenet_resnet18, sha256="0" * 64)
    # A ResNet-18 file given to the ResNet-50 RetinaNet: the file, the expected file and the keys are named.
    with pytest.raises(det.DetectorError, match=r"resnet18-f37072fd\.pth.*resnet50-0676ba61\.pth.*missing keys.*shape mismatches"):
        det.build_detector("retinanet_resnet50_fpn", pretrained_backbone=imagenet_resnet18)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a zip" * 10)
    with pytest.raises(det.DetectorError, match=r"junk\.pth: not a readable PyTorch checkpoint"):
        det.build_detector("fcos_resnet18_fpn", pretrained_backbone=junk)


# ---------------------------------------------------------------------------------------------- data


def test_coco_reader_targets_negatives_and_bad_entries(shapes, tmp_path):
    data = CocoBoxes(*shapes)
    assert len(data) == 20 and data.box_count() > 0
    image, target = data[0]
    assert image.dtype == torch.float32 and image.shape == (3, 120, 160) and 0 <= image.min() and image.max() <= 1
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert set(torch.cat([t["labels"] for t in data.targets]).tolist()) == {1, 2}

    doc = json.loads(shapes[0].read_text())
    doc["categories"] = [{"id": 7, "name": "plate"}, {"id": 9, "name": "face"}]  # other ids, same names
    for ann in doc["annotations"]:
        ann["category_id"] = {1: 9, 2: 7}[ann["category_id"]]
    doc["images"].append({"id": 999, "file_name": doc["images"][0]["file_name"], "width": 160, "height": 120})
    renumbered = tmp_path / "renumbered.json"
    renumbered.write_text(json.dumps(doc))
    again = CocoBoxes(renumbered, shapes[1])
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(again.targets, data.targets))
    assert len(again.targets[-1]["labels"]) == 0  # an image without boxes is a negative, kept

    def broken(change) -> Path:
        bad = json.loads(shapes[0].read_text())
        change(bad)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        return path

    cases = [
        (lambda d: d["images"][0].update(file_name="../../etc/passwd"), r"bad\.json: images\[0\].*leaves the image root"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), r"bad\.json: annotations\[0\].*non-positive size"),
        (lambda d: d["annotations"][0].update(category_id=5), r"bad\.json: annotations\[0\].*category_id 5"),
        (lambda d: d["categories"].append({"id": 3, "name": "car"}), r"bad\.json: categories\[2\].*not one of face, plate"),
        (lambda d: d["images"].append(dict(d["images"][0])), r"bad\.json: images\[20\]: duplicate image id"),
    ]
    for change, message in cases:
        with pytest.raises(DetectorDataError, match=message):
            CocoBoxes(broken(change), shapes[1])


def test_augmentation_moves_boxes_with_the_pixels():
    image = torch.zeros(3, 100, 200)
    image[:, 20:40, 30:90] = 1.0  # a white block, and its box
    target = {"boxes": torch.tensor([[30.0, 20.0, 90.0, 40.0]]), "labels": torch.tensor([2])}
    # factor 1, flip: the canvas is the nominal 100x200 (min_size 100), the block mirrored.
    out, t = apply_aug(image, target, Aug(0, 1.0, 0.0, 0.0, True), 100, 400)
    assert out.shape == (3, 100, 200)
    assert t["boxes"].tolist() == [[110.0, 20.0, 170.0, 40.0]]
    assert out[:, 25:35, 115:165].min() == 1.0
    # factor 2, crop at the far corner: a 200x400 image cut to the 100x200 canvas at offset (200, 100).
    out, t = apply_aug(image, target, Aug(0, 2.0, 1.0, 1.0, False), 100, 400)
    assert len(t["boxes"]) == 0  # the block lies in the cropped-away part
    out, t = apply_aug(image, target, Aug(0, 2.0, 0.0, 0.0, False), 100, 400)
    assert t["boxes"].tolist() == [[60.0, 40.0, 180.0, 80.0]]
    # factor 0.5: the image is placed into a mean-coloured canvas of the nominal size.
    out, t = apply_aug(image, target, Aug(0, 0.5, 0.0, 0.0, False), 100, 400)
    assert out.shape == (3, 100, 200) and t["boxes"].tolist() == [[15.0, 10.0, 45.0, 20.0]]
    assert abs(float(out[0, 90, 190]) - 0.485) < 1e-6


def test_sampler_state_resumes_the_same_batches(shapes):
    data = CocoBoxes(*shapes)
    a = BoxSampler(data, 128, 160, seed=5, workers=1)
    for _ in range(13):  # into the second epoch
        a.sample(2)
    state = a.state()
    expected = a.sample(3)
    b = BoxSampler(data, 128, 160, seed=99, workers=2)
    b.load_state(state)
    got = b.sample(3)
    assert got[2] == expected[2]
    assert all(torch.equal(x, y) for x, y in zip(got[0], expected[0]))
    assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(got[1], expected[1]))


# ------------------------------------------------------------------------------------------ training


def test_tiny_training_lowers_the_loss_logs_samples_and_detects(trained, shapes):
    result, logs, samples = trained
    assert result.iterations == 60 and result.resumed_from == 0
    assert [h["iteration"] for h in result.history] == list(range(5, 61, 5))
    losses = [h["loss"] for h in result.history]  # means over 5-iteration windows
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.8 * first, f"loss did not fall: {losses}"
    step, metrics = logs[-1]
    assert step == 60 and {"loss", "loss_classification", "loss_bbox_regression", "loss_bbox_ctrness", "lr",
                           "images_per_s", "peak_memory_mb"} <= set(metrics)
    assert [i for i, _ in samples] == [30, 60] and all(p.stat().st_size > 0 for _, p in samples)

    model, meta = det.load_detector(result.checkpoint)
    assert meta["arch"] == "fcos_resnet18_fpn" and meta["fpn_channels"] == 64 and meta["iteration"] == 60
    data = CocoBoxes(*shapes)
    frames = [data.load_image(k).mul(255).round().byte().permute(1, 2, 0).numpy() for k in range(4)]
    preds = det.predict(model, frames, score_threshold=0.05)
    assert sum(len(p) for p in preds) > 0, "a trained detector finds nothing at score 0.05"
    d = preds[0][0]
    assert set(d) == {"category", "category_id", "bbox", "score"} and d["category"] in ("face", "plate")

    from evaluation.detection_map import coco_map

    dets = det.evaluate_coco(model, *shapes, score_threshold=0.0)
    metrics = coco_map(shapes[0], dets)
    assert metrics["detections"] == len(dets) > 0 and metrics["AP50"] > 0.1, metrics["summary"]


def test_saved_detector_reproduces_predictions_exactly(trained, shapes, tmp_path):
    model, _ = det.load_detector(trained[0].checkpoint)
    lean = det.save_detector(model, tmp_path / "detector.pth", {"note": "inference copy"})
    again, meta = det.load_detector(lean)
    assert meta["note"] == "inference copy" and "optimizer" not in torch.load(lean, weights_only=True)
    frames = [np.random.default_rng(k).integers(0, 256, (90, 130, 3), dtype=np.uint8) for k in range(2)]
    data = CocoBoxes(*shapes)
    frames += [data.load_image(k).mul(255).round().byte().permute(1, 2, 0).numpy() for k in range(3)]
    assert det.predict(model, frames, 0.0) == det.predict(again, frames, 0.0)
    with pytest.raises(det.DetectorError, match=r"not a detector checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "other.pth")
        det.load_detector(tmp_path / "other.pth")


def test_region_detector_reports_detections_in_frame_coordinates(trained, shapes):
    model, _ = det.load_detector(trained[0].checkpoint)
    data = CocoBoxes(*shapes)
    frame = data.load_image(1).mul(255).round().byte().permute(1, 2, 0).numpy()
    big = np.repeat(np.repeat(frame, 3, axis=0), 3, axis=1)  # the same picture at 3x the pixels
    regions = det.DetectorRegions(model, score_threshold=0.05)
    small_dets, big_dets = regions(frame, 0), regions(big, 0)
    assert small_dets and all(isinstance(d, Detection) and d.kind in ("face", "plate") for d in big_dets)
    h, w = big.shape[:2]
    assert all(0 <= d.box[0] < d.box[2] <= w and 0 <= d.box[1] < d.box[3] <= h for d in big_dets)
    best_small, best_big = small_dets[0], big_dets[0]
    assert best_small.kind == best_big.kind
    assert np.allclose(np.array(best_big.box) / 3, best_small.box, atol=4.0)  # the model sees both at 128 px
    faces_only = det.DetectorRegions(model, score_threshold=0.05, kinds=("face",))
    assert all(d.kind == "face" for d in faces_only(big, 0))


# The kill test runs its own short recipe (20 iterations of 2 images) to keep the file under 90 s on 2 cores.
RESUME = dict(max_iters=20, batch_size=2, checkpoint_interval=10, sample_interval=10)

KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_detector import RESUME, settings
    from training.detector_loop import train_detector
    def on_log(metrics, step):
        if step == 15:  # after the checkpoint at iteration 10, before the one at 20
            os.kill(os.getpid(), signal.SIGKILL)
    train_detector(settings((Path({json!r}), Path({images!r})), Path({work!r}), **RESUME), on_log=on_log,
                   on_sample=lambda path, step: None)
""")


def test_killed_run_resumes_and_matches_an_uninterrupted_run(shapes, tmp_path):
    work = tmp_path / "killed"
    script = KILLER.format(tests=str(Path(__file__).parent), json=str(shapes[0]), images=str(shapes[1]), work=str(work))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -9, proc.stderr[-2000:]
    state = det.read_weights(work / "latest.pth", None, "")
    assert state["meta"]["iteration"] == 10

    resumed = train_detector(settings(shapes, work, **RESUME), on_sample=lambda path, step: None)
    straight = train_detector(settings(shapes, tmp_path / "straight", **RESUME), on_sample=lambda path, step: None)
    assert resumed.resumed_from == 10 and resumed.iterations == 20
    assert [h["iteration"] for h in resumed.history] == [5, 10, 15, 20]  # history up to the checkpoint survived
    assert without_timing(resumed.history) == without_timing(straight.history)  # bit-identical losses and lr
    a = torch.load(resumed.checkpoint, weights_only=True)["state_dict"]
    b = torch.load(straight.checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b), "resumed weights differ from an uninterrupted run"

    again = train_detector(settings(shapes, work, **RESUME))  # finished: nothing to do
    assert again.resumed_from == 20 and again.history == resumed.history
    fresh = train_detector(settings(shapes, work, **{**RESUME, "max_iters": 2, "log_interval": 1}))  # another recipe
    assert fresh.resumed_from == 0 and "restarted" in fresh.labels and len(fresh.history) == 2


def test_settings_follow_the_params_detector_section(tmp_path):
    from orchestration.config import DetectorParams
    from training.detector_loop import settings_from_params

    params = DetectorParams(min_size=320, max_size=480, batch_size=4, max_iters=300, log_interval=10, checkpoint_interval=100)
    s = settings_from_params(params, tmp_path / "train.json", tmp_path / "images", tmp_path / "work", "data-hash", seed=3)
    assert (s.arch, s.min_size, s.max_size, s.batch_size, s.max_iters, s.lr, s.seed) == ("fcos_resnet18_fpn", 320, 480, 4, 300, 0.01, 3)
    assert s.checkpoint_interval == 100 and s.sample_interval is None and s.optimizer == "sgd" and s.pretrained_backbone is None


def test_init_from_fine_tunes_a_whole_detector_and_refuses_a_misfit(trained, shapes, tmp_path):
    from pydantic import ValidationError

    from orchestration.config import DetectorParams

    model, _ = det.load_detector(trained[0].checkpoint)
    base = det.save_detector(model, tmp_path / "base.pth", {"about": "a test base"})
    # lr ~ 0: the fine-tuned run ends where its start was, so the start really was the base's weights.
    tuned = train_detector(settings(shapes, tmp_path / "tuned", init_from=base, lr=1e-12, max_iters=2, log_interval=1))
    assert "fine-tuned from" in tuned.labels["init"] and "a test base" in tuned.labels["init"]
    got = torch.load(tuned.checkpoint, weights_only=True)["state_dict"]
    want = {k: v.detach() for k, v in model.named_parameters()}  # BatchNorm's running stats move in train mode
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    random_start = train_detector(settings(shapes, tmp_path / "random", lr=1e-12, max_iters=2, log_interval=1))
    assert tuned.history[0]["loss"] < 0.8 * random_start.history[0]["loss"]

    with pytest.raises(det.DetectorError, match=r"base\.pth.*fpn_channels: file 64, config 32"):
        train_detector(settings(shapes, tmp_path / "misfit", init_from=base, fpn_channels=32, max_iters=1))
    with pytest.raises(ValueError, match="init_from and pretrained_backbone are both set"):
        train_detector(settings(shapes, tmp_path / "both", init_from=base, pretrained_backbone=base, max_iters=1))
    with pytest.raises(ValidationError, match="init_from and pretrained_backbone are both set"):
        DetectorParams(init_from="a.pth", pretrained_backbone="b.pth")
    from assets.weights import WeightsError

    with pytest.raises(WeightsError, match=r"missing\.pth: weights file not found; point detector\.init_from"):
        train_detector(settings(shapes, tmp_path / "gone", init_from=tmp_path / "missing.pth", max_iters=1))
