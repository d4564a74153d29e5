"""What a BasicVSR++ of a given width can reach on a restoration dataset, without training one.

Lada's network adds its output to the LQ frame (`conv_last(features) + lq`), and its features live on a grid
4x coarser than the input. To paint a steady eggplant over a mosaic it must therefore cancel the mosaic
itself, down to the pixel, from those coarse features: a 4x4 cell of RGB input is 48 numbers, and a
16-channel model (the embedded default) keeps 16 per cell in each stream. This script scores the split's
regions under two idealised models, through the report's own evaluation code (`evaluate_split`):

- `constant`: the region filled with one colour (the mean eggplant colour of the train split's GT regions),
  i.e. a model that finds the region perfectly and paints a flat eggplant-purple;
- `lowpass/<cell>`: the LQ plus (that colour - the LQ blurred at the scale of a `cell`-px feature cell), i.e.
  a model that finds the region perfectly and cancels everything of the mosaic that a coarse grid can hold,
  but keeps its fine detail (what features too narrow to carry the detail leave in the output).

    python -m evaluation.restoration_ceiling --root data/datasets/restoration --size 128
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from assets.lada_meta import RestorationDataset
from evaluation.restoration_eval import evaluate_split
from training.geometry import fit_frames, unfit_frames


def _mask(item) -> np.ndarray:
    masks = np.stack(RestorationDataset.read(item, "mask"))
    return (masks[..., 0] if masks.ndim == 4 else masks) > 127


def region_colour(root: Path, split: str = "train") -> np.ndarray:
    """Mean RGB of the GT inside the regions of `split`: the colour a flat eggplant would have."""
    sums, count = np.zeros(3), 0
    for item in RestorationDataset(root, split):
        if item.lq_path is None:
            continue
        gt, inside = np.stack(RestorationDataset.read(item, "gt")), _mask(item)
        sums += gt[inside].astype(np.float64).sum(0)
        count += int(inside.sum())
    if not count:
        raise ValueError(f"{Path(root) / split}: no region pixels to take the eggplant colour from")
    return sums / count


def ceilings(root: Path, split: str, size: int, cells: tuple[int, ...] = (4, 2, 1), max_scenes: int = 50) -> dict:
    """{model: {region PSNR of input and output, gain, temporal ratio}} for the idealised models above, run like
    the network at `size` (the model's input side): frames scaled to it, painted, scaled back."""
    colour = region_colour(root).astype(np.float32)
    items = [i for i in RestorationDataset(root, split) if i.lq_path is not None][:max_scenes]

    def model(cell: int | None):
        scenes = iter(items)

        def restore(lq: list[np.ndarray]) -> list[np.ndarray]:
            inside = _mask(next(scenes))  # evaluate_split restores the same scenes in the same order
            frames = np.stack(lq).astype(np.float32)
            if cell is None:
                painted = np.broadcast_to(colour, frames.shape)
            else:  # at the model's input size and back, as `Restorer.restore` runs the network
                squares, fit = fit_frames(lq, size)
                squares = squares.astype(np.float32)
                low = np.stack([cv2.GaussianBlur(f, (0, 0), cell) for f in squares])
                back = np.clip(np.round(squares + (colour - low)), 0, 255).astype(np.uint8)
                painted = np.stack(unfit_frames(back, fit)).astype(np.float32)
            out = np.where(inside[..., None], painted, frames)
            return list(np.clip(np.round(out), 0, 255).astype(np.uint8))

        return restore

    keys = ("input_psnr_region", "output_psnr_region", "psnr_region_gain_db", "temporal_ratio")
    result = {}
    for name, cell in [("constant", None)] + [(f"lowpass/{c}px", c) for c in cells]:
        metrics = evaluate_split(model(cell), root, split, max_scenes, 0, progress=False).metrics
        result[name] = {k: round(float(metrics[k]), 3) for k in keys if metrics.get(k) is not None}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data/datasets/restoration"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--size", type=int, default=128, help="the model's input side (restoration.stage1.lq_size)")
    args = parser.parse_args(argv)
    print(json.dumps(ceilings(args.root, args.split, args.size), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
