"""Converters from each face/plate source into `Conversion`s (see `assets.coco_records`).

Sources: WIDER FACE `wider_face_*_bbx_gt.txt`, PP4AV YOLO txt labels, a plain COCO JSON, and frames sampled
from the `region_tracks` records of the data lineage. Plain functions over paths: no Dagster, MLflow or DVC.

Rules shared by every converter (one place, so `unified_coco` sees one policy):

- **One bad line loses only that line.** A line or entry that cannot be read, or whose box is rejected, becomes
  a `Problem` naming the file and the line/entry; the rest of the file is kept. Only where the *structure* is
  ambiguous (a WIDER FACE count that does not match the box lines that follow) is the whole image block
  dropped, since we cannot tell which lines belong to it.
- **Boxes must lie inside the image, with 1 px of tolerance.** A box that pokes out by at most 1 px (rounding
  in the tool that wrote it) is clipped to the image; one further out is rejected, not clipped: annotation tools
  clamp to the canvas, so a box well outside the image almost always means wrong coordinates (another image,
  another resolution, swapped axes, a wrong coordinate convention) and its clipped remainder would be a wrong
  label. Frames from our own clips are the exception: the detector extrapolates faces cut by the frame
  edge, and there the clipped box *is* the visible region.
- **Non-positive width or height is a Problem**, never an exception.
- **Paths from annotation files are never trusted**: absolute paths, drive letters and `..` components are
  rejected before anything is opened. The check is lexical (symlinks are not resolved), so a DVC cache that
  links files into `data/` still works.
- **Image sizes come from the file header** (`PIL.Image.open(path).size`), the pixels are not decoded.
- **An image with no boxes is a negative image** and is kept (where the source says it holds no face/plate).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Literal

from PIL import Image

from assets.atomic import atomic_path
from assets.coco_records import CATEGORY_IDS, Box, Conversion, ImageRecord, Problem
from assets.video import VideoError, read_frames

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
EDGE_TOLERANCE_PX = 1.0

PP4AVConvention = Literal["center", "topleft", "corners"]
PP4AV_CLASSES = {0: "face", 1: "plate"}
PP4AV_LABEL_TREES = ("labels", "annotations")  # beside `images/`: YOLO tooling says labels/, PP4AV's zip annotations/

# COCO category names (lower-cased, runs of space/_/- folded to one space) that mean our categories.
_CATEGORY_NAMES = {
    "face": "face", "faces": "face", "human face": "face",
    "plate": "plate", "plates": "plate", "license plate": "plate", "licence plate": "plate",
    "license plates": "plate", "licence plates": "plate", "number plate": "plate",
}

WIDER_FIELDS = ("x1", "y1", "w", "h", "blur", "expression", "illumination", "invalid", "occlusion", "pose")


# --------------------------------------------------------------------------------------------- shared helpers


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; raises OSError (PIL's errors are OSErrors) if unreadable."""
    with Image.open(path) as image:
        return image.size


def safe_relative_path(name: object) -> PurePosixPath | str:
    """`name` as a relative path that stays inside its root, or the reason it is refused (never opened)."""
    if not isinstance(name, str) or not name.strip():
        return f"file name {name!r} is not a non-empty string"
    if "\x00" in name:
        return f"file name {name!r} contains a NUL byte"
    posix = name.replace("\\", "/")  # annotation files written on Windows use backslashes
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return f"absolute path {name!r} refused (must be relative to the images folder); not opened"
    path = PurePosixPath(posix)
    if ".." in path.parts:
        return f"path traversal in {name!r} refused ('..' leaves the images folder); not opened"
    return path


def fit_box(x: float, y: float, w: float, h: float, width: int, height: int) -> tuple[float, float, float, float] | str:
    """The box, clipped if it pokes out by at most `EDGE_TOLERANCE_PX`; otherwise the reason it is rejected."""
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"non-finite box {[x, y, w, h]}"
    if w <= 0 or h <= 0:
        return f"non-positive box size {w:g}x{h:g}"
    overshoot = max(-x, -y, x + w - width, y + h - height)
    if overshoot <= 0:
        return (x, y, w, h)
    if overshoot > EDGE_TOLERANCE_PX:
        return (f"box [{x:g}, {y:g}, {w:g}, {h:g}] reaches {overshoot:.2f} px outside the {width}x{height} image "
                f"(tolerance {EDGE_TOLERANCE_PX:g} px)")
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return f"box [{x:g}, {y:g}, {w:g}, {h:g}] has no area inside the {width}x{height} image"
    return (x0, y0, x1 - x0, y1 - y0)


def _is_image_path_line(line: str) -> bool:
    return line.lower().endswith(IMAGE_SUFFIXES) and len(line) > 4


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


# ------------------------------------------------------------------------------------------------ WIDER FACE


def _wider_box_fields(line: str) -> list[int] | str:
    fields = line.split()
    if len(fields) != len(WIDER_FIELDS):
        return f"expected {len(WIDER_FIELDS)} integers ({' '.join(WIDER_FIELDS)}), got {len(fields)} fields: {_short(line)}"
    try:
        return [int(f) for f in fields]
    except ValueError:
        return f"non-integer field in box line {_short(line)}"


def read_wider_face(annotation_txt: Path, images_dir: Path) -> Conversion:
    """Read a WIDER FACE `wider_face_{train,val}_bbx_gt.txt`.

    Layout per image: a path line relative to `images_dir` (`0--Parade/0_Parade_marchingband_1_849.jpg`), a
    count line N, then N lines `x1 y1 w h blur expression illumination invalid occlusion pose` (integers, pixels,
    top-left based). The official files follow a count of 0 with ONE all-zero box line; it is skipped.

    - `invalid=1` boxes are kept out, each as a `Problem` ("marked invalid by WIDER FACE"): WIDER's own evaluation
      ignores them (neither positives nor negatives), so they are no label we can train on; recording them
      rather than dropping them silently keeps the count visible and auditable in the unified set's report.
      Their image is kept (the other faces are good labels).
    - `w` or `h` <= 0 (WIDER has some): a Problem for that line, the image keeps its other faces.
    - A box line that cannot be read (wrong field count, non-integers): a Problem for that line only.
    - A count line that is not a non-negative integer, or a count that does not match the box lines that follow
      (too few before the next path / end of file, or more box lines after them): the image block is dropped
      with one Problem, because its lines cannot be attributed; the parser resyncs at the next path-looking
      line (ending in .jpg/.jpeg/.png), so later images are kept.
    - A stray non-box line between blocks: a Problem for that line, skipped.
    - A missing or unreadable image file, or an absolute/`..` path: a Problem, the image is dropped.

    group = the event folder (first path component, e.g. "0--Parade"), source "wider_face",
    origin "<annotation file>:<path line>". Box.extra holds the WIDER attributes (blur … pose).
    """
    annotation_txt, images_dir = Path(annotation_txt), Path(images_dir)
    fname = str(annotation_txt)
    out = Conversion()

    def problem(lineno: int | str, reason: str) -> None:
        out.problems.append(Problem(fname, lineno if isinstance(lineno, str) else f"line {lineno}", reason))

    try:
        text = annotation_txt.read_bytes().decode("utf-8", errors="replace")
    except OSError as err:
        problem("file", f"cannot read the annotation file ({err.strerror or err})")
        return out
    if not text.strip():
        problem("file", "empty annotation file")
        return out
    # Blank lines carry nothing (the official files end with one); they never count as box lines.
    entries = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]

    def next_path(k: int) -> int:
        while k < len(entries) and not _is_image_path_line(entries[k][1]):
            k += 1
        return k

    def is_box_line(k: int) -> bool:
        return k < len(entries) and not _is_image_path_line(entries[k][1]) and not isinstance(_wider_box_fields(entries[k][1]), str)

    k = 0
    while k < len(entries):
        path_lineno, rel = entries[k]
        if not _is_image_path_line(rel):
            problem(path_lineno, f"expected an image path line (ending in .jpg/.jpeg/.png), got {_short(rel)}; skipped")
            k += 1
            continue
        k += 1
        if k >= len(entries):
            problem(path_lineno, f"{rel}: no count line before the end of the file; image dropped")
            break
        count_lineno, count_text = entries[k]
        if _is_image_path_line(count_text):
            problem(count_lineno, f"{rel}: the count line is missing (found the next image path); image dropped")
            continue  # resync right here: this line is the next image's path
        try:
            count = int(count_text)
            if count < 0:
                raise ValueError
        except ValueError:
            resync = next_path(k + 1)
            where = f"line {entries[resync][0]}" if resync < len(entries) else "the end of the file"
            problem(count_lineno, f"{rel}: count line {_short(count_text)} is not a non-negative integer; image dropped, "
                                  f"resynced at {where}")
            k = resync
            continue
        k += 1
        box_lines: list[tuple[int, str]] = []
        if count == 0:
            # The official files' quirk: a 0 count is followed by one `0 0 0 0 0 0 0 0 0 0` line.
            if k < len(entries) and _wider_box_fields(entries[k][1]) == [0] * len(WIDER_FIELDS):
                k += 1
        else:
            while len(box_lines) < count and k < len(entries) and not _is_image_path_line(entries[k][1]):
                box_lines.append(entries[k])
                k += 1
            if len(box_lines) < count:
                where = "the next image path" if k < len(entries) else "the end of the file"
                problem(count_lineno, f"{rel}: count says {count} faces but {len(box_lines)} box lines come before {where}; "
                                      "image dropped")
                continue
        if is_box_line(k):
            resync = next_path(k)
            problem(count_lineno, f"{rel}: count says {count} faces but more box lines follow (lines {entries[k][0]}–"
                                  f"{entries[resync - 1][0]}); image dropped")
            k = resync
            continue

        rel_path = safe_relative_path(rel)
        if isinstance(rel_path, str):
            problem(path_lineno, rel_path)
            continue
        image_path = images_dir / rel_path
        if not image_path.is_file():
            problem(path_lineno, f"{rel}: image file {image_path} does not exist; image dropped")
            continue
        try:
            width, height = image_size(image_path)
        except OSError as err:
            problem(path_lineno, f"{rel}: not a readable image ({err}); image dropped")
            continue

        boxes: list[Box] = []
        for lineno, line in box_lines:
            fields = _wider_box_fields(line)
            if isinstance(fields, str):
                problem(lineno, f"{rel}: {fields}; line skipped")
                continue
            attrs = dict(zip(WIDER_FIELDS, fields))
            x, y, w, h = fields[:4]
            if w <= 0 or h <= 0:
                problem(lineno, f"{rel}: face with non-positive size {w}x{h}; box skipped")
                continue
            if attrs["invalid"] == 1:
                problem(lineno, f"{rel}: marked invalid by WIDER FACE; box kept out")
                continue
            fitted = fit_box(x, y, w, h, width, height)
            if isinstance(fitted, str):
                problem(lineno, f"{rel}: {fitted}; box skipped")
                continue
            extra = {key: attrs[key] for key in ("blur", "expression", "illumination", "occlusion", "pose")}
            boxes.append(Box("face", *fitted, extra=extra))
        group = rel_path.parts[0] if len(rel_path.parts) > 1 else rel_path.stem
        out.images.append(ImageRecord(image_path, width, height, boxes, "wider_face", group, f"{fname}:{path_lineno}"))
    return out


# ----------------------------------------------------------------------------------------------------- PP4AV


def _pp4av_label_for(image: Path, root: Path) -> Path | None:
    rel = image.relative_to(root)
    candidates = []
    if len(rel.parts) > 1 and rel.parts[0] == "images":
        sub = Path(*rel.parts[1:]).with_suffix(".txt")
        candidates += [root / tree / sub for tree in PP4AV_LABEL_TREES]
    candidates.append(image.with_suffix(".txt"))
    return next((c for c in candidates if c.is_file()), None)


def _yolo_to_pixels(values: list[float], convention: PP4AVConvention, width: int, height: int) -> tuple[float, ...]:
    a, b, c, d = values
    if convention == "center":
        return ((a - c / 2) * width, (b - d / 2) * height, c * width, d * height)
    if convention == "topleft":
        return (a * width, b * height, c * width, d * height)
    return (a * width, b * height, (c - a) * width, (d - b) * height)  # corners: x_min y_min x_max y_max


def _parse_yolo_line(line: str) -> tuple[int, list[float]] | str:
    fields = line.split()
    if len(fields) == 6:
        return f"6 fields (a prediction line with a confidence score?); ground truth has 5: class cx cy w h: {_short(line)}"
    if len(fields) != 5:
        return f"expected 5 fields (class cx cy w h), got {len(fields)}: {_short(line)}"
    try:
        cls_value = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return f"non-numeric field in {_short(line)}"
    if not cls_value.is_integer():
        return f"class {fields[0]!r} is not an integer"
    if not all(math.isfinite(v) for v in values):
        return f"non-finite coordinate in {_short(line)}"
    return int(cls_value), values


def read_pp4av(root: Path, convention: PP4AVConvention = "center") -> Conversion:
    """Read PP4AV (https://github.com/khaclinh/pp4av): images with YOLO txt labels, class 0 = face, 1 = plate.

    Coordinate convention, checked against the sources:
    - The dataset card (`DATASET.md` in khaclinh/pp4av, also the Hugging Face card `khaclinh/pp4av`) describes each
      label line as `<object-class> <x_center> <y_center> <width> <height>` normalised by the image size ("YOLO
      v1.1", CVAT's export), and the repo's own converter `tools/data_processing/format_transform.py`
      (`yolov1_to_coco`) reads them centre-based: `x = cx * W - w / 2`. So `convention="center"` (the default) is
      right for the released txt files.
    - The same card's "Data Instances" example shows rows such as `[1 0.5017185 0.0306425 0.5185935 0.0410975]`:
      read centre-based that is a plate half the image wide centred 3 % from the top edge (impossible); read as
      normalised corners `x_min y_min x_max y_max` it is a 32x11 px plate on a 1920x1080 frame. The Hugging Face
      loader therefore presents *corners*, not YOLO centres. Labels dumped from it need `convention="corners"`.
    - Other tools (and hand-written exports) store a normalised *top-left* x, y with w, h: `convention="topleft"`.

    Layout: images are every .jpg/.jpeg/.png under `root` (folders starting with "." skipped, e.g.
    `.ipynb_checkpoints`); the label of `root/images/<rel>.png` is `root/labels/<rel>.txt` or
    `root/annotations/<rel>.txt` (PP4AV's `annotations.zip` unpacked beside `images.zip`), else the .txt beside the
    image. A label file under `labels/`/`annotations/` with no image is a Problem.

    An image without a label file, or with an empty one, is kept as a negative image (zero boxes): PP4AV writes
    a label file per annotated image and its images without faces/plates hold none. Bad lines (wrong field count,
    a 6th score column, non-numbers, a class other than 0/1, non-positive size, a box more than 1 px outside the
    image) are Problems naming the label file and line; the image keeps its other boxes.

    group = the image's parent folder (PP4AV's city/sequence: paris, zurich, fisheye, …), source "pp4av",
    origin = the label file (or the image, when it has none).
    """
    if convention not in ("center", "topleft", "corners"):
        raise ValueError(f"read_pp4av: convention must be 'center', 'topleft' or 'corners', got {convention!r}")
    root = Path(root)
    out = Conversion()
    if not root.is_dir():
        out.problems.append(Problem(str(root), "folder", "PP4AV root folder does not exist"))
        return out
    images = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    used_labels: set[Path] = set()
    for image in images:
        label = _pp4av_label_for(image, root)
        try:
            width, height = image_size(image)
        except OSError as err:
            out.problems.append(Problem(str(image), "file", f"not a readable image ({err}); image dropped"))
            if label:
                used_labels.add(label)
            continue
        boxes: list[Box] = []
        if label is not None:
            used_labels.add(label)
            try:
                lines = label.read_bytes().decode("utf-8", errors="replace").splitlines()
            except OSError as err:
                out.problems.append(Problem(str(label), "file", f"cannot read label file ({err.strerror or err}); image dropped"))
                continue
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                parsed = _parse_yolo_line(line)
                if isinstance(parsed, str):
                    out.problems.append(Problem(str(label), f"line {lineno}", parsed))
                    continue
                cls, values = parsed
                if cls not in PP4AV_CLASSES:
                    out.problems.append(Problem(str(label), f"line {lineno}", f"unknown class id {cls} (0 = face, 1 = plate)"))
                    continue
                fitted = fit_box(*_yolo_to_pixels(values, convention, width, height), width, height)
                if isinstance(fitted, str):
                    out.problems.append(Problem(str(label), f"line {lineno}", f"{fitted} (convention {convention!r})"))
                    continue
                boxes.append(Box(PP4AV_CLASSES[cls], *fitted))
        origin = str(label) if label is not None else str(image)
        out.images.append(ImageRecord(image, width, height, boxes, "pp4av", image.parent.name, origin))
    for tree in PP4AV_LABEL_TREES:
        for orphan in sorted((root / tree).rglob("*.txt")) if (root / tree).is_dir() else []:
            if orphan not in used_labels:
                out.problems.append(Problem(str(orphan), "file", "label file without a matching image under images/"))
    return out


# ------------------------------------------------------------------------------------------------------ COCO


def _is_id(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and bool(value))


def coco_category(name: object) -> str | None:
    """'face' / 'plate' for a COCO category name (case-insensitive, _/-/space alike), else None."""
    if not isinstance(name, str):
        return None
    return _CATEGORY_NAMES.get(re.sub(r"[\s_\-]+", " ", name.strip().lower()))


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_coco(json_path: Path, images_dir: Path | None = None, name: str = "coco") -> Conversion:
    """Read a plain COCO detection JSON whose categories are named face / plate.

    Categories map by NAME, case-insensitively ("face"; "plate", "license_plate", "license plate", "licence plate",
    …), so any id numbering works; an annotation whose category id is unknown, or names something else, is a
    Problem. `file_name` is relative to `images_dir` (default: the JSON's folder).

    Rejected, each as a Problem naming the file and the entry (`images[i] (id N)`, `annotations[j] (id N)`), with
    every good entry kept:
    - an empty file (0 bytes), a missing file, invalid JSON (named by line and column) or a top level that is not
      a COCO object: one Problem for the file, an empty Conversion (never an exception);
    - an absolute path or `..` in `file_name` (`/etc/passwd`, `../../etc/passwd`): never opened;
    - a missing or unreadable image file;
    - `width`/`height` in the JSON that disagree with the real image size: the image is rejected, since its boxes
      were drawn for another resolution (or on another file);
    - a duplicated image id: the first entry is kept, later ones rejected (annotations go to the first);
    - a duplicated annotation id: the first is kept, later ones rejected;
    - an annotation whose `image_id` names no image; annotations of an image rejected above are dropped with it
      (its own Problem already names it) and not reported one by one;
    - an unknown category id, a bbox that is not 4 finite numbers, a non-positive width/height, a box more than
      1 px outside the image (see the module notes for why it is not clipped).

    Images without annotations are kept as negative images. A plate's text comes from `attributes.text` or a
    top-level `text`. group = the `file_name`'s parent folder, or the image id when it has none;
    source f"coco:{name}", origin "<json>#image id N".
    """
    json_path = Path(json_path)
    images_dir = Path(images_dir) if images_dir is not None else json_path.parent
    fname, source = str(json_path), f"coco:{name}"
    out = Conversion()

    def problem(where: str, reason: str) -> None:
        out.problems.append(Problem(fname, where, reason))

    try:
        raw = json_path.read_bytes()
    except OSError as err:
        problem("file", f"cannot read the annotation file ({err.strerror or err})")
        return out
    if not raw:
        problem("file", "empty annotation file (0 bytes)")
        return out
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        problem("file", f"not UTF-8 text ({err.reason} at byte {err.start})")
        return out
    except json.JSONDecodeError as err:
        problem(f"line {err.lineno} column {err.colno}", f"invalid JSON: {err.msg}")
        return out
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        problem("file", "not a COCO object: no 'images' list at the top level")
        return out
    annotations = doc.get("annotations", [])
    if not isinstance(annotations, list):
        problem("annotations", "'annotations' is not a list; no boxes read")
        annotations = []
    categories = doc.get("categories", [])
    if not isinstance(categories, list):
        problem("categories", "'categories' is not a list; every annotation will have an unknown category")
        categories = []

    category_of: dict[object, str | None] = {}
    category_name: dict[object, object] = {}
    for i, cat in enumerate(categories):
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not _is_id(cid):
            problem(f"categories[{i}]", "not an object with an integer or string id; ignored")
            continue
        if cid in category_of:
            problem(f"categories[{i}] (id {cid})", "duplicated category id; the first one is kept")
            continue
        category_of[cid] = coco_category(cat.get("name"))
        category_name[cid] = cat.get("name")

    kept: dict[object, ImageRecord] = {}
    rejected: set[object] = set()
    for i, entry in enumerate(doc["images"]):
        iid = entry.get("id") if isinstance(entry, dict) else None
        if not _is_id(iid):
            problem(f"images[{i}]", f"not an object with an integer or string id (id {iid!r}); rejected")
            continue
        where = f"images[{i}] (id {iid})"
        if iid in kept or iid in rejected:
            problem(where, "duplicated image id: the first entry with this id is kept, this one is rejected")
            continue
        rel = safe_relative_path(entry.get("file_name"))
        if isinstance(rel, str):
            problem(where, rel)
            rejected.add(iid)
            continue
        path = images_dir / rel
        if not path.is_file():
            problem(where, f"image file {path} does not exist; rejected")
            rejected.add(iid)
            continue
        try:
            width, height = image_size(path)
        except OSError as err:
            problem(where, f"{path}: not a readable image ({err}); rejected")
            rejected.add(iid)
            continue
        json_w, json_h = entry.get("width"), entry.get("height")
        if (json_w is not None or json_h is not None) and (json_w, json_h) != (width, height):
            problem(where, f"width x height {json_w}x{json_h} in the JSON disagree with the image file ({width}x{height}); "
                           "rejected, its boxes were drawn for another size")
            rejected.add(iid)
            continue
        group = rel.parent.as_posix() if rel.parent != PurePosixPath(".") else str(iid)
        kept[iid] = ImageRecord(path, width, height, [], source, group, f"{fname}#image id {iid}")

    seen_annotations: set[object] = set()
    for j, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            problem(f"annotations[{j}]", "not a JSON object; rejected")
            continue
        aid = ann.get("id")
        where = f"annotations[{j}]" if aid is None else f"annotations[{j}] (id {aid})"
        if aid is not None:
            if not _is_id(aid):
                problem(where, f"invalid annotation id {aid!r}; rejected")
                continue
            if aid in seen_annotations:
                problem(where, "duplicated annotation id: the first one is kept, this one is rejected")
                continue
            seen_annotations.add(aid)
        iid = ann.get("image_id")
        if _is_id(iid) and iid in rejected:
            continue
        if not _is_id(iid) or iid not in kept:
            problem(where, f"image_id {iid!r} names no image in the file; rejected")
            continue
        cid = ann.get("category_id")
        if not _is_id(cid) or cid not in category_of:
            problem(where, f"unknown category id {cid!r}; rejected")
            continue
        category = category_of[cid]
        if category is None:
            problem(where, f"category {category_name[cid]!r} (id {cid}) is neither face nor plate; rejected")
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            problem(where, f"bbox {bbox!r} is not 4 finite numbers [x, y, w, h]; rejected")
            continue
        record = kept[iid]
        fitted = fit_box(*(float(v) for v in bbox), record.width, record.height)
        if isinstance(fitted, str):
            problem(where, f"{fitted}; rejected")
            continue
        attributes = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
        text = attributes.get("text", ann.get("text"))
        extra = {"annotation_id": aid}
        if "iscrowd" in ann:
            extra["iscrowd"] = ann["iscrowd"]
        record.boxes.append(Box(category, *fitted, text=text if isinstance(text, str) else None, extra=extra))
    out.images.extend(kept.values())
    return out


# -------------------------------------------------------------------------------------------- clip frames


def _frame_boxes(record: dict) -> tuple[dict[int, list[tuple[str, float, float, float, float, dict]]], set[int]]:
    """Per frame: the detector's boxes (x0, y0, x1, y1 as the detector saw them, before box_margin) from the
    tracks, and the frames where some track is active but has no box (a bridged miss: a known region would be
    unlabelled there). Records without tracks fall back to the scenes' smoothed, margin-expanded regions."""
    boxes: dict[int, list] = {}
    incomplete: set[int] = set()
    if record.get("tracks") is not None:
        for track in record["tracks"]:
            for offset, box in enumerate(track.get("boxes") or []):
                frame = int(track["start"]) + offset
                if box is None:
                    incomplete.add(frame)
                else:
                    boxes.setdefault(frame, []).append((track["kind"], *box, {"track_id": track.get("id")}))
    else:
        for scene in record.get("scenes") or []:
            for offset, region in enumerate(scene["regions"]):
                boxes.setdefault(int(scene["start"]) + offset, []).append(
                    (scene["kind"], *region, {"track_id": scene.get("track_id"), "from": "scene_region"}))
    return boxes, incomplete


def frames_from_region_tracks(region_tracks_dir: Path, manifest: dict, out_dir: Path, every_n: int, max_per_clip: int,
                              groups: dict[str, str] | None = None, cache=None) -> Conversion:
    """Sample frames of the `region_tracks` clips, with the detector's boxes, as PNG images.

    `data/interim/region_tracks/<clip>.json` holds, per track, one box per frame from `start` as the detector saw
    it (`[x0, y0, x1, y1]`, `null` for a missed frame that tracking bridged), and per scene the smoothed regions
    grown by `tracking.box_margin`. The raw detector boxes are used (a tight box is the right detection label;
    the margin exists for masking), and the scene regions only for a record without tracks.

    Candidate frames are those with at least one box and no bridged miss (a track active there without a box
    would leave a known face/plate unlabelled); every `every_n`-th candidate is taken, at most `max_per_clip`
    per clip. Clips come from `manifest` (the raw_clips manifest; quarantined ones skipped), their video from the
    manifest's `path`. Frames are decoded with `assets.video.read_frames` and written atomically as
    `out_dir/<clip>_<frame:06d>.png` (out_dir is normally the temporary folder of the caller's `atomic_dir`).
    Boxes are clipped to the frame (the detector extrapolates faces cut by the frame edge); a frame whose box
    has no area left inside is not sampled. A missing/unreadable record or an undecodable video is a Problem
    for that clip; other clips go on.

    group = the clip's content group (`groups`, from `assets.content_groups.clip_groups`: copies of a clip share
    one; else the clip id), source "clip_frames", origin "<record json>#frame N"; Box.extra holds the track id.

    `cache` (an `assets.clip_cache.ClipCache`): a clip's decoded frames are taken from it when the same frames of
    the same video (content hash in the manifest) were written before, and stored there otherwise.
    """
    if every_n < 1:
        raise ValueError(f"frames_from_region_tracks: every_n must be >= 1, got {every_n}")
    region_tracks_dir, out_dir = Path(region_tracks_dir), Path(out_dir)
    out = Conversion()
    for clip in manifest.get("clips", []):
        if clip.get("status") != "ok" or max_per_clip <= 0:
            continue
        clip_id = clip["clip_id"]
        record_path = region_tracks_dir / f"{clip_id}.json"
        try:
            record = json.loads(record_path.read_text())
        except FileNotFoundError:
            out.problems.append(Problem(str(record_path), "file", f"no region_tracks record for clip {clip_id}"))
            continue
        except (OSError, json.JSONDecodeError) as err:
            out.problems.append(Problem(str(record_path), "file", f"unreadable region_tracks record ({err})"))
            continue
        width, height = int(record.get("width") or clip["width"]), int(record.get("height") or clip["height"])
        by_frame, incomplete = _frame_boxes(record)
        frame_boxes: dict[int, list[Box]] = {}
        for frame, raw_boxes in by_frame.items():
            if frame in incomplete:
                continue
            boxes = []
            for kind, x0, y0, x1, y1, extra in raw_boxes:
                if kind not in CATEGORY_IDS:
                    boxes = None
                    out.problems.append(Problem(str(record_path), f"frame {frame}", f"unknown region kind {kind!r}; frame not sampled"))
                    break
                cx0, cy0 = max(0.0, float(x0)), max(0.0, float(y0))
                cx1, cy1 = min(float(width), float(x1)), min(float(height), float(y1))
                if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
                    boxes = None
                    break
                boxes.append(Box(kind, cx0, cy0, round(cx1 - cx0, 4), round(cy1 - cy0, 4), extra=dict(extra)))
            if boxes:
                frame_boxes[frame] = boxes
        chosen = sorted(frame_boxes)[::every_n][:max_per_clip]
        if not chosen:
            continue
        video = Path(clip.get("path") or record["path"])
        wanted = set(chosen)
        key = cache.key([clip.get("sha256"), clip_id, chosen]) if cache is not None else None
        sizes = cache.fetch(key, out_dir) if key else None
        if sizes is not None:
            for index in chosen:
                w, h = sizes[str(index)]
                out.images.append(ImageRecord(out_dir / f"{clip_id}_{index:06d}.png", w, h, frame_boxes[index], "clip_frames",
                                              (groups or {}).get(clip_id, clip_id), f"{record_path}#frame {index}"))
            continue
        written: set[int] = set()
        try:
            for index, frame in enumerate(read_frames(video, chosen[0], chosen[-1] + 1), start=chosen[0]):
                if index not in wanted:
                    continue
                dest = out_dir / f"{clip_id}_{index:06d}.png"
                with atomic_path(dest) as tmp:
                    Image.fromarray(frame).save(tmp, format="PNG")
                written.add(index)
                h, w = frame.shape[:2]
                out.images.append(ImageRecord(dest, w, h, frame_boxes[index], "clip_frames", (groups or {}).get(clip_id, clip_id),
                                              f"{record_path}#frame {index}"))
        except VideoError as err:
            out.problems.append(Problem(str(video), "decoding", f"{err}; {len(written)} of {len(chosen)} frames written"))
            continue
        if len(written) < len(chosen):
            missing = sorted(wanted - written)
            out.problems.append(Problem(str(video), f"frame {missing[0]}",
                                        f"video ended before {len(missing)} sampled frame(s) of its region_tracks record"))
        elif key:
            made = {r.path.name: r for r in out.images[-len(chosen):]}
            cache.store(key, out_dir, sorted(made), {str(i): [made[f"{clip_id}_{i:06d}.png"].width,
                                                             made[f"{clip_id}_{i:06d}.png"].height] for i in chosen}, clip_id)
    return out
