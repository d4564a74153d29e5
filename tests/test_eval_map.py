"""COCO mAP: ground truth fed back scores 1.0, jitter lowers it, two implementations agree, bad input is named."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from evaluation.detection_map import (
    BACKENDS, DetectionInputError, coco_map, evaluate, pr_curves,
)

CATEGORIES = [{"id": 1, "name": "face"}, {"id": 2, "name": "plate"}]
W, H = 640, 480


def make_gt(seed: int = 0, images: int = 20, categories=CATEGORIES) -> dict:
    rng = np.random.default_rng(seed)
    imgs = [{"id": i, "width": W, "height": H, "file_name": f"frame_{i:03d}.jpg"} for i in range(1, images + 1)]
    anns, next_id = [], 1
    for img in imgs:
        for _ in range(int(rng.integers(1, 5))):
            cat = int(rng.integers(1, 3))
            # sizes spanning COCO's small (<32^2), medium and large (>96^2) ranges
            w, h = float(rng.uniform(12, 220)), float(rng.uniform(12, 160))
            x, y = float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h))
            anns.append({"id": next_id, "image_id": img["id"], "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            next_id += 1
    return {"images": imgs, "categories": copy.deepcopy(categories), "annotations": anns}


def gt_as_detections(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
            for a in gt["annotations"]]


def jittered(gt: dict, amount: float, seed: int = 1, scores: str = "fixed",
             drop: float = 0.0, false_pos: int = 0) -> list[dict]:
    """Each box moved/resized by `amount` x its size along a fixed random direction (same seed -> same
    directions, so a larger amount is strictly worse); optional random scores, misses and false positives."""
    rng = np.random.default_rng(seed)
    dets = []
    for ann in gt["annotations"]:
        u = rng.uniform(-1, 1, size=4)
        score_draw, drop_draw = rng.uniform(), rng.uniform()
        if drop_draw < drop:
            continue
        x, y, w, h = ann["bbox"]
        nw, nh = w * (1 + amount * u[2] * 0.5), h * (1 + amount * u[3] * 0.5)
        box = [x + amount * u[0] * w, y + amount * u[1] * h, max(nw, 1.0), max(nh, 1.0)]
        score = 1.0 if scores == "fixed" else float(score_draw)
        dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box, "score": score})
    for _ in range(false_pos):
        w, h = float(rng.uniform(10, 150)), float(rng.uniform(10, 150))
        dets.append({"image_id": int(rng.integers(1, len(gt["images"]) + 1)), "category_id": int(rng.integers(1, 3)),
                     "bbox": [float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h)), w, h],
                     "score": float(rng.uniform(0, 1))})
    return dets


@pytest.fixture(scope="module")
def gt() -> dict:
    return make_gt()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_as_detections_scores_one(gt, backend, capsys):
    m = coco_map(gt, gt_as_detections(gt), backend=backend)
    for key in ("AP", "AP50", "AP75", "AR100", "AP_face", "AP50_face", "AP_plate", "AP50_plate"):
        assert m[key] == pytest.approx(1.0, abs=1e-9), key
    assert m["images"] == 20 and m["detections"] == len(gt["annotations"]) == m["gt_boxes"]
    assert m["gt_face"] + m["gt_plate"] == m["gt_boxes"]
    assert m["backend"].startswith({"pycocotools": "pycocotools COCOeval ",
                                    "faster-coco-eval": "faster-coco-eval COCOeval_faster "}[backend])
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in m["summary"]
    assert capsys.readouterr().out == ""  # COCOeval's prints are captured, not shown


def test_jitter_lowers_ap_monotonically(gt):
    amounts = [0.0, 0.03, 0.06, 0.1, 0.15, 0.25, 0.4]
    aps = {b: [coco_map(gt, jittered(gt, a), backend=b)["AP"] for a in amounts] for b in BACKENDS}
    for backend, values in aps.items():
        assert values[0] == pytest.approx(1.0, abs=1e-9)
        assert all(later < earlier for earlier, later in zip(values, values[1:])), (backend, values)
        assert values[-1] < 0.2
    np.testing.assert_allclose(aps["pycocotools"], aps["faster-coco-eval"], atol=1e-6)


CROSS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
              "AP_face", "AP50_face", "AP75_face", "AP_plate", "AP50_plate", "AP75_plate")


@pytest.mark.parametrize("amount,drop,false_pos,seed", [
    (0.02, 0.0, 0, 3), (0.08, 0.1, 10, 4), (0.15, 0.2, 25, 5), (0.3, 0.0, 40, 6),
])
def test_backends_agree(amount, drop, false_pos, seed):
    gt = make_gt(seed=seed)
    dets = jittered(gt, amount, seed=seed + 100, scores="random", drop=drop, false_pos=false_pos)
    a = coco_map(gt, dets, backend="pycocotools")
    b = coco_map(gt, dets, backend="faster-coco-eval")
    for key in CROSS_KEYS:
        if a[key] is None or b[key] is None:
            assert a[key] is b[key] is None, key
        else:
            assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])
    assert 0.0 < a["AP"] < 1.0
    ca, cb = pr_curves(gt, dets, "pycocotools"), pr_curves(gt, dets, "faster-coco-eval")
    for name in ("face", "plate"):
        np.testing.assert_allclose(ca[name][1], cb[name][1], atol=1e-6)


def test_per_category_ap_matches_cocoeval_slices(gt):
    dets = jittered(gt, 0.1, scores="random", false_pos=15)
    result = evaluate(gt, dets)
    m = result.metrics
    # AP50 over all categories is the mean of the per-category AP50s (two categories, both with GT)
    assert m["AP50"] == pytest.approx((m["AP50_face"] + m["AP50_plate"]) / 2, abs=1e-12)
    assert m["AP"] == pytest.approx((m["AP_face"] + m["AP_plate"]) / 2, abs=1e-12)
    for name in ("face", "plate"):
        recall, precision = result.curves[name]
        assert recall.shape == precision.shape == (101,)
        assert recall[0] == 0.0 and recall[-1] == 1.0
        assert np.all(np.diff(precision) <= 1e-12)  # COCO's interpolated precision never rises
        assert precision.mean() == pytest.approx(m[f"AP50_{name}"], abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_category_without_gt_is_null(backend):
    cats = CATEGORIES + [{"id": 3, "name": "licence plate (rear)"}]
    gt = make_gt(seed=7, categories=cats)
    m = coco_map(gt, gt_as_detections(gt), backend=backend)
    assert m["AP_licence_plate__rear_"] is None and m["AP50_licence_plate__rear_"] is None
    assert m["gt_licence_plate__rear_"] == 0
    assert m["AP"] == pytest.approx(1.0, abs=1e-9)  # -1 entries are left out of the mean, as COCOeval does
    assert "licence plate (rear)" not in pr_curves(gt, gt_as_detections(gt), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_detections_is_zero(gt, backend):
    m = coco_map(gt, [], backend=backend)
    assert m["AP"] == 0.0 and m["AP_face"] == 0.0 and m["detections"] == 0


def test_paths_and_inputs_untouched(gt, tmp_path):
    dets = jittered(gt, 0.05, scores="random")
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    from_dicts = coco_map(gt, dets)
    assert gt == gt_before and dets == dets_before  # neither library's mutations reach the caller
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    from_files = coco_map(tmp_path / "gt.json", str(tmp_path / "dets.json"))
    assert from_files == from_dicts


def test_gt_without_area_or_iscrowd(gt):
    bare = copy.deepcopy(gt)
    for ann in bare["annotations"]:
        del ann["area"], ann["iscrowd"]
    assert coco_map(bare, gt_as_detections(gt))["AP"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("change,message", [
    (lambda d: d[3].update(image_id=999), r"detections\[3\] .*image_id 999 is not in the ground truth images"),
    (lambda d: d[5].update(category_id=7), r"detections\[5\] .*category_id 7 is not a ground truth category"),
    (lambda d: d[0].update(bbox=[1, 2, 3]), r"detections\[0\] .*bbox must be 4 numbers"),
    (lambda d: d[1].update(bbox=[1, 2, -3, 4]), r"detections\[1\] .*width and height must be >= 0"),
    (lambda d: d[2].update(bbox=[1, float("nan"), 3, 4]), r"detections\[2\] .*non-finite"),
    (lambda d: d[4].pop("score"), r"detections\[4\] .*finite numeric 'score'"),
    (lambda d: d.append("box"), r"detections\[\d+\]: must be a dict"),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_detections_name_the_entry(gt, change, message, backend):
    dets = gt_as_detections(gt)
    change(dets)
    with pytest.raises(DetectionInputError, match=message):
        coco_map(gt, dets, backend=backend)


def test_bad_ground_truth_and_arguments(gt, tmp_path):
    dets = gt_as_detections(gt)
    broken = copy.deepcopy(gt)
    broken["annotations"][2]["image_id"] = 555
    with pytest.raises(DetectionInputError, match=r"ground truth annotations\[2\] .*image_id 555"):
        coco_map(broken, dets)
    broken = copy.deepcopy(gt)
    broken["annotations"][1]["category_id"] = 9
    with pytest.raises(DetectionInputError, match=r"ground truth annotations\[1\] .*category_id 9"):
        coco_map(broken, dets)
    with pytest.raises(DetectionInputError, match="no 'categories' list"):
        coco_map({"images": [], "annotations": []}, [])
    with pytest.raises(ValueError, match="unknown mAP backend 'torchmetrics'"):
        coco_map(gt, dets, backend="torchmetrics")
    with pytest.raises(FileNotFoundError, match="detections file not found"):
        coco_map(gt, tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DetectionInputError, match="bad.json is not valid JSON"):
        coco_map(tmp_path / "bad.json", dets)
    with pytest.raises(DetectionInputError, match="detections must be a list"):
        coco_map(gt, {"image_id": 1})
