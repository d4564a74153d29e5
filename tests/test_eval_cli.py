"""`aubergine eval …` prints JSON, writes reports and logs them to MLflow."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from orchestration.cli import app

runner = CliRunner()


def _coco(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 150} for i in range(1, 6)]
    anns = [
        {"id": k, "image_id": 1 + k % 5, "category_id": 1 + k % 2, "bbox": [10 + 7 * k, 20, 40, 30], "area": 1200, "iscrowd": 0}
        for k in range(1, 11)
    ]
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "plate"}]}
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0} for a in anns]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    return tmp_path / "gt.json", tmp_path / "dets.json"


def _json(output: str) -> dict:
    return json.loads(output[output.index("{") : output.rindex("}") + 1])


def test_eval_map_prints_json_and_writes_a_report(tmp_path):
    gt, dets = _coco(tmp_path)
    result = runner.invoke(app, ["eval", "map", str(gt), str(dets), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    metrics = _json(result.stdout)
    assert metrics["AP"] == 1.0 and metrics["AP_face"] == 1.0 and metrics["AP_plate"] == 1.0
    assert "pycocotools" in metrics["backend"]
    saved = json.loads((tmp_path / "rep/metrics.json").read_text())
    assert saved["AP50"] == 1.0
    assert "PR curves" in (tmp_path / "rep/report.html").read_text()


def test_eval_map_bad_detection_names_the_entry(tmp_path):
    gt, dets = _coco(tmp_path)
    bad = json.loads(dets.read_text())
    bad[2]["image_id"] = 999
    dets.write_text(json.dumps(bad))
    result = runner.invoke(app, ["eval", "map", str(gt), str(dets)])
    assert result.exit_code == 2
    assert "detections[2]" in result.output and "999" in result.output


def test_eval_psnr_between_folders_and_mlflow_logging(project, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    rng = np.random.default_rng(0)
    for name in ("x.png", "y.png"):
        img = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
        Image.fromarray(img).save(a / name)
        noisy = np.clip(img.astype(int) + rng.normal(0, 5, img.shape).round().astype(int), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(b / name)
    uri = f"sqlite:///{project.root / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = runner.invoke(app, ["eval", "psnr", str(a), str(b), "--mlflow"])
    assert result.exit_code == 0, result.output
    metrics = _json(result.stdout)
    assert 30 < metrics["psnr"] < 40  # sigma 5 noise on 8-bit: ~34 dB
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("aubergine-evaluation")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and abs(runs[0].data.metrics["psnr"] - metrics["psnr"]) < 1e-9
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")} >= {"report/metrics.json", "report/report.html"}


def _save(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    return folder


def test_eval_identity_and_fid_commands(tmp_path):
    from skimage import data

    face = data.astronaut()
    orig = _save(tmp_path / "orig", [face])
    anon_img = face.copy()
    anon_img[60:180, 170:280] = 128  # the face flattened away
    same = _save(tmp_path / "same", [face])
    anon = _save(tmp_path / "anon", [anon_img])
    kept = _json(runner.invoke(app, ["eval", "identity", str(orig), str(same)]).stdout)
    gone = _json(runner.invoke(app, ["eval", "identity", str(orig), str(anon), "--out", str(tmp_path / "rep")]).stdout)
    page = (tmp_path / "rep/report.html").read_text()
    assert "Original / anonymized" in page and list((tmp_path / "rep/images").glob("*.png"))
    assert kept["backend"].startswith("dlib") and kept["reid_rate"] == 1.0
    assert gone["reid_rate"] == 0.0
    assert kept["faces"] == 1 and kept["compared"] == 1
    # Every face counts, not the largest per image: two people, one of them anonymized.
    pair = _save(tmp_path / "pair", [np.concatenate([face, face], axis=1)])
    half = np.concatenate([face, anon_img], axis=1)
    one_left = runner.invoke(app, ["eval", "identity", str(pair), str(_save(tmp_path / "half", [half]))])
    both = _json(one_left.stdout)
    assert both["faces"] == 2 and both["reidentified"] == 1 and both["reid_rate"] == 0.5
    assert "2 face(s) in 1 original image(s)" in one_left.output
    bad = runner.invoke(app, ["eval", "identity", str(orig), str(same), "--backend", "arcface", "--pack", str(tmp_path)])
    assert bad.exit_code == 2 and "w600k_r50.onnx" in bad.output

    crops = [np.ascontiguousarray(img[:128, :128]) for img in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())]
    a = _save(tmp_path / "a", crops)
    result = runner.invoke(app, ["eval", "fid", str(a), str(a), "--no-cache", "--method", "eigh"])
    assert result.exit_code == 0, result.output
    metrics = _json(result.stdout)
    assert abs(metrics["fid"]) < 1e-6 and metrics["n_a"] == 4 and "pytorch-fid" in metrics["backend"]
    assert "only 4 images" in metrics["warning"] and "warning: only 4 images" in result.output
    missing = runner.invoke(app, ["eval", "fid", str(a), str(a), "--weights", str(tmp_path / "nope.pth")])
    assert missing.exit_code == 2 and "nope.pth" in missing.output and "make setup" in missing.output
