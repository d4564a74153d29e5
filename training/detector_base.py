"""The embedded default's base detector: a face/plate detector pretrained at set-up on data the lineage never shows.

The full recipe starts `detector_checkpoint` from torchvision's ImageNet backbone (`detector.pretrained_backbone`);
no such file can be had offline, and training FCOS from random weights inside the demo costs most of its time
budget. So `make setup` does once what a pretrained checkpoint does for a real user: it trains the embedded
detector's architecture on composites made only of things the lineage never uses -- the 64 single portraits of
`data/media/pretrain_people` (other synthetic people than the lineage's 24) and rendered plates, on crops of
scikit-image's bundled pictures (not the sample clips) -- and the lineage fine-tunes it on unified_coco
(`detector.init_from`). The file is a `save_detector` file; `base.json` beside it records the recipe, the
data's hash, the code's hash, the file's sha256 and its AP on its own held-out people.

    python -m training.detector_base --out data/models/detector-base --people data/media/pretrain_people/people.json
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

BASE_FILE = "detector.pth"
MARKER = "base.json"


@dataclass(frozen=True)
class BaseRecipe:
    # The detector's structure: the embedded profile's `detector` section must match it (init_from checks).
    arch: str = "fcos_resnet18_fpn"
    fpn_channels: int = 128
    min_size: int = 256
    max_size: int = 384
    batch_size: int = 4
    lr: float = 0.01
    iters: int = 300
    # The data: composites on crops of scikit-image's pictures.
    backgrounds: int = 60
    image_side: int = 320
    face_images: int = 300
    plate_images: int = 200
    val_fraction: float = 0.15
    seed: int = 4242


@dataclass(frozen=True)
class _Composite:  # the fields assets.synthetic_faces / synthetic_plates read from their params sections
    count: int
    image_side: int
    per_image: tuple[int, int] = (1, 3)
    width_ratio: tuple[float, float] = (0.1, 0.3)
    aspect: tuple[float, float] = (2.0, 4.7)
    font_ratio: tuple[float, float] = (0.55, 0.8)


def _code_hash() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    # This recipe and the architecture; not every helper it calls (an edit there would re-run a 6-minute set-up).
    for name in ("detector_base.py", "detector.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def write_backgrounds(out: Path, recipe: BaseRecipe) -> list[Path]:
    """`recipe.backgrounds` random crops (50-100 % of the short side, flipped at random) of scikit-image's
    bundled pictures as PNGs; none holds a face or a plate (astronaut, the one with a face, is not among them)."""
    from PIL import Image

    from assets.skimage_pictures import generic_images

    rng = np.random.default_rng([recipe.seed, 0xBA5E])
    pictures = generic_images()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(recipe.backgrounds):
        picture = pictures[index % len(pictures)]
        H, W = picture.shape[:2]
        h = int(rng.uniform(0.5, 1.0) * H)
        w = min(W, int(h * rng.uniform(1.2, 1.8)))
        top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        crop = picture[top:top + h, left:left + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        path = out / f"background_{index:03d}.png"
        Image.fromarray(np.ascontiguousarray(crop)).save(path)
        paths.append(path)
    return paths


def build_base_coco(people_index: Path, out: Path, recipe: BaseRecipe) -> dict:
    """The base's COCO set under `out` (train.json, val.json, images/): faces split by person; its counts."""
    from assets.synthetic_faces import render_synthetic_faces
    from assets.synthetic_plates import render_synthetic_plates
    from assets.unified_coco import assemble

    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        work = Path(work)
        backgrounds = write_backgrounds(work / "backgrounds", recipe)
        conv = render_synthetic_faces(people_index, backgrounds, work / "faces",
                                      _Composite(recipe.face_images, recipe.image_side), recipe.seed, recipe.val_fraction)
        plates = render_synthetic_plates(backgrounds, work / "plates",
                                         _Composite(recipe.plate_images, recipe.image_side, width_ratio=(0.08, 0.3)),
                                         recipe.seed + 1)
        for record in plates.images:  # one group per background, so held-out plates sit on unseen crops
            record.group = "base-plates:" + Path(record.origin).stem
        conv.extend(plates)
        return assemble(conv, out, recipe.val_fraction).counts


def pretrain_base(people_index: Path, out: Path, recipe: BaseRecipe = BaseRecipe(), work_root: Path = Path(".cache"),
                  progress: bool = True) -> dict:
    """Build the data, train (resuming from `work_root/detector-base/<fingerprint>` if interrupted), evaluate on
    the held-out people, and write `out/detector.pth` and `out/base.json` atomically; returns the marker."""
    from assets.atomic import atomic_dir, write_json
    from assets.weights import sha256_file
    from evaluation.detection_map import evaluate
    from training.detector import evaluate_coco, load_detector, save_detector
    from training.detector_loop import DetectorTrainSettings, train_detector

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data_dir = Path(work_root) / "detector-base" / "coco"
    if data_dir.exists():
        import shutil

        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    counts = build_base_coco(people_index, data_dir, recipe)
    data_hash = hashlib.sha256((data_dir / "train.json").read_bytes() + (data_dir / "val.json").read_bytes()).hexdigest()[:16]
    run_key = hashlib.sha256(json.dumps([asdict(recipe), data_hash, _code_hash()]).encode()).hexdigest()[:16]
    settings = DetectorTrainSettings(
        train_json=data_dir / "train.json", train_images=data_dir, work_dir=Path(work_root) / "detector-base" / run_key,
        fingerprint=run_key, val_json=data_dir / "val.json", val_images=data_dir, arch=recipe.arch,
        fpn_channels=recipe.fpn_channels, min_size=recipe.min_size, max_size=recipe.max_size,
        batch_size=recipe.batch_size, lr=recipe.lr, max_iters=recipe.iters, log_interval=25,
        checkpoint_interval=50, seed=recipe.seed, device="cpu", amp=False, progress=progress)
    result = train_detector(settings)
    model, meta = load_detector(result.checkpoint)
    detections = evaluate_coco(model, data_dir / "val.json", data_dir, score_threshold=0.0)
    scores = evaluate(json.loads((data_dir / "val.json").read_text()), detections).metrics
    about = (f"base pretrained at set-up ({recipe.iters} iterations) on synthetic portraits and plates over "
             "scikit-image pictures, none of the lineage's media")
    with atomic_dir(out) as tmp:
        save_detector(model, tmp / BASE_FILE, meta={**meta, "about": about, "fingerprint": run_key})
        marker = {
            "about": about, "recipe": asdict(recipe), "code_sha256": _code_hash(), "data_sha256": data_hash,
            "data": {k: v for k, v in counts.items() if isinstance(v, (int, float))},
            "people_index": str(people_index), "people_index_sha256": sha256_file(people_index),
            "file": BASE_FILE, "file_sha256": sha256_file(tmp / BASE_FILE), "seconds": round(result.seconds, 1),
            "held_out": {k: round(float(v), 4) for k, v in scores.items()
                         if k.startswith("AP") and isinstance(v, (int, float))},
        }
        write_json(tmp / MARKER, marker)
    return marker


def main(argv: list[str] | None = None) -> int:
    """Set-up step (`make setup`): pretrain the embedded default's base detector unless `out` already holds one
    of this recipe and code."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--people", type=Path, required=True, help="data/media/pretrain_people/people.json")
    parser.add_argument("--work", type=Path, default=Path(".cache"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    recipe = BaseRecipe()
    marker = args.out / MARKER
    if not args.force and marker.is_file() and (args.out / BASE_FILE).is_file():
        done = json.loads(marker.read_text())
        if done.get("recipe") == asdict(recipe) and done.get("code_sha256") == _code_hash():
            print(f"{args.out}: base detector already pretrained (AP50 {done['held_out'].get('AP50')})")
            return 0
    if not args.people.is_file():
        raise SystemExit(f"{args.people}: missing; the synthetic people come first (python -m assets.samples)")
    import torch

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    done = pretrain_base(args.people, args.out, recipe, args.work)
    print(json.dumps({"out": str(args.out), "held_out": done["held_out"], "seconds": done["seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
