"""The shared report writer: flat metrics.json, escaped HTML, PNG images beside the page, the banner."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from evaluation.report import EMBEDDED_BANNER, ReportPaths, flat_metrics, pr_curve_figure, write_report


def frames(n: int, value: int) -> list[np.ndarray]:
    return [np.full((48, 64, 3), (value + 20 * i) % 256, np.uint8) for i in range(n)]


def test_full_report(tmp_path):
    curves = {"face": (np.linspace(0, 1, 101), np.r_[np.ones(60), np.linspace(0.9, 0.0, 41)]),
              "plate": (np.linspace(0, 1, 101), np.r_[np.full(80, 0.8), np.full(21, -1.0)])}
    pr_png = pr_curve_figure(curves, tmp_path / "work" / "pr.png")
    assert pr_png.is_file() and Image.open(pr_png).format == "PNG"

    paths = write_report(
        tmp_path / "report",
        title="Eval <restoration> & detection",
        metrics={"psnr": np.float64(31.25), "ssim": 0.91, "AP_face": float("nan"), "frames": np.int64(12),
                 "inf": float("inf"), "backend": "pycocotools COCOeval 2.0.11", "AP_plate": None, "ok": True},
        tables={"Per clip <b>": [{"clip": "<script>alert(1)</script>", "psnr": 30.123456},
                                 {"clip": "b&b", "psnr": None, "extra": 3}]},
        grids=[("Clip one", {"original": frames(3, 10), "input": frames(3, 90), "output": frames(3, 170)})],
        figures={"PR curves": pr_png},
        notes=["Scores <are> \"illustrative\""],
    )
    assert isinstance(paths, ReportPaths)
    assert paths.metrics_json == tmp_path / "report" / "metrics.json"

    text = paths.metrics_json.read_text()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data == {"AP_face": None, "AP_plate": None, "backend": "pycocotools COCOeval 2.0.11", "frames": 12,
                    "inf": None, "ok": True, "psnr": 31.25, "ssim": 0.91}
    assert "NaN" not in text and "Infinity" not in text

    page = paths.html.read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "b&amp;b" in page and "Per clip &lt;b&gt;" in page and "Eval &lt;restoration&gt; &amp; detection" in page
    assert "Scores &lt;are&gt; &quot;illustrative&quot;" in page
    assert "30.1235" in page and "31.2500" in page
    assert EMBEDDED_BANNER not in page and 'class="banner"' not in page

    assert len(paths.images) == 2
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == sorted(p.relative_to(paths.html.parent).as_posix() for p in paths.images)
    for p in paths.images:
        assert p.is_file() and p.parent == tmp_path / "report" / "images"
        assert Image.open(p).format == "PNG"
    grid_png = next(p for p in paths.images if p.name.startswith("grid-"))
    assert Image.open(grid_png).size[1] > 3 * 128  # three labelled rows


def test_banner_only_when_asked_and_stale_images_removed(tmp_path):
    out = tmp_path / "r"
    first = write_report(out, title="t", metrics={"a": 1},
                         grids=[("g", {"x": frames(2, 0)}), ("h", {"y": frames(1, 0)})], embedded_default=True)
    page = first.html.read_text()
    assert 'class="banner"' in page and "Embedded default: small models / sample media" in page
    assert len(first.images) == 2
    second = write_report(out, title="t", metrics={"a": 1}, grids=[("g", {"x": frames(2, 0)})])
    assert 'class="banner"' not in second.html.read_text()
    assert sorted(p.name for p in (out / "images").iterdir()) == [p.name for p in second.images]
    third = write_report(out, title="t", metrics={"a": 1})
    assert third.images == [] and list((out / "images").iterdir()) == []
    assert not list(out.glob(".tmp-*"))


def test_metrics_must_be_flat(tmp_path):
    with pytest.raises(TypeError, match="metric 'nested': metrics.json is flat"):
        write_report(tmp_path, title="t", metrics={"nested": {"a": 1}})
    assert not (tmp_path / "metrics.json").exists()
    assert flat_metrics({"b": np.float32(0.5), "a": float("-inf")}) == {"a": None, "b": 0.5}
    with pytest.raises(FileNotFoundError, match="figure 'PR'"):
        write_report(tmp_path, title="t", metrics={}, figures={"PR": tmp_path / "nope.png"})
