"""Training samples from a Lada v2 restoration dataset: random `num_frame` windows of pre-generated LQ/GT
pairs (the recipe's `degrade=False, random_mosaic_params=False`), scaled and padded to the model's input.

Sampling draws from one `torch.Generator` whose state goes into every checkpoint, so a resumed run draws
exactly the windows an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from assets.lada_meta import RestorationDataset, SceneItem
from training.geometry import fit_frames, to_tensor


class DatasetTooShortError(ValueError):
    pass


@dataclass
class Batch:
    lq: torch.Tensor  # (n, t, 3, s, s) BGR float [0, 1]
    gt: torch.Tensor
    names: list[str]
    mask: torch.Tensor | None = None  # (n, t, 1, s, s) float {0, 1}: the region, when the loss weights it


class _SceneCache:
    """Decoded (padded) LQ/GT scenes, least recently used first out, bounded in megabytes."""

    def __init__(self, budget_mb: int, masks: bool = False):
        self.budget = budget_mb * 1024 * 1024
        self.masks = masks
        self.used = 0
        self.items: OrderedDict[str, tuple[np.ndarray, ...]] = OrderedDict()

    def get(self, item: SceneItem) -> tuple[np.ndarray, ...]:
        key = str(item.meta_path)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        pair = (np.stack(RestorationDataset.read(item, "lq")), np.stack(RestorationDataset.read(item, "gt")))
        if pair[0].shape != pair[1].shape:
            raise ValueError(f"{item.meta_path}: LQ {pair[0].shape} and GT {pair[1].shape} videos differ in shape")
        if self.masks:
            mask = np.stack(RestorationDataset.read(item, "mask"))
            if mask.shape[:3] != pair[0].shape[:3]:
                raise ValueError(f"{item.meta_path}: mask video {mask.shape[:3]} and LQ {pair[0].shape[:3]} differ")
            pair = (*pair, mask)
        size = sum(a.nbytes for a in pair)
        if size <= self.budget:
            while self.used + size > self.budget and self.items:
                _, old = self.items.popitem(last=False)
                self.used -= sum(a.nbytes for a in old)
            self.items[key] = pair
            self.used += size
        return pair


class PairSampler:
    """Random windows of `num_frame` frames from the scenes that are long enough, with horizontal flips."""

    def __init__(self, root: str | Path, split: str, num_frame: int, size: int, seed: int, cache_mb: int = 2048,
                 flip: bool = True, masks: bool = False):
        dataset = RestorationDataset(root, split)
        self.items = [i for i in dataset if i.lq_path is not None and i.frames_count >= num_frame]
        if not self.items:
            longest = max((i.frames_count for i in dataset), default=0)
            raise DatasetTooShortError(
                f"{Path(root) / split}: no scene has num_frame={num_frame} frames with a pre-generated mosaic "
                f"({len(dataset)} scenes, longest {longest} frames); lower restoration.stage1.num_frame or add longer clips"
            )
        self.skipped = len(dataset) - len(self.items)
        self.num_frame, self.size, self.flip = num_frame, size, flip
        self.generator = torch.Generator().manual_seed(seed)
        self.cache = _SceneCache(cache_mb, masks)
        # Scenes are drawn in proportion to their number of windows, so every window is equally likely.
        self.weights = torch.tensor([i.frames_count - num_frame + 1 for i in self.items], dtype=torch.float64)

    def sample(self, batch_size: int, part: range | None = None) -> Batch:
        """`batch_size` windows; with `part`, the whole batch is drawn (the generator advances alike on every rank)
        and only the windows at those positions are read (a rank's share of a global batch)."""
        lqs, gts, masks, names = [], [], [], []
        for position in range(batch_size):
            k = int(torch.multinomial(self.weights, 1, generator=self.generator))
            item = self.items[k]
            start = int(torch.randint(0, item.frames_count - self.num_frame + 1, (1,), generator=self.generator))
            flip = bool(torch.rand(1, generator=self.generator) < 0.5) and self.flip
            if part is not None and position not in part:
                continue
            scene = self.cache.get(item)
            lq, _ = fit_frames(list(scene[0][start : start + self.num_frame]), self.size)
            gt, _ = fit_frames(list(scene[1][start : start + self.num_frame]), self.size)
            mask = fit_frames(list(scene[2][start : start + self.num_frame]), self.size)[0] if len(scene) > 2 else None
            if flip:
                lq, gt = lq[:, :, ::-1], gt[:, :, ::-1]
                mask = mask[:, :, ::-1] if mask is not None else None
            lqs.append(to_tensor(lq))
            gts.append(to_tensor(gt))
            if mask is not None:
                masks.append(torch.from_numpy(np.ascontiguousarray(mask > 127)).float().unsqueeze(1))
            names.append(f"{item.meta_path.stem}@{start}")
        return Batch(torch.stack(lqs), torch.stack(gts), names, torch.stack(masks) if masks else None)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def fixed_pair(root: str | Path, split: str, num_frame: int, size: int) -> Batch | None:
    """The first window of the first usable scene: the same frames for every sample grid of a run."""
    try:
        dataset = RestorationDataset(root, split)
    except Exception:
        return None
    for item in dataset:
        if item.lq_path is None or item.frames_count < 2:
            continue
        n = min(num_frame, item.frames_count)
        lq, _ = fit_frames(RestorationDataset.read(item, "lq", 0, n), size)
        gt, _ = fit_frames(RestorationDataset.read(item, "gt", 0, n), size)
        return Batch(to_tensor(lq).unsqueeze(0), to_tensor(gt).unsqueeze(0), [item.meta_path.stem])
    return None
