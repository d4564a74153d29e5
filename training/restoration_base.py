"""The embedded default's restoration base: a stand-in for Lada's pretrained mosaic-restoration weights.

The seed recipe fine-tunes only the reconstruction head (spynet, feat_extract, deform_align and backbone
frozen) on top of Lada's `lada_mosaic_restoration_model_generic_v1.2.pth`: features that already know where a
mosaic is and what was under it. Those weights cannot be had offline, and a frozen random front half gives
the head nothing to build on (the output stayed the blurred mosaic). So `make setup` does once, at the
embedded size, what Lada's training did: a BasicVSR++ learns generic mosaic restoration, mosaic → ORIGINAL
content, with random mosaic parameters, on short synthetic pans over pictures the lineage never shows (the
64 set-up portraits of other people and scikit-image's pictures; no sample clip, so no val frame). Stage 1
then runs the recipe on top of it, freezing included (`restoration.stage1.load_from` in the embedded profile).

Why at set-up and not a lineage stage: it depends on nothing the lineage makes, so re-running it on every
new clip would only spend the demo's budget (like the detector's base); `base.json` beside the file records
the recipe, the data's and the code's hashes, the file's sha256 and its held-out figures, and every
restoration report names it.

    python -m training.restoration_base --out data/models/restoration-base --people data/media/pretrain_people/people.json
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

BASE_FILE = "generator.pth"
MARKER = "base.json"
MODES = ("square_mid", "square_avg", "rect_avg")


@dataclass(frozen=True)
class BaseRecipe:
    # The network: the embedded profile's Stage 1 sizes (load_from builds the model from the file).
    mid_channels: int = 16
    num_blocks: int = 2
    size: int = 128
    num_frame: int = 3  # enough for the second-order propagation; the cost is per frame
    batch_size: int = 2
    lr: float = 5e-4  # 1e-3 oscillated without converging even on one batch; 3e-4 .. 5e-4 learns
    # ~3 s per iteration on 2 cores. 300 iterations (15 min of every fresh set-up) gave a held-out output equal to its
    # input to the last digit: the stand-in's value is the recipe's shape, not its features (README, "The restorer"),
    # so set-up spends ~5 min on it, not 15 (CI's 90 minutes include set-up); base.json records what 100 give.
    iters: int = 100
    # Loss inside the mosaic x this: at 1 the first run of this recipe learnt the identity (its held-out output was
    # the mosaic to the last digit: copying the input is the L1 optimum while the region is a minority of pixels).
    region_loss_weight: float = 20.0
    # The synthetic pans: a window of 35-80 % of a picture's short side, drifting and zooming a little per frame.
    window: tuple[float, float] = (0.35, 0.8)
    pan: float = 0.025  # per frame, share of the window
    zoom: float = 0.01
    # The region: an ellipse or a rectangle near the centre (the dataset's crops centre their region).
    region: tuple[float, float] = (0.3, 0.7)  # share of the side
    block: tuple[float, float] = (3.0, 12.0)  # mosaic block, px at `size`
    held_out_pictures: int = 8  # the last portraits: scored, never trained on
    held_out_samples: int = 16
    seed: int = 5151


def _code_hash() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    # This recipe and the architecture; not the training loop it runs (an edit there would re-run a 9-minute set-up).
    for name in ("restoration_base.py", "basicvsrpp.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def load_pictures(people_index: Path) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(train pictures, held-out pictures, their hash): the set-up portraits (the last `held_out_pictures`
    held out) and scikit-image's generic pictures, RGB uint8."""
    from PIL import Image

    from assets.skimage_pictures import generic_images
    from assets.synthetic_faces import load_people

    portraits = [image["path"] for person in load_people(people_index) for image in person["images"]]
    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in portraits]
    held = BaseRecipe.held_out_pictures
    train = generic_images() + pictures[:-held]
    digest = hashlib.sha256()
    for picture in train + pictures[-held:]:
        digest.update(np.ascontiguousarray(picture).tobytes())
    return train, pictures[-held:], digest.hexdigest()[:16]


def synthetic_pair(picture: np.ndarray, recipe: BaseRecipe, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lq, gt, mask): `num_frame` frames of a pan over `picture`, a random mosaic over a random region in the LQ."""
    from assets.mosaic import MosaicSpec, apply_mosaic

    H, W = picture.shape[:2]
    s = recipe.size
    side = rng.uniform(*recipe.window) * min(H, W)
    cx, cy = rng.uniform(side / 2, W - side / 2), rng.uniform(side / 2, H - side / 2)
    vx, vy = rng.uniform(-1, 1, 2) * recipe.pan * side
    dz = 1 + rng.uniform(-1, 1) * recipe.zoom
    rw, rh = rng.uniform(*recipe.region, 2) * s
    ox, oy = rng.uniform(-0.1, 0.1, 2) * s
    ellipse = rng.random() < 0.6
    mode = MODES[int(rng.integers(len(MODES)))]
    block = int(round(rng.uniform(*recipe.block)))
    spec = MosaicSpec(mode, block, float(rng.uniform(1.1, 1.8)) if mode == "rect_avg" else 1.0,
                      int(round(rng.uniform(0, 1) * block)))
    flip = rng.random() < 0.5
    lqs, gts, masks = [], [], []
    for t in range(recipe.num_frame):
        half = side * dz**t / 2
        x, y = np.clip(cx + vx * t, half, W - half), np.clip(cy + vy * t, half, H - half)
        crop = picture[int(y - half): int(y + half), int(x - half): int(x + half)]
        frame = cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA)
        if flip:
            frame = np.ascontiguousarray(frame[:, ::-1])
        mask = np.zeros((s, s), np.uint8)
        centre = (int(s / 2 + ox), int(s / 2 + oy))
        if ellipse:
            cv2.ellipse(mask, centre, (int(rw / 2), int(rh / 2)), 0, 0, 360, 255, -1)
        else:
            cv2.rectangle(mask, (int(centre[0] - rw / 2), int(centre[1] - rh / 2)),
                          (int(centre[0] + rw / 2), int(centre[1] + rh / 2)), 255, -1)
        lq, _ = apply_mosaic(frame, mask, spec)
        lqs.append(lq), gts.append(frame), masks.append(mask)
    return np.stack(lqs), np.stack(gts), np.stack(masks)


class SyntheticMosaicSampler:
    """Batches of synthetic pairs for `training.loop.train`. Sample k of the run is drawn from an RNG seeded by
    (seed, k), so the state to resume is one counter."""

    def __init__(self, pictures: list[np.ndarray], recipe: BaseRecipe, seed: int):
        self.pictures, self.recipe, self.seed, self.drawn = pictures, recipe, seed, 0

    def sample(self, batch_size: int):
        from training.data import Batch
        from training.geometry import to_tensor

        lqs, gts, masks, names = [], [], [], []
        for _ in range(batch_size):
            rng = np.random.default_rng([self.seed, self.drawn])
            k = int(rng.integers(len(self.pictures)))
            lq, gt, mask = synthetic_pair(self.pictures[k], self.recipe, rng)
            lqs.append(to_tensor(lq)), gts.append(to_tensor(gt)), names.append(f"picture{k}@{self.drawn}")
            masks.append(torch.from_numpy(mask > 127).float().unsqueeze(1))
            self.drawn += 1
        return Batch(torch.stack(lqs), torch.stack(gts), names, torch.stack(masks))

    def state(self) -> torch.Tensor:
        return torch.tensor([self.drawn], dtype=torch.int64)

    def load_state(self, state: torch.Tensor) -> None:
        self.drawn = int(state[0])


def held_out_scores(model, pictures: list[np.ndarray], recipe: BaseRecipe) -> dict:
    """PSNR inside the region of mosaic input and restored output against the original, on held-out portraits."""
    from evaluation.restoration_metrics import psnr_from_mse
    from training.geometry import to_frames, to_tensor

    model.eval()
    before, after = [], []
    with torch.inference_mode():
        for k in range(recipe.held_out_samples):
            rng = np.random.default_rng([recipe.seed, 0x0DD, k])
            lq, gt, mask = synthetic_pair(pictures[k % len(pictures)], recipe, rng)
            out = to_frames(model(to_tensor(lq).unsqueeze(0))[0])
            inside = mask > 0
            ref = gt[inside].astype(np.float64)
            before.append(psnr_from_mse(float(np.mean((lq[inside] - ref) ** 2))))
            after.append(psnr_from_mse(float(np.mean((out[inside] - ref) ** 2))))
    return {"input_psnr_region": round(float(np.mean(before)), 3), "output_psnr_region": round(float(np.mean(after)), 3)}


def pretrain_base(people_index: Path, out: Path, recipe: BaseRecipe = BaseRecipe(), work_root: Path = Path(".cache"),
                  progress: bool = True) -> dict:
    """Train (resuming from `work_root/restoration-base/<key>` when interrupted), score on the held-out portraits,
    and write `out/generator.pth` (Lada's layout) and `out/base.json` atomically; returns the marker."""
    from assets.atomic import atomic_dir, write_json
    from assets.weights import sha256_file
    from training import checkpoints as ckpt
    from training.loop import TrainSettings, train

    train_pictures, held_out, data_hash = load_pictures(people_index)
    run_key = hashlib.sha256(json.dumps([asdict(recipe), data_hash, _code_hash()]).encode()).hexdigest()[:16]
    settings = TrainSettings(
        stage="restoration-base", dataset_root=Path(people_index).parent, work_dir=Path(work_root) / "restoration-base" / run_key,
        fingerprint=run_key, num_frame=recipe.num_frame, batch_size=recipe.batch_size, max_iters=recipe.iters,
        log_interval=25, checkpoint_interval=50, sample_interval=recipe.iters, lr=recipe.lr, lr_mult={},
        region_loss_weight=recipe.region_loss_weight,
        lq_size=recipe.size, mid_channels=recipe.mid_channels, num_blocks=recipe.num_blocks, seed=recipe.seed,
        device="cpu", amp=False, progress=progress)
    sampler = SyntheticMosaicSampler(train_pictures, recipe, recipe.seed)
    fixed = SyntheticMosaicSampler(held_out, recipe, recipe.seed + 1).sample(1)
    result = train(settings, sampler=sampler, sample_batch=fixed, on_sample=lambda path, step: None)
    model, _ = ckpt.load_generator(result.checkpoint, prefer_ema=False)
    scores = held_out_scores(model, held_out, recipe)
    about = (f"restoration base pretrained at set-up ({recipe.iters} iterations, mosaic -> original) on synthetic "
             "pans over set-up portraits and scikit-image pictures, none of the lineage's media")
    with atomic_dir(out) as tmp:
        meta = {**model.config, "input_size": recipe.size, "stage": "restoration-base", "about": about,
                "fingerprint": run_key}
        ckpt.save_atomic({"meta": meta, "state_dict": ckpt.lada_state_dict(model)}, tmp / BASE_FILE)
        samples = sorted(settings.work_dir.glob("sample_*.png"))
        if samples:
            (tmp / "sample.png").write_bytes(samples[-1].read_bytes())
        marker = {
            "about": about, "recipe": asdict(recipe), "code_sha256": _code_hash(), "data_sha256": data_hash,
            "people_index": str(people_index), "people_index_sha256": sha256_file(people_index),
            "file": BASE_FILE, "file_sha256": sha256_file(tmp / BASE_FILE), "seconds": round(result.seconds, 1),
            "held_out": scores,
        }
        write_json(tmp / MARKER, marker)
    return marker


def main(argv: list[str] | None = None) -> int:
    """Set-up step (`make setup`): pretrain the embedded default's restoration base unless `out` already holds
    one of this recipe and code."""
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
        if done.get("recipe") == json.loads(json.dumps(asdict(recipe))) and done.get("code_sha256") == _code_hash():
            print(f"{args.out}: restoration base already pretrained (held out: {done['held_out']})")
            return 0
    if not args.people.is_file():
        raise SystemExit(f"{args.people}: missing; the synthetic people come first (python -m assets.samples)")
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    done = pretrain_base(args.people, args.out, recipe, args.work)
    print(json.dumps({"out": str(args.out), "held_out": done["held_out"], "seconds": done["seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
