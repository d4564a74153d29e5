"""The embedded default's base mosaic detector: pixelation learnt at set-up, on pictures the lineage never shows.

`mosaic_detector_checkpoint` fine-tunes a detector on the lineage's own mosaics (assets/mosaic_coco.py) for a
few dozen iterations. Started from the face/plate base (training/detector_base.py), whose features know faces
and plates but not pixelation, that is too little: its val AP50 stayed near 0 while the grid heuristic reached
0.37 (README). A real user starts from a detector that has seen mosaics (Lada ships one); offline, `make setup`
makes one once: video-shaped crops of scikit-image's pictures, 0-2 of the set-up portraits (other people than the
lineage's) composited on each, most faces pixelated the way `mosaic_lq` pixelates regions (Lada's modes and
area-based block size) plus random mosaics pasted elsewhere (mosaic_coco's own `pasted_mosaics`), some images
left clean, every image stored as a JPEG of random quality. It fine-tunes the face/plate base (class layers
new) at the embedded detector's size; the lineage then fine-tunes this file (`mosaic_detector.init_from`).
`base.json` beside it records the recipe, the data's and the code's hashes, the file's sha256 and its AP50 on
its held-out images next to the grid heuristic's.

    python -m training.mosaic_detector_base --out data/models/mosaic-detector-base \\
        --people data/media/pretrain_people/people.json --init data/models/detector-base/detector.pth
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

BASE_FILE = "detector.pth"
MARKER = "base.json"


@dataclass(frozen=True)
class MosaicLook:  # the fields assets.mosaic.sample_spec reads: params.yaml's `mosaic` defaults
    modes: tuple[str, ...] = ("square_mid", "square_avg", "rect_avg")
    block_size_scale: tuple[float, float] = (0.8, 1.2)
    min_block_size: int = 4
    rect_ratio: tuple[float, float] = (1.1, 1.8)
    feather: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class PasteLook:  # the fields assets.mosaic_coco.pasted_mosaics reads
    pasted_per_frame: tuple[int, int] = (0, 2)
    paste_side: tuple[float, float] = (0.08, 0.35)
    paste_aspect: tuple[float, float] = (0.5, 2.5)
    min_visible_change: float = 4.0


@dataclass(frozen=True)
class BaseRecipe:
    # The detector: the embedded profile's `mosaic_detector` section must match it (init_from checks).
    arch: str = "fcos_resnet18_fpn"
    fpn_channels: int = 128
    min_size: int = 256
    max_size: int = 384
    batch_size: int = 4
    lr: float = 0.01
    iters: int = 240
    # The data.
    train_images: int = 480
    val_images: int = 48
    long_side: int = 384
    aspect: tuple[float, float] = (1.3, 1.9)  # width / height, like video frames
    faces: tuple[int, int] = (0, 2)
    face_width: tuple[float, float] = (0.12, 0.35)  # share of the image width
    face_mosaic_rate: float = 0.6  # the rest stay clean: faces are not what the detector must find
    face_margin: float = 0.15  # the mosaic covers the face box grown by this share per side (tracking.box_margin)
    clean_rate: float = 0.15  # images without any mosaic
    jpeg_quality: tuple[int, int] = (40, 90)
    held_out_portraits: int = 8  # val images use only these (the last ones), never seen in training
    seed: int = 6161
    mosaic: MosaicLook = MosaicLook()
    paste: PasteLook = PasteLook()


def _code_hash() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in (here / "mosaic_detector_base.py", here / "detector.py", here.parent / "assets" / "mosaic.py",
                 here.parent / "assets" / "mosaic_coco.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _canvas(pictures: list[np.ndarray], recipe: BaseRecipe, rng: np.random.Generator) -> np.ndarray:
    """A video-shaped crop of one picture, scaled to `long_side` (bilinear: no blocky upscale to confuse with a mosaic)."""
    picture = pictures[int(rng.integers(len(pictures)))]
    H, W = picture.shape[:2]
    aspect = rng.uniform(*recipe.aspect)
    w = int(min(W, H * aspect) * rng.uniform(0.6, 1.0))
    h = max(16, min(H, int(w / aspect)))
    top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    crop = picture[top:top + h, left:left + w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    scale = recipe.long_side / max(h, w)
    size = (max(16, round(w * scale)), max(16, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(crop), size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _composite_face(canvas: np.ndarray, portrait: dict, recipe: BaseRecipe, rng: np.random.Generator,
                    taken: list[list[int]]) -> list[int] | None:
    """Paste the face (with some context, elliptic soft alpha) of `portrait` somewhere free; its face box [x, y, w, h]."""
    from PIL import Image

    from assets.mosaic_coco import overlaps

    image = np.asarray(Image.open(portrait["path"]).convert("RGB"))
    x0, y0, x1, y1 = portrait["face_box"]
    fw, fh = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    px0, py0 = int(max(0, cx - 0.8 * fw)), int(max(0, cy - 0.9 * fh))
    px1, py1 = int(min(image.shape[1], cx + 0.8 * fw)), int(min(image.shape[0], cy + 0.9 * fh))
    patch = image[py0:py1, px0:px1]
    H, W = canvas.shape[:2]
    scale = rng.uniform(*recipe.face_width) * W / fw
    size = (max(8, round(patch.shape[1] * scale)), max(8, round(patch.shape[0] * scale)))
    if size[0] >= W - 2 or size[1] >= H - 2:
        return None
    patch = cv2.resize(patch, size, interpolation=cv2.INTER_LINEAR)
    alpha = np.zeros(size[::-1], np.float32)
    cv2.ellipse(alpha, (size[0] // 2, size[1] // 2), (size[0] // 2 - 1, size[1] // 2 - 1), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(1.0, size[0] * 0.05))[..., None]
    for _ in range(10):
        x, y = int(rng.integers(0, W - size[0])), int(rng.integers(0, H - size[1]))
        box = [int(x + (x0 - px0) * scale), int(y + (y0 - py0) * scale), int(fw * scale), int(fh * scale)]
        if any(overlaps(box, b) for b in taken):
            continue
        region = canvas[y:y + size[1], x:x + size[0]].astype(np.float32)
        canvas[y:y + size[1], x:x + size[0]] = (alpha * patch + (1 - alpha) * region).round().astype(np.uint8)
        return box
    return None


def _mosaic_face(canvas: np.ndarray, box: list[int], recipe: BaseRecipe, rng: np.random.Generator) -> tuple[np.ndarray, list[int] | None]:
    from assets.mosaic import apply_mosaic, block_size_v1, sample_spec
    from assets.mosaic_coco import mask_box

    x, y, w, h = box
    mask = np.zeros(canvas.shape[:2], np.uint8)
    grow = 1 + 2 * recipe.face_margin
    cv2.ellipse(mask, (x + w // 2, y + h // 2), (int(w * grow / 2), int(h * grow / 2)), 0, 0, 360, 255, -1)
    spec = sample_spec(rng, block_size_v1(float((mask > 0).sum()), canvas.shape[:2]), recipe.mosaic)
    out, lq_mask = apply_mosaic(canvas, mask, spec)
    return out, mask_box(lq_mask)


def synthetic_image(pictures: list[np.ndarray], portraits: list[dict], recipe: BaseRecipe,
                    rng: np.random.Generator) -> tuple[np.ndarray, list[list[int]]]:
    """(RGB image, mosaic boxes [x, y, w, h]) of one training or held-out image."""
    from assets.mosaic_coco import pasted_mosaics

    canvas = _canvas(pictures, recipe, rng)
    faces: list[list[int]] = []
    for _ in range(int(rng.integers(recipe.faces[0], recipe.faces[1] + 1))):
        box = _composite_face(canvas, portraits[int(rng.integers(len(portraits)))], recipe, rng, faces)
        if box is not None:
            faces.append(box)
    if rng.random() < recipe.clean_rate:
        return canvas, []
    boxes = []
    for box in faces:
        if rng.random() < recipe.face_mosaic_rate:
            canvas, mosaic_box = _mosaic_face(canvas, box, recipe, rng)
            if mosaic_box is not None:
                boxes.append(mosaic_box)
    # Pasted mosaics keep off every face, pixelated or clean: a clean face under a box would be a wrong label.
    out, boxes_all = pasted_mosaics(canvas, rng, recipe.mosaic, recipe.paste, taken=boxes + faces)
    pasted = boxes_all[len(boxes) + len(faces):]
    if not boxes and not pasted:  # nothing drawn: one mosaic at least, so the image is not an unlabelled clean one
        out, boxes_all = pasted_mosaics(canvas, rng, recipe.mosaic, PasteLook(pasted_per_frame=(1, 1)), taken=faces)
        pasted = boxes_all[len(faces):]
    return out, boxes + pasted


def load_inputs(people_index: Path, recipe: BaseRecipe) -> tuple[list[np.ndarray], list[dict], list[dict], str]:
    """(pictures, train portraits, held-out portraits, their hash)."""
    from assets.skimage_pictures import generic_images
    from assets.synthetic_faces import load_people

    portraits = [image for person in load_people(people_index) for image in person["images"]]
    pictures = generic_images()
    digest = hashlib.sha256()
    for picture in pictures:
        digest.update(np.ascontiguousarray(picture).tobytes())
    for portrait in portraits:
        digest.update(Path(portrait["path"]).read_bytes() + json.dumps(portrait["face_box"]).encode())
    held = recipe.held_out_portraits
    return pictures, portraits[:-held], portraits[-held:], digest.hexdigest()[:16]


def build_base_coco(people_index: Path, out: Path, recipe: BaseRecipe) -> str:
    """train.json, val.json and images/ under `out`; the hash of the inputs."""
    from assets.atomic import write_json
    from assets.mosaic_coco import MosaicImage, coco_document, save_jpeg

    pictures, train_portraits, held_portraits, data_hash = load_inputs(people_index, recipe)
    for split, count, portraits in (("train", recipe.train_images, train_portraits),
                                    ("val", recipe.val_images, held_portraits)):
        images = []
        for k in range(count):
            rng = np.random.default_rng([recipe.seed, split == "val", k])
            image, boxes = synthetic_image(pictures, portraits, recipe, rng)
            name = f"images/{split}/{k:05d}.jpg"
            save_jpeg(image, out / name, int(rng.integers(recipe.jpeg_quality[0], recipe.jpeg_quality[1] + 1)))
            images.append(MosaicImage(name, image.shape[1], image.shape[0], f"synthetic-{split}", k,
                                      "pasted" if boxes else "clean", boxes))
        write_json(out / f"{split}.json", coco_document(images))
    return data_hash


def _sheet(root: Path, dest: Path, count: int = 8) -> None:
    from PIL import Image, ImageDraw

    from assets import contact_sheet

    doc = json.loads((root / "train.json").read_text())
    boxes: dict[int, list] = {}
    for a in doc["annotations"]:
        boxes.setdefault(a["image_id"], []).append(a["bbox"])
    row = []
    for im in doc["images"][:count]:
        picture = Image.open(root / im["file_name"]).convert("RGB")
        draw = ImageDraw.Draw(picture)
        for x, y, w, h in boxes.get(im["id"], []):
            draw.rectangle([x, y, x + w, y + h], outline=(255, 220, 0), width=2)
        row.append(np.asarray(picture))
    half = len(row) // 2
    contact_sheet.save_png(contact_sheet.grid({"train": row[:half], "train ": row[half:]},
                                              "mosaic detector base: synthetic mosaics (boxes in yellow)"), dest)


def pretrain_base(people_index: Path, init: Path, out: Path, recipe: BaseRecipe = BaseRecipe(),
                  work_root: Path = Path(".cache"), progress: bool = True) -> dict:
    """Build the data, fine-tune `init` (resuming from `work_root/mosaic-detector-base/<key>`), score it and the
    grid heuristic on the held-out images, write `out/detector.pth`, `out/base.json`, `out/sample.png` atomically."""
    from assets.atomic import atomic_dir, write_json
    from assets.mosaic_coco import CATEGORY_IDS
    from assets.weights import sha256_file
    from evaluation.detection_map import evaluate
    from evaluation.mosaic_detection_eval import region_detections
    from inference.mosaic_detect import GridMosaicDetector
    from training.detector import evaluate_coco, load_detector, save_detector
    from training.detector_loop import DetectorTrainSettings, train_detector

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data_dir = Path(work_root) / "mosaic-detector-base" / "coco"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    data_hash = build_base_coco(people_index, data_dir, recipe)
    run_key = hashlib.sha256(json.dumps([asdict(recipe), data_hash, _code_hash(), sha256_file(init)]).encode()).hexdigest()[:16]
    settings = DetectorTrainSettings(
        train_json=data_dir / "train.json", train_images=data_dir, work_dir=Path(work_root) / "mosaic-detector-base" / run_key,
        fingerprint=run_key, val_json=data_dir / "val.json", val_images=data_dir, arch=recipe.arch,
        num_classes=max(CATEGORY_IDS.values()) + 1, categories=dict(CATEGORY_IDS), fpn_channels=recipe.fpn_channels,
        init_from=Path(init), min_size=recipe.min_size, max_size=recipe.max_size, batch_size=recipe.batch_size,
        lr=recipe.lr, max_iters=recipe.iters, log_interval=20, checkpoint_interval=40, seed=recipe.seed,
        device="cpu", amp=False, progress=progress)
    result = train_detector(settings)
    model, meta = load_detector(result.checkpoint)
    gt = json.loads((data_dir / "val.json").read_text())
    scores = evaluate(gt, evaluate_coco(model, data_dir / "val.json", data_dir, score_threshold=0.0)).metrics
    grid = evaluate(gt, region_detections(GridMosaicDetector(), gt, data_dir)).metrics
    about = (f"mosaic detector base fine-tuned at set-up ({recipe.iters} iterations) from {init} on synthetic "
             "mosaics over scikit-image pictures and set-up portraits, none of the lineage's media")
    with atomic_dir(out) as tmp:
        save_detector(model, tmp / BASE_FILE, meta={**meta, "about": about, "fingerprint": run_key})
        _sheet(data_dir, tmp / "sample.png")
        marker = {
            "about": about, "recipe": asdict(recipe), "code_sha256": _code_hash(), "data_sha256": data_hash,
            "init": str(init), "init_sha256": sha256_file(init),
            "people_index": str(people_index), "people_index_sha256": sha256_file(people_index),
            "file": BASE_FILE, "file_sha256": sha256_file(tmp / BASE_FILE), "seconds": round(result.seconds, 1),
            "held_out": {k: round(float(v), 4) for k, v in scores.items() if k in ("AP", "AP50", "AP75")},
            "held_out_grid": {k: round(float(v), 4) for k, v in grid.items() if k in ("AP", "AP50", "AP75")},
        }
        write_json(tmp / MARKER, marker)
    return marker


def main(argv: list[str] | None = None) -> int:
    """Set-up step (`make setup`): pretrain the embedded default's base mosaic detector unless `out` already holds
    one of this recipe, code and starting file."""
    import argparse

    from assets.weights import sha256_file

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--people", type=Path, required=True, help="data/media/pretrain_people/people.json")
    parser.add_argument("--init", type=Path, required=True, help="the face/plate base: data/models/detector-base/detector.pth")
    parser.add_argument("--work", type=Path, default=Path(".cache"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    recipe = BaseRecipe()
    for path, what in ((args.people, "the synthetic people come first (python -m assets.samples)"),
                       (args.init, "the face/plate base comes first (python -m training.detector_base)")):
        if not path.is_file():
            raise SystemExit(f"{path}: missing; {what}")
    marker = args.out / MARKER
    if not args.force and marker.is_file() and (args.out / BASE_FILE).is_file():
        done = json.loads(marker.read_text())
        if (done.get("recipe") == json.loads(json.dumps(asdict(recipe))) and done.get("code_sha256") == _code_hash()
                and done.get("init_sha256") == sha256_file(args.init)):
            print(f"{args.out}: mosaic detector base already pretrained (held out AP50 {done['held_out'].get('AP50')}, "
                  f"grid {done['held_out_grid'].get('AP50')})")
            return 0
    import torch

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    done = pretrain_base(args.people, args.init, args.out, recipe, args.work)
    print(json.dumps({"out": str(args.out), "held_out": done["held_out"], "held_out_grid": done["held_out_grid"],
                      "seconds": done["seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
