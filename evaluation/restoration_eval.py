"""Restoration quality on a Lada dataset split: the model's output vs the mosaic input, both against the
eggplant GT, full-frame and inside the region masks (PSNR/SSIM from `restoration_metrics`).

Each scene is restored as the model was trained: the padded scene frames, scaled/padded to the model's
square. Metrics are then taken on every frame's own crop (the per-frame pad cut away), so the zero pad
Lada stores around small crops cannot flatter either side.

Stability: a scene's frames are crops centred on the smoothed track at the frame's own scale, so two
consecutive padded frames are aligned to the track. Inside the region on both frames, the mean absolute
change from one frame to the next of the output, of the GT and of the mosaic input (0-255), pooled over
every pair; `temporal_ratio` = output's / GT's (about 1 = as steady as the composited eggplant, well above 1
= it flickers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from assets import contact_sheet
from assets.lada_meta import RestorationDataset
from assets.synthetic_scenes import is_synthetic
from assets.tracks import unpad
from evaluation.eggplant_visibility import Visibility
from evaluation.restoration_metrics import _Accumulator, _frame_stats


@dataclass
class TemporalChange:
    """Pooled frame-to-frame change inside the regions: sums of absolute differences per stream and the pixel
    count. `temporal_ratio` = output's change / the `reference` stream's (the GT in the dataset; the original
    video in a whole-video restore, which has no GT)."""

    reference: str = "gt"
    sums: dict[str, float] = field(default_factory=dict)
    pixels: int = 0

    def add_pair(self, now: dict[str, np.ndarray], before: dict[str, np.ndarray], both: np.ndarray) -> None:
        """`both`: bool (H, W), the region on both frames."""
        n = int(both.sum())
        if not n:
            return
        for name, frame in now.items():
            diff = np.abs(frame.astype(np.int16) - before[name].astype(np.int16))
            self.sums[name] = self.sums.get(name, 0.0) + float(diff[both].sum()) / 3.0  # per pixel, channels averaged
        self.pixels += n

    def add(self, frames: dict[str, list[np.ndarray]], masks: list[np.ndarray]) -> None:
        for k in range(1, len(masks)):
            both = (masks[k] > 127) & (masks[k - 1] > 127)
            if both.ndim == 3:
                both = both[..., 0]
            self.add_pair({n: seq[k] for n, seq in frames.items()}, {n: seq[k - 1] for n, seq in frames.items()}, both)

    def metrics(self) -> dict:
        names = sorted({"input", "output", self.reference} | set(self.sums))
        mean = {name: self.sums[name] / self.pixels if self.pixels and name in self.sums else None for name in names}
        out, ref = mean.get("output"), mean.get(self.reference)
        return {**{f"{name}_temporal_change": value for name, value in mean.items()},
                "temporal_ratio": out / ref if out is not None and ref else None}


@dataclass
class SceneEvaluation:
    metrics: dict  # flat: input_* and output_* psnr/ssim (full frame and region), gains, counts
    rows: list[dict]  # one per scene
    grids: list[tuple[str, dict[str, list[np.ndarray]]]] = field(default_factory=list)


def _summary(prefix: str, acc: _Accumulator) -> dict:
    r = acc.result()
    return {
        f"{prefix}_psnr": r["psnr"], f"{prefix}_ssim": r["ssim"],
        f"{prefix}_psnr_region": r["psnr_region"], f"{prefix}_ssim_region": r["ssim_region"],
        f"{prefix}_psnr_region_pooled": r["psnr_region_pooled"],
    }


def grid_order(items: list, root: str | Path) -> list[int]:
    """Positions of `items` in the order their grids are shown: the kinds in turn (a face, a plate, ...; from the
    dataset's index.json, when it has one), the user's clips before the synthetic scenes within a kind, so that a
    few grids show both kinds of region."""
    index = Path(root) / "index.json"
    kinds = {}
    if index.is_file():
        kinds = {row["name"]: row.get("kind", "") for row in json.loads(index.read_text()).get("scenes", [])}
    by_kind: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        by_kind.setdefault(kinds.get(item.meta_path.stem, ""), []).append(k)
    for positions in by_kind.values():
        positions.sort(key=lambda k: (is_synthetic(items[k].meta["name"]), k))
    order, queues = [], [list(q) for _, q in sorted(by_kind.items())]
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    return order


def evaluate_split(restore, root: str | Path, split: str = "val", max_scenes: int = 50, grid_frames: int = 6,
                   max_grids: int = 4, progress: bool = True) -> SceneEvaluation:
    """`restore(frames) -> frames` is the model (e.g. `Restorer.restore`); frames are RGB uint8."""
    dataset = RestorationDataset(root, split)
    items = [i for i in dataset if i.lq_path is not None][:max_scenes]
    if not items:
        raise ValueError(f"{Path(root) / split}: no scenes with a pre-generated mosaic to evaluate")
    shown = set(grid_order(items, root)[:max_grids])
    acc_in, acc_out = _Accumulator(), _Accumulator()
    temporal = TemporalChange()
    visibility = Visibility()
    rows, grids = [], []
    for position, item in enumerate(tqdm(items, desc=f"evaluate {split}", unit="scene", disable=not progress)):
        lq = RestorationDataset.read(item, "lq")
        gt = RestorationDataset.read(item, "gt")
        masks = RestorationDataset.read(item, "mask")
        out = restore(lq)
        scene_temporal = TemporalChange()
        for meter in (temporal, scene_temporal):
            meter.add({"input": lq, "output": out, "gt": gt}, masks)
        scene_in, scene_out = _Accumulator(), _Accumulator()
        scene_visibility = Visibility()
        for k, pad in enumerate(item.pads):
            g, m = unpad(gt[k], pad), unpad(masks[k], pad)
            for meter in (visibility, scene_visibility):
                meter.add(g, unpad(lq[k], pad), unpad(out[k], pad), m)
            where = f"{item.meta_path.stem} frame {k}: "
            for acc, scene_acc, test in ((acc_in, scene_in, lq[k]), (acc_out, scene_out, out[k])):
                stats = _frame_stats(g, unpad(test, pad), m, where=where)
                acc.add(stats)
                scene_acc.add(stats)
        si, so = scene_in.result(), scene_out.result()
        sv = scene_visibility.metrics()
        rows.append({
            "scene": item.meta_path.stem, "frames": item.frames_count,
            "psnr_region_input": si["psnr_region"], "psnr_region_output": so["psnr_region"],
            "ssim_region_input": si["ssim_region"], "ssim_region_output": so["ssim_region"],
            "psnr_input": si["psnr"], "psnr_output": so["psnr"],
            "temporal_ratio": scene_temporal.metrics()["temporal_ratio"],
            "lowpass_region_gain_db": sv.get("lowpass_region_gain_db"), "purple_iou": sv["purple_iou"],
            "green_iou": sv["green_iou"], "changed_outside_share": sv["changed_outside_share"],
        })
        if position in shown:
            picks = contact_sheet.pick_indices(item.frames_count, grid_frames)
            grids.append((f"{item.meta_path.stem}: mosaic input | restored | eggplant GT", {
                "input": [unpad(lq[i], item.pads[i]) for i in picks],
                "output": [unpad(out[i], item.pads[i]) for i in picks],
                "GT": [unpad(gt[i], item.pads[i]) for i in picks],
            }))
    metrics = {**_summary("input", acc_in), **_summary("output", acc_out), **temporal.metrics(), **visibility.metrics(),
               "scenes": len(items),
               "frames": acc_in.frames}
    if metrics["output_psnr_region"] is not None and metrics["input_psnr_region"] is not None:
        metrics["psnr_region_gain_db"] = metrics["output_psnr_region"] - metrics["input_psnr_region"]
    metrics["psnr_gain_db"] = metrics["output_psnr"] - metrics["input_psnr"]
    return SceneEvaluation(metrics, rows, grids)
