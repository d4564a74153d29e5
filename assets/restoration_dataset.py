"""`restoration_dataset`: GT crops, LQ crops and masks arranged in Lada's version-2 layout, split into
`train/` and `val/` by source clip, with one meta JSON per scene."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

from assets.atomic import write_text
from assets.lada_meta import (
    GT_DIR, LQ_DIR, LQ_MASK_DIR, MASK_DIR, META_DIR, SPLITS, dump_record, meta_record, scene_name,
)
from assets.region_tracks import load_clip_tracks
from assets.video import probe_video


def split_clips(clip_ids: list[str], val_fraction: float, groups: dict[str, str] | None = None) -> dict[str, str]:
    """Deterministic split by content group (`assets.content_groups`; without `groups`, each clip its own): a
    group's side depends only on its name (a hash against the fraction), so adding clips never moves old ones,
    and every clip of a group lands on its side. With two or more groups, at least one is val and one train."""
    group_of = {c: (groups or {}).get(c, c) for c in clip_ids}
    names = sorted(set(group_of.values()))
    ranks = {g: int.from_bytes(hashlib.sha256(g.encode()).digest()[:8], "big") / 2**64 for g in names}
    side = {g: ("val" if ranks[g] < val_fraction else "train") for g in names}
    if len(names) >= 2 and val_fraction > 0:
        ordered = sorted(names, key=ranks.get)
        if "val" not in side.values():
            side[ordered[0]] = "val"
        if "train" not in side.values():
            side[ordered[-1]] = "train"
    return {c: side[group_of[c]] for c in clip_ids}


def make_layout(out_root: Path) -> None:
    for split in SPLITS:
        for sub in (META_DIR, GT_DIR, MASK_DIR, LQ_DIR, LQ_MASK_DIR):
            (out_root / split / sub).mkdir(parents=True, exist_ok=True)


def clip_files(result: dict) -> list[str]:
    """The files `assemble_clip` wrote (its result), relative to the dataset root."""
    out = []
    for row in result["scenes"]:
        base = f"{row['split']}/{{}}/{row['name']}"
        out += [base.format(META_DIR) + ".json", base.format(GT_DIR) + ".mp4", base.format(MASK_DIR) + ".mkv",
                base.format(LQ_DIR) + ".mp4", base.format(LQ_MASK_DIR) + ".mkv"]
    return out


def invisible_mosaic(params: dict, min_change: float) -> str | None:
    """Why a scene is no training target, or None: its mosaic changes the region by less than `min_change` (mean
    |LQ - original| per pixel and channel, 0-255, recorded by `mosaic_lq`), so the LQ does not show where the
    eggplant goes. A record without the figure (an older `mosaic_lq`) is kept."""
    change = params.get("visible_change")
    if change is None or change >= min_change:
        return None
    return f"mosaic nearly invisible: mean |LQ - original| {change:.2f} < dataset.min_mosaic_change {min_change:g}"


def assemble_clip(clip_id: str, split: str, group: str, tracks_dir: Path, gt_dir: Path, lq_dir: Path, out_root: Path,
                  min_change: float = 0.0) -> dict:
    """One clip's scenes into the layout under `out_root/split` (made by `make_layout`): {"scenes": one index row per
    scene written, "dropped": one row per scene left out (`invisible_mosaic`), with its reason}."""
    record = load_clip_tracks(tracks_dir, clip_id)
    mosaic_params = json.loads((lq_dir / clip_id / "mosaic_params.json").read_text())
    root = out_root / split
    rows, dropped = [], []
    for scene in record["scenes"]:
        stem = scene_name(clip_id, scene.id)
        reason = invisible_mosaic(mosaic_params[stem], min_change)
        if reason is not None:
            dropped.append({"split": split, "name": stem, "clip_id": clip_id, "kind": scene.kind, "frames_count": scene.frames,
                            "visible_change": mosaic_params[stem]["visible_change"], "reason": reason})
            continue
        sources = {
            GT_DIR: gt_dir / clip_id / f"{stem}.mp4",
            MASK_DIR: tracks_dir / "masks" / clip_id / f"{stem}.mkv",
            LQ_DIR: lq_dir / clip_id / f"{stem}.mp4",
            LQ_MASK_DIR: lq_dir / clip_id / f"{stem}-mask.mkv",
        }
        counts = {}
        for sub, src in sources.items():
            shutil.copyfile(src, root / sub / f"{stem}{src.suffix}")
            counts[sub] = probe_video(src).frames
        params = mosaic_params[stem]
        meta = meta_record(
            name=clip_id, fps=record["fps"], frames_count=scene.frames,
            orig_shape=(record["height"], record["width"]), scene_shape=scene.scene_shape,
            block_sizes=params["base_mosaic_block_size"], pads=scene.pads, file_stem=stem, mosaic=params["mosaic"],
        )
        write_text(root / META_DIR / f"{stem}.json", dump_record(meta))
        rows.append({
            "split": split, "name": stem, "clip_id": clip_id, "content_group": group,
            "kind": scene.kind,
            "frames_count": scene.frames, "gt_frames": counts[GT_DIR], "mask_frames": counts[MASK_DIR],
            "lq_frames": counts[LQ_DIR], "lq_mask_frames": counts[LQ_MASK_DIR],
            "scene_h": scene.scene_shape[0], "scene_w": scene.scene_shape[1],
            "mosaic_mode": params["mosaic"]["mod"], "mosaic_size": params["mosaic"]["mosaic_size"],
            "visible_change": params.get("visible_change"),
        })
    return {"scenes": rows, "dropped": dropped}


def assemble(
    clip_ids: list[str], tracks_dir: Path, gt_dir: Path, lq_dir: Path, out_root: Path, val_fraction: float,
    groups: dict[str, str] | None = None, min_change: float = 0.0,
) -> list[dict]:
    """Write the layout under `out_root` (expected empty) and return one index row per scene; `groups` (clip id ->
    content group, `assets.content_groups.clip_groups`) keeps copies of a clip on its side."""
    make_layout(out_root)
    splits = split_clips(clip_ids, val_fraction, groups)
    rows = []
    for clip_id in clip_ids:
        rows += assemble_clip(clip_id, splits[clip_id], (groups or {}).get(clip_id, clip_id), tracks_dir, gt_dir, lq_dir,
                              out_root, min_change)["scenes"]
    return rows


def summarize(rows: list[dict], dropped: list[dict] = ()) -> dict:
    out = {"scenes": len(rows), "frames": sum(r["frames_count"] for r in rows), "dropped_scenes": len(dropped)}
    for split in SPLITS:
        picked = [r for r in rows if r["split"] == split]
        out[f"{split}_scenes"] = len(picked)
        out[f"{split}_frames"] = sum(r["frames_count"] for r in picked)
        out[f"{split}_clips"] = len({r["clip_id"] for r in picked})
        for kind in ("face", "plate"):
            out[f"{split}_{kind}_scenes"] = sum(r.get("kind") == kind for r in picked)
        out[f"{split}_dropped_scenes"] = sum(r["split"] == split for r in dropped)
    out["mean_scene_frames"] = math.floor(out["frames"] / max(1, len(rows)))
    return out
