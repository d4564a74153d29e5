"""Throughput of the evaluation backends on this CPU, measured in one run:

- FID features: images/s of our pytorch-fid InceptionV3 (converted FID weights), and end to end
  `aubergine`'s FID between two folders vs `python -m pytorch_fid` on the same folders (ratio);
- identity: faces/s of the dlib ResNet backend (detect + 5-point align + descriptor);
- OCR: plates/s of EasyOCR reading the two plates of the alpr photo.

    .venv/bin/python bench/evaluation.py [--images 64] [--repeat 3]

Sample images ship in registry packages (scikit-image, alpr); FID weights come from `make setup`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PLATES = {"NO 23456": (62, 475, 200, 521), "MLB 803": (560, 485, 716, 537)}


def sample_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """n 256x256 crops of scikit-image's sample photos (real images, varied content)."""
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        y = int(rng.integers(0, img.shape[0] - 256))
        x = int(rng.integers(0, img.shape[1] - 256))
        out.append(np.ascontiguousarray(img[y : y + 256, x : x + 256, :3]))
    return out


def write_folder(images: list[np.ndarray], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return folder


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.chdir(ROOT)

    import torch

    from evaluation import fid
    from evaluation.identity import DlibIdentity
    from evaluation.ocr import PlateReader

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} threads {torch.get_num_threads()}")
    images = sample_images(args.images)
    noisy = [np.clip(i.astype(np.float32) + np.random.default_rng(1).normal(0, 20, i.shape), 0, 255).astype(np.uint8)
             for i in images]

    model = fid.load_inception()
    fid.features(images[:8], model, progress=False)  # warm-up
    t = timed(lambda: fid.features(images, model, batch_size=32, progress=False), args.repeat)
    print(f"FID features (pytorch-fid InceptionV3, converted weights): {len(images) / t:7.1f} images/s")

    with tempfile.TemporaryDirectory() as tmp:
        a, b = write_folder(images, Path(tmp) / "a"), write_folder(noisy, Path(tmp) / "b")
        # pytorch-fid's CLI fetches its weights through torch.hub; a hub cache holding our converted weights
        # makes it run offline on the same Inception. Its strict load also wants the 1008-way logits layer,
        # which the TorchScript source does not carry and pool3 features never use: zeros stand in.
        hub = Path(tmp) / "torch/hub/checkpoints"
        hub.mkdir(parents=True)
        state = torch.load(ROOT / fid.FID_WEIGHTS, map_location="cpu", weights_only=True)
        state.setdefault("fc.weight", torch.zeros(1008, 2048))
        state.setdefault("fc.bias", torch.zeros(1008))
        torch.save(state, hub / fid.FID_WEIGHTS.name)
        env = {**os.environ, "TORCH_HOME": str(Path(tmp) / "torch")}
        ours_cmd = [sys.executable, "-c", "import sys; sys.path.insert(0, '.'); from evaluation.fid import fid_between_dirs; "
                    f"print(fid_between_dirs('{a}', '{b}', cache_dir=None, progress=False)['fid'])"]
        theirs_cmd = [sys.executable, "-m", "pytorch_fid", str(a), str(b), "--device", "cpu", "--batch-size", "32"]
        results = {}
        for name, cmd in (("aubergine", ours_cmd), ("pytorch_fid CLI", theirs_cmd)):
            best, value = float("inf"), ""
            for _ in range(args.repeat):
                start = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
                best = min(best, time.perf_counter() - start)
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
                value = proc.stdout.strip().splitlines()[-1]
            results[name] = best
            print(f"FID end to end, {name:16s}: {2 * len(images) / best:7.1f} images/s  ({best:.2f} s, {value})")
        print(f"FID end-to-end throughput, aubergine / python -m pytorch_fid: {results['pytorch_fid CLI'] / results['aubergine']:.2f}x")

    from skimage import data

    faces = [data.astronaut()] * 8
    dlib_id = DlibIdentity()
    dlib_id.embed(faces[0], None)
    t = timed(lambda: [dlib_id.embed(f, None) for f in faces], args.repeat)
    print(f"identity (dlib HOG + 5-point + ResNet):  {len(faces) / t:7.2f} faces/s")

    reader = PlateReader()
    photo = np.asarray(Image.open(ROOT / "data/media/alpr/test.jpg").convert("RGB"))
    reader.read_plate(photo, PLATES["MLB 803"])
    t = timed(lambda: [reader.read_plate(photo, box) for box in PLATES.values()], args.repeat)
    print(f"OCR (EasyOCR English, plate crops):       {len(PLATES) / t:7.2f} plates/s")


if __name__ == "__main__":
    main()
