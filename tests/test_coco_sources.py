"""Converters of assets/coco_sources.py: exact round-trips through fixtures written here in each source's format,
malformed lines and bad entries rejected with the file and line/entry named, the good ones kept."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import assets.coco_sources as cs
from assets.coco_records import Box, ImageRecord
from assets.coco_sources import frames_from_region_tracks, read_coco, read_pp4av, read_wider_face
from assets.video import read_frames
from tests.conftest import synthetic_frames, write_clip

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- writers (helpers)


def write_wider_face(records: list[ImageRecord], path: Path, images_dir: Path) -> Path:
    """WIDER FACE bbx_gt txt, including the official quirk: a 0 count is followed by one all-zero box line."""
    lines = []
    for rec in records:
        lines.append(Path(rec.path).relative_to(images_dir).as_posix())
        lines.append(str(len(rec.boxes)))
        if not rec.boxes:
            lines.append("0 0 0 0 0 0 0 0 0 0 ")
        for b in rec.boxes:
            e = b.extra
            fields = [b.x, b.y, b.w, b.h, e["blur"], e["expression"], e["illumination"], 0, e["occlusion"], e["pose"]]
            lines.append(" ".join(str(int(v)) for v in fields) + " ")  # the official files end box lines with a space
    path.write_text("\n".join(lines) + "\n")
    return path


def write_pp4av(records: list[ImageRecord], label_for, convention: str = "center") -> None:
    """YOLO txt per image, normalised values written with repr() (17 significant digits)."""
    classes = {"face": 0, "plate": 1}
    for rec in records:
        rows = []
        for b in rec.boxes:
            W, H = rec.width, rec.height
            if convention == "center":
                vals = ((b.x + b.w / 2) / W, (b.y + b.h / 2) / H, b.w / W, b.h / H)
            elif convention == "topleft":
                vals = (b.x / W, b.y / H, b.w / W, b.h / H)
            else:
                vals = (b.x / W, b.y / H, (b.x + b.w) / W, (b.y + b.h) / H)
            rows.append(" ".join([str(classes[b.category])] + [repr(v) for v in vals]))
        label = label_for(rec)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(rows) + ("\n" if rows else ""))


def make_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def boxes_of(conv) -> dict[str, list[tuple]]:
    return {Path(r.path).name: [(b.category, b.x, b.y, b.w, b.h) for b in r.boxes] for r in conv.images}


def wheres(conv) -> list[tuple[str, str]]:
    return [(Path(p.file).name, p.where) for p in conv.problems]


# ------------------------------------------------------------------------------------------------ WIDER FACE


def test_wider_face_round_trip_exact(tmp_path):
    images_dir = tmp_path / "WIDER_train" / "images"
    rng = random.Random(5)
    records = []
    for i, event in enumerate(["0--Parade", "0--Parade", "12--Group", "61--Street_Battle"]):
        w, h = 80 + 8 * i, 60 + 4 * i
        path = make_image(images_dir / event / f"{event.split('--')[1]}_{i}.jpg", w, h, seed=i)
        boxes = []
        for _ in range(0 if i == 2 else i + 1):  # image 2 has no faces: the 0-count quirk line
            bw, bh = rng.randint(1, 20), rng.randint(1, 20)
            extra = {k: rng.randint(0, 2) for k in ("blur", "expression", "illumination", "occlusion", "pose")}
            boxes.append(Box("face", rng.randint(0, w - bw), rng.randint(0, h - bh), bw, bh, extra=extra))
        records.append(ImageRecord(path, w, h, boxes, "wider_face", event, ""))
    gt = write_wider_face(records, tmp_path / "wider_face_train_bbx_gt.txt", images_dir)

    conv = read_wider_face(gt, images_dir)

    assert conv.problems == []
    assert [r.path for r in conv.images] == [r.path for r in records]
    for got, want in zip(conv.images, records):
        assert (got.width, got.height, got.source, got.group) == (want.width, want.height, "wider_face", want.group)
        assert [(b.category, b.x, b.y, b.w, b.h, b.extra) for b in got.boxes] == \
               [(b.category, b.x, b.y, b.w, b.h, b.extra) for b in want.boxes]
    assert conv.images[2].boxes == []  # the quirk line is not a face and not a problem
    assert conv.images[1].origin == f"{gt}:4"  # path line of the second image (after path, count, 1 box)


def test_wider_face_malformed_lines_resync(tmp_path):
    images = tmp_path / "images"
    for rel in ["0--Parade/a.jpg", "1--Handshaking/b.jpg", "1--Handshaking/c.jpg", "2--Demo/d.jpg", "2--Demo/e.jpg",
                "2--Demo/f.jpg", "3--Riot/g.jpg", "4--Dancing/h.jpg", "outside.jpg"]:
        make_image(images / rel, 64, 48)
    text = """\
0--Parade/a.jpg
2
1 2 10 12 0 0 0 0 0 0
3 4 5 6 1 0 0 1 0 0
1--Handshaking/b.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/c.jpg
two
5 5 5 5 0 0 0 0 0 0
2--Demo/d.jpg
3
1 1 4 4 0 0 0 0 0 0
this is garbage
2 2 0 5 0 0 0 0 0 0
@@@ stray line between images
2--Demo/e.jpg
3
1 1 3 3 0 0 0 0 0 0
2--Demo/f.jpg
1
1 1 3 3 0 0 0 0 0 0
2 2 3 3 0 0 0 0 0 0
3--Riot/g.jpg
1
7 8 9 10 2 1 0 0 1 0
3--Riot/missing.jpg
1
1 1 2 2 0 0 0 0 0 0
../outside.jpg
1
1 1 2 2 0 0 0 0 0 0
4--Dancing/h.jpg
2
50 40 30 30 0 0 0 0 0 0
63 1 2 2 0 0 0 0 0 0
"""
    gt = tmp_path / "wider_face_val_bbx_gt.txt"
    gt.write_text(text)
    conv = read_wider_face(gt, images)

    assert boxes_of(conv) == {
        "a.jpg": [("face", 1, 2, 10, 12)],                   # the invalid=1 box is kept out
        "b.jpg": [],                                        # 0 faces + quirk line
        "d.jpg": [("face", 1, 1, 4, 4)],                    # garbage and w=0 lines lost, not the image
        "g.jpg": [("face", 7, 8, 9, 10)],                   # read after every malformed block above
        "h.jpg": [("face", 63, 1, 1, 2)],                   # 1 px over the edge: clipped; 32 px over: rejected
    }
    g = next(r for r in conv.images if r.path.name == "g.jpg")
    assert g.boxes[0].extra == {"blur": 2, "expression": 1, "illumination": 0, "occlusion": 1, "pose": 0}
    assert (g.group, g.origin) == ("3--Riot", f"{gt}:24")
    by_line = {p.where: p.reason for p in conv.problems}
    assert all(p.file == str(gt) for p in conv.problems)
    assert set(by_line) == {f"line {n}" for n in (4, 9, 14, 15, 16, 18, 21, 27, 30, 35)}
    assert "marked invalid by WIDER FACE" in by_line["line 4"]
    assert "'two' is not a non-negative integer" in by_line["line 9"] and "resynced at line 11" in by_line["line 9"]
    assert "expected 10 integers" in by_line["line 14"]
    assert "non-positive size 0x5" in by_line["line 15"]
    assert "expected an image path line" in by_line["line 16"]
    assert "count says 3 faces but 1 box lines" in by_line["line 18"]
    assert "count says 1 faces but more box lines follow" in by_line["line 21"]
    assert "does not exist" in by_line["line 27"]
    assert "path traversal" in by_line["line 30"]
    assert "outside the 64x48 image" in by_line["line 35"]


def test_wider_face_truncated_and_empty_files(tmp_path):
    make_image(tmp_path / "ev/a.jpg", 32, 32)
    gt = tmp_path / "gt.txt"
    gt.write_text("ev/a.jpg\n2\n1 1 2 2 0 0 0 0 0 0\n")
    conv = read_wider_face(gt, tmp_path)
    assert conv.images == [] and wheres(conv) == [("gt.txt", "line 2")]
    assert "end of the file" in conv.problems[0].reason
    gt.write_text("")
    conv = read_wider_face(gt, tmp_path)
    assert conv.images == [] and wheres(conv) == [("gt.txt", "file")]


# ----------------------------------------------------------------------------------------------------- PP4AV


def _pp4av_records(root: Path, rng: random.Random) -> list[ImageRecord]:
    records = []
    for i, (city, ext) in enumerate([("paris", "png"), ("paris", "png"), ("zurich", "jpg"), ("fisheye", "png")]):
        w, h = 97 + 13 * i, 61 + 7 * i  # odd sizes: normalised values are not short decimals
        path = make_image(root / "images" / city / f"{city}_{i:04d}.{ext}", w, h, seed=i)
        boxes = []
        for k in range(3 if i != 3 else 0):
            bw, bh = rng.uniform(1, w / 3), rng.uniform(1, h / 3)
            boxes.append(Box("face" if k % 2 == 0 else "plate", rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh))
        records.append(ImageRecord(path, w, h, boxes, "pp4av", city, ""))
    return records


@pytest.mark.parametrize("convention", ["center", "topleft", "corners"])
def test_pp4av_round_trip_within_1e6(tmp_path, convention):
    root = tmp_path / "pp4av"
    records = _pp4av_records(root, random.Random(11))
    rel = lambda r: Path(r.path).relative_to(root / "images").with_suffix(".txt")  # noqa: E731
    # Both trees PP4AV users meet: labels/ (YOLO tooling) and annotations/ (PP4AV's annotations.zip).
    write_pp4av(records[:2], lambda r: root / "labels" / rel(r), convention)
    write_pp4av(records[2:3], lambda r: root / "annotations" / rel(r), convention)
    # records[3] (fisheye) has no label file at all: a negative image.

    conv = read_pp4av(root, convention=convention)

    assert conv.problems == []
    got = {r.path: r for r in conv.images}
    assert set(got) == {r.path for r in records}
    for want in records:
        rec = got[want.path]
        assert (rec.width, rec.height, rec.group, rec.source) == (want.width, want.height, want.group, "pp4av")
        assert [b.category for b in rec.boxes] == [b.category for b in want.boxes]
        for b, w in zip(rec.boxes, want.boxes):
            assert np.allclose(b.xywh, w.xywh, rtol=0, atol=1e-6), (b, w)
    assert got[records[3].path].boxes == []


def test_pp4av_convention_matters(tmp_path):
    """Reading centre-based labels as top-left shifts every box by half its size: the argument is not cosmetic."""
    root = tmp_path / "pp4av"
    img = make_image(root / "images" / "paris" / "x.png", 200, 100)
    rec = ImageRecord(img, 200, 100, [Box("plate", 50, 20, 40, 10)], "pp4av", "paris", "")
    write_pp4av([rec], lambda r: root / "labels" / "paris" / "x.txt", "center")
    (center,) = read_pp4av(root).images
    (topleft,) = read_pp4av(root, convention="topleft").images
    assert np.allclose(center.boxes[0].xywh, [50, 20, 40, 10], atol=1e-9)
    assert np.allclose(topleft.boxes[0].xywh, [70, 25, 40, 10], atol=1e-9)
    with pytest.raises(ValueError, match="convention"):
        read_pp4av(root, convention="xyxy")


def test_pp4av_malformed_lines_and_layouts(tmp_path):
    root = tmp_path / "pp4av"
    make_image(root / "images" / "zurich" / "z1.png", 100, 50)
    labels = root / "labels" / "zurich" / "z1.txt"
    labels.parent.mkdir(parents=True)
    labels.write_text(
        "0 0.5 0.5 0.2 0.4\n"              # 1: good face: [40, 15, 20, 20]
        "1 0.5 0.5 0.2\n"                  # 2: 4 fields
        "0 0.5 0.5 0.2 0.4 0.93\n"         # 3: a prediction with a score
        "1 abc 0.5 0.2 0.4\n"              # 4: non-numeric
        "2 0.5 0.5 0.2 0.4\n"              # 5: unknown class
        "\n"                               # 6: blank, ignored
        "1 0.5 0.5 0.0 0.4\n"              # 7: zero width
        "1 0.95 0.5 0.3 0.2\n"             # 8: 10 px outside
        "1.0 0.1 0.1 0.1 0.1\n"            # 9: class written as 1.0: a plate [5, 2.5, 10, 5]
    )
    # Labels beside the images (PP4AV's two zips unpacked into one folder), and a hidden copy that is skipped.
    make_image(root / "strasbourg" / "s1.jpg", 40, 40)
    (root / "strasbourg" / "s1.txt").write_text("1 0.25 0.25 0.5 0.5\n")
    make_image(root / "strasbourg" / ".ipynb_checkpoints" / "s1.jpg", 40, 40)
    # A label whose image is missing.
    (root / "labels" / "paris").mkdir(parents=True)
    (root / "labels" / "paris" / "gone.txt").write_text("0 0.5 0.5 0.1 0.1\n")

    conv = read_pp4av(root)

    def rounded(c):
        return {k: [(cat, *np.round([x, y, w, h], 9)) for cat, x, y, w, h in v] for k, v in boxes_of(c).items()}

    assert rounded(conv) == {"z1.png": [("face", 40, 15, 20, 20), ("plate", 5, 2.5, 10, 5)],
                             "s1.jpg": [("plate", 0, 0, 20, 20)]}
    assert {r.path.name: r.group for r in conv.images} == {"z1.png": "zurich", "s1.jpg": "strasbourg"}
    assert wheres(conv) == [("z1.txt", f"line {n}") for n in (2, 3, 4, 5, 7, 8)] + [("gone.txt", "file")]
    reasons = [p.reason for p in conv.problems]
    assert "expected 5 fields" in reasons[0] and "score" in reasons[1] and "non-numeric" in reasons[2]
    assert "unknown class id 2" in reasons[3] and "non-positive box size" in reasons[4]
    assert "outside the 100x50 image" in reasons[5] and "without a matching image" in reasons[6]


# ------------------------------------------------------------------------------------------------------ COCO


@pytest.fixture
def coco_dir(tmp_path):
    d = tmp_path / "coco"
    make_image(d / "a.png", 100, 80, seed=1)
    make_image(d / "b.png", 60, 40, seed=2)
    make_image(d / "street" / "c.jpg", 50, 50, seed=3)
    return d


def test_coco_bad_entries_rejected_good_kept(coco_dir, monkeypatch):
    opened = []
    real_size = cs.image_size
    monkeypatch.setattr(cs, "image_size", lambda p: opened.append(str(p)) or real_size(p))
    doc = {
        "categories": [{"id": 7, "name": "Face"}, {"id": 9, "name": "license_plate"}, {"id": 3, "name": "car"}],
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 2, "file_name": "street/c.jpg", "width": 50, "height": 50},
            {"id": 3, "file_name": "missing.png", "width": 10, "height": 10},
            {"id": 4, "file_name": "../../etc/passwd"},
            {"id": 5, "file_name": "/etc/passwd"},
            {"id": 1, "file_name": "b.png", "width": 60, "height": 40},        # duplicated image id
            {"id": 6, "file_name": "b.png", "width": 61, "height": 40},        # size disagrees with the file
            {"id": 8, "file_name": "b.png"},                                   # no size in the JSON: fine, no boxes
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20]},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [30, 40, 40, 10], "attributes": {"text": "AB 123"}},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [90, 70, 20, 20]},     # outside the image
            {"id": 4, "image_id": 1, "category_id": 7, "bbox": [5, 5, -3, 10]},       # negative width
            {"id": 5, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]},        # unknown class id
            {"id": 6, "image_id": 2, "category_id": 9, "bbox": [0, 0, 10, 10], "text": "XY 1"},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5, 5]},         # duplicated annotation id
            {"id": 7, "image_id": 99, "category_id": 7, "bbox": [1, 1, 5, 5]},        # no such image
            {"id": 8, "image_id": 3, "category_id": 7, "bbox": [1, 1, 5, 5]},         # image rejected (missing file)
            {"id": 9, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]},         # a car
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [99.5, 0, 1, 5]},     # 0.5 px over: clipped
            {"id": 11, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5]},           # malformed bbox
        ],
    }
    path = coco_dir / "faces.json"
    path.write_text(json.dumps(doc, indent=1))

    conv = read_coco(path, name="mine")

    assert boxes_of(conv) == {
        "a.png": [("face", 10, 10, 20, 20), ("plate", 30, 40, 40, 10), ("face", 99.5, 0, 0.5, 5)],
        "c.jpg": [("plate", 0, 0, 10, 10)],
        "b.png": [],
    }
    texts = {b.extra["annotation_id"]: b.text for r in conv.images for b in r.boxes}
    assert texts == {1: None, 2: "AB 123", 10: None, 6: "XY 1"}
    a, c, b = conv.images
    assert (a.source, a.group, a.origin) == ("coco:mine", "1", f"{path}#image id 1")
    assert (c.group, b.group) == ("street", "8")
    assert all(p.file == str(path) for p in conv.problems)
    got = {p.where: p.reason for p in conv.problems}
    assert list(got) == [
        "images[2] (id 3)", "images[3] (id 4)", "images[4] (id 5)", "images[5] (id 1)", "images[6] (id 6)",
        "annotations[2] (id 3)", "annotations[3] (id 4)", "annotations[4] (id 5)", "annotations[6] (id 2)",
        "annotations[7] (id 7)", "annotations[9] (id 9)", "annotations[11] (id 11)",
    ]
    assert "does not exist" in got["images[2] (id 3)"]
    assert "path traversal" in got["images[3] (id 4)"] and "absolute path" in got["images[4] (id 5)"]
    assert "duplicated image id" in got["images[5] (id 1)"] and "disagree" in got["images[6] (id 6)"]
    assert "outside the 100x80 image" in got["annotations[2] (id 3)"]
    assert "non-positive box size" in got["annotations[3] (id 4)"]
    assert "unknown category id 42" in got["annotations[4] (id 5)"]
    assert "duplicated annotation id" in got["annotations[6] (id 2)"]
    assert "names no image" in got["annotations[7] (id 7)"]
    assert "neither face nor plate" in got["annotations[9] (id 9)"]
    assert "not 4 finite numbers" in got["annotations[11] (id 11)"]
    assert not any("passwd" in p for p in opened)  # the traversal targets were never opened


def test_coco_empty_and_invalid_files(coco_dir):
    empty = coco_dir / "empty.json"
    empty.write_bytes(b"")
    conv = read_coco(empty)
    assert conv.images == [] and [(p.file, p.where) for p in conv.problems] == [(str(empty), "file")]
    assert "empty" in conv.problems[0].reason

    broken = coco_dir / "broken.json"
    broken.write_text('{"images": [\n  {"id": 1, "file_name": "a.png"},\n  oops\n]}')
    conv = read_coco(broken)
    assert conv.images == [] and conv.problems[0].where == "line 3 column 3"
    assert "invalid JSON" in conv.problems[0].reason

    not_coco = coco_dir / "list.json"
    not_coco.write_text("[1, 2]")
    assert [p.where for p in read_coco(not_coco).problems] == ["file"]
    assert [p.where for p in read_coco(coco_dir / "absent.json").problems] == ["file"]


def test_coco_images_dir_and_category_names(coco_dir, tmp_path):
    doc = {
        "categories": [{"id": 1, "name": "licence plate"}, {"id": 2, "name": "LICENSE-PLATE"}, {"id": 3, "name": "face"}],
        "images": [{"id": "img-a", "file_name": "a.png", "width": 100, "height": 80}],
        "annotations": [{"id": i, "image_id": "img-a", "category_id": i, "bbox": [1, 2, 3, 4]} for i in (1, 2, 3)],
    }
    path = tmp_path / "elsewhere" / "ann.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    conv = read_coco(path, images_dir=coco_dir)
    assert conv.problems == []
    assert [b.category for b in conv.images[0].boxes] == ["plate", "plate", "face"]
    assert conv.images[0].path == coco_dir / "a.png" and conv.images[0].group == "img-a"


# -------------------------------------------------------------------------------------------- clip frames


def test_frames_from_region_tracks_synthetic(tmp_path):
    frames = synthetic_frames(12, 48, 64)
    video = write_clip(tmp_path / "raw" / "syn.mp4", frames)
    tracks_dir = tmp_path / "region_tracks"
    tracks_dir.mkdir()
    face = [[10.0 + t, 8.0, 26.0 + t, 28.0] for t in range(10)]
    face[4] = None  # a miss bridged by tracking: frame 4 would leave this face unlabelled
    plate = [[40.0, 30.0, 64.8, 38.0] for _ in range(6)]  # pokes out of the 64 px frame: clipped
    record = {
        "clip_id": "syn.mp4", "path": str(video), "fps": 25.0, "fps_fraction": "25/1", "frames": 12,
        "width": 64, "height": 48, "detections": 15, "frames_with_detections": 11,
        "tracks": [{"id": 1, "kind": "face", "start": 0, "stop": 10, "boxes": face},
                   {"id": 2, "kind": "plate", "start": 6, "stop": 12, "boxes": plate}],
        "scenes": [{"id": 1, "track_id": 1, "kind": "face", "start": 0, "stop": 10,
                    "regions": [[7, 5, 29, 31]] * 10, "crops": [[0, 0, 40, 44]] * 10, "scene_shape": [44, 40],
                    "pads": [[0, 0, 0, 0]] * 10}],
    }
    (tracks_dir / "syn.mp4.json").write_text(json.dumps(record))
    manifest = {"clips": [
        {"clip_id": "syn.mp4", "status": "ok", "path": str(video), "width": 64, "height": 48},
        {"clip_id": "gone.mp4", "status": "ok", "path": str(tmp_path / "gone.mp4"), "width": 64, "height": 48},
        {"clip_id": "bad.mp4", "status": "quarantined", "path": "x", "width": 1, "height": 1},
    ]}
    out = tmp_path / "frames"

    conv = frames_from_region_tracks(tracks_dir, manifest, out, every_n=2, max_per_clip=4)

    # candidates 0 1 2 3 5 6 7 8 9 10 11 (4 has a bridged miss) -> every 2nd -> 0 2 5 7 -> at most 4
    assert [r.path.name for r in conv.images] == [f"syn.mp4_{i:06d}.png" for i in (0, 2, 5, 7)]
    assert sorted(p.name for p in out.iterdir()) == [f"syn.mp4_{i:06d}.png" for i in (0, 2, 5, 7)]
    assert wheres(conv) == [("gone.mp4.json", "file")]
    by_frame = {int(r.path.stem[-6:]): r for r in conv.images}
    assert [(b.category, b.x, b.y, b.w, b.h) for b in by_frame[2].boxes] == [("face", 12.0, 8.0, 16.0, 20.0)]
    assert [(b.category, b.x, b.y, b.w, b.h) for b in by_frame[7].boxes] == \
           [("face", 17.0, 8.0, 16.0, 20.0), ("plate", 40.0, 30.0, 24.0, 8.0)]
    assert by_frame[7].boxes[1].extra == {"track_id": 2}
    rec = by_frame[5]
    assert (rec.width, rec.height, rec.source, rec.group, rec.origin) == \
           (64, 48, "clip_frames", "syn.mp4", f"{tracks_dir / 'syn.mp4.json'}#frame 5")
    decoded = list(read_frames(video))
    assert np.array_equal(np.asarray(Image.open(rec.path)), decoded[5])  # the PNG is the decoded frame, lossless


def test_frames_from_region_tracks_real_checkout(tmp_path, monkeypatch):
    tracks_dir = ROOT / "data/interim/region_tracks"
    manifest_path = ROOT / "data/interim/raw_clips/manifest.json"
    if not (tracks_dir / "index.json").is_file() or not manifest_path.is_file():
        pytest.skip("data/interim/region_tracks not materialized in this checkout (run the data lineage first)")
    monkeypatch.chdir(ROOT)  # the manifest's clip paths are relative to the project root
    manifest = json.loads(manifest_path.read_text())
    conv = frames_from_region_tracks(tracks_dir, manifest, tmp_path, every_n=10, max_per_clip=1)
    ok = [c["clip_id"] for c in manifest["clips"] if c["status"] == "ok"]
    assert conv.problems == []
    assert {r.group for r in conv.images} <= set(ok) and conv.images
    for rec in conv.images:
        record = json.loads((tracks_dir / f"{rec.group}.json").read_text())
        frame = int(rec.path.stem[-6:])
        raw = [(t["kind"], t["boxes"][frame - t["start"]]) for t in record["tracks"] if t["start"] <= frame < t["stop"]]
        assert all(b is not None for _, b in raw)
        assert [b.category for b in rec.boxes] == [k for k, _ in raw]
        want = [(max(0, x0), max(0, y0), min(rec.width, x1), min(rec.height, y1)) for _, (x0, y0, x1, y1) in raw]
        assert np.allclose([(b.x, b.y, b.x + b.w, b.y + b.h) for b in rec.boxes], want, atol=1e-3)
        with Image.open(rec.path) as im:
            assert im.size == (rec.width, rec.height) == (record["width"], record["height"])
