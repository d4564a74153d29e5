"""The data lineage's stage bodies: paths in, files out, a StageOutput back.

Each body builds its whole output folder under a temporary name and swaps it in at the end
(`atomic_dir`), so a killed materialization leaves the previous, complete output in place and no later
stage ever reads a half-written file. Per-clip work goes through `map_clips_cached`: a failing clip is
recorded in the stage's `index.json` and the others go on, and a clip whose inputs, knobs and code are those
of an earlier run (of either engine) is taken from the per-clip store (`assets.clip_cache`) instead of being
recomputed, so a run over a growing library costs the new clips, not the library.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from assets import contact_sheet
from assets.atomic import atomic_dir, write_json
from assets.batch import CachedJob, map_clips_cached
from assets.clip_cache import ClipCache, file_digest, prune
from assets.content_groups import clip_groups, grouped
from assets.detect import sidecar_path
from assets.eggplant_gt import composite_clip
from assets.lada_meta import RestorationDataset
from assets.mosaic_lq import mosaic_clip
from assets.raw_clips import build_manifest, ok_clips, probe_clip
from assets.region_tracks import load_clip_tracks, track_clip
from assets.restoration_dataset import assemble_clip, clip_files, make_layout, split_clips, summarize
from assets.video import EncoderSettings
from orchestration.config import Params
from orchestration.stage_io import (
    DATASET_METRICS, DATASET_REPORT, EGGPLANT_GT, MOSAIC_LQ, RAW_CLIPS, REGION_TRACKS, RESTORATION_DATASET, SYNTHETIC_SCENES,
    StageInputError, StageOutput, batch_failures, clip_index, hash_files, read_json, stage_cache,
)

def encoder(params: Params) -> EncoderSettings:
    d = params.dataset
    return EncoderSettings(codec=d.codec, crf=d.crf, preset=d.preset, threads=d.encoder_threads)


def _synthetic_manifest() -> dict:
    """The synthetic scenes' manifest; none made (the stage not materialized here) = no synthetic clips, as with
    `synthetic_scenes.count: 0`: the region work then runs on the user's clips alone."""
    path = SYNTHETIC_SCENES / "manifest.json"
    return read_json(path, "synthetic_scenes") if path.is_file() else {"clips": []}


def source_clips() -> list[dict]:
    """The clips the region work runs on: the user's usable raw clips, then the synthetic scenes (same row fields)."""
    return ok_clips(read_json(RAW_CLIPS / "manifest.json", "raw_clips")) + ok_clips(_synthetic_manifest())


def pinned_splits() -> dict[str, str]:
    """clip id -> split of the clips whose split their source decides (the synthetic scenes: by person and picture)."""
    return {c["clip_id"]: c["split"] for c in ok_clips(_synthetic_manifest())}


def run_synthetic_scenes(params: Params) -> StageOutput:
    from tqdm import tqdm

    from assets.synthetic_scenes import clip_id_of, render_scenes

    sc = params.synthetic_scenes
    people = Path(sc.people_index)
    if sc.count and not people.is_file():
        raise StageInputError(f"{people}: synthetic people missing (synthetic_scenes.people_index); run `make setup`")
    with atomic_dir(SYNTHETIC_SCENES) as tmp:
        bar = tqdm(total=sc.count, desc="synthetic_scenes", unit="clip", disable=None)
        manifest = render_scenes(people, tmp, sc, params.seed, encoder(params), params.detection.sidecar_suffix,
                                 progress=lambda done, total: bar.update(1))
        bar.close()
        rows = []
        for row in manifest["clips"]:
            probed = probe_clip(tmp / row["file"], tmp, params.data)
            rows.append({**probed, **row, "clip_id": clip_id_of(row["file"]), "path": (SYNTHETIC_SCENES / row["file"]).as_posix(),
                         "source": "synthetic_scenes"})
        manifest["clips"] = rows
        write_json(tmp / "manifest.json", manifest)
    return StageOutput(
        metadata={"clips": len(rows), "train_clips": manifest["counts"]["train"], "val_clips": manifest["counts"]["val"],
                  "frames": sum(r["frames"] or 0 for r in rows),
                  "people": len({r["person"] for r in rows}), "quarantined": sum(r["status"] != "ok" for r in rows)},
        files=[SYNTHETIC_SCENES / "manifest.json"],
        input_hash=hash_files(people) if people.is_file() else "",
    )


def _record_digest(clip_id: str) -> str:
    return file_digest(REGION_TRACKS / f"{clip_id}.json")


def _keep_cache_within(params: Params) -> None:
    prune(int(params.cache.max_gb * 2**30))


def run_raw_clips(params: Params) -> StageOutput:
    manifest = build_manifest(params.data)
    with atomic_dir(RAW_CLIPS) as tmp:
        write_json(tmp / "manifest.json", manifest)
    quarantined = [c for c in manifest["clips"] if c["status"] != "ok"]
    return StageOutput(
        metadata={
            **{f"clips_{k}": v for k, v in manifest["counts"].items()},
            "total_frames": sum(c["frames"] or 0 for c in ok_clips(manifest)),
            "total_duration_s": round(sum(c["duration_s"] or 0 for c in ok_clips(manifest)), 2),
            "quarantine": "\n".join(f"{c['clip_id']}: {c['reason']}" for c in quarantined) or "none",
        },
        files=[RAW_CLIPS / "manifest.json"],
        input_hash=hashlib.sha256("".join(c["sha256"] or "-" for c in manifest["clips"]).encode()).hexdigest()[:16],
    )


@dataclass
class ClipPlan:
    """A per-clip stage's work on the current inputs: each clip's job (writing under the plan's `out_root`) and the
    store its results go to. The whole-stage body runs every job; Dagster fans the pending ones out as steps."""

    stage: str
    fn: Callable
    cache: ClipCache
    jobs: list[CachedJob]
    out_root: Path

    def pending(self) -> list[str]:
        """Clips whose entry is not stored yet: the ones a run has to compute."""
        return [j.clip_id for j in self.jobs if not self.cache.has(j.key)]

    def run(self, workers: int = 1):
        return map_clips_cached(self.fn, self.jobs, self.cache, self.out_root, workers, self.stage)


# The planners take `only` (clip ids): a Dagster step of one clip builds that clip's job alone, rather than reading
# every clip's record to keep one.
def plan_region_tracks(params: Params, out_root: Path, only: set[str] | None = None) -> ClipPlan:
    trained = None
    d = params.detection
    uses_detector = "detector" in (d.faces, d.plates)
    if uses_detector:
        from training.detector import trained_regions as trained
    cache = stage_cache("region_tracks", run_region_tracks, d, params.tracking, file_digest(d.yunet_model) if d.faces == "yunet" else "-",
                        file_digest(d.detector_model) if uses_detector else "-")
    # A clip's inputs: its manifest entry (content hash, path, probe) and a sidecar of boxes beside it.
    jobs = [CachedJob(c["clip_id"], cache.key([c, file_digest(sidecar_path(Path(c["path"]), d))]),
                      (c, out_root, d, params.tracking, trained), (f"{c['clip_id']}.json", f"masks/{c['clip_id']}"))
            for c in source_clips() if only is None or c["clip_id"] in only]
    return ClipPlan("region_tracks", track_clip, cache, jobs, out_root)


def run_region_tracks(params: Params) -> StageOutput:
    with atomic_dir(REGION_TRACKS) as tmp:
        plan = plan_region_tracks(params, tmp)
        outcomes, reuse = plan.run(params.data.workers)
        index = clip_index(outcomes, keys={j.clip_id: j.key for j in plan.jobs})
        write_json(tmp / "index.json", index)
        failures = batch_failures(index)  # raises inside the block: a batch where every clip failed is not swapped in
    _keep_cache_within(params)
    ok = [c for c in index["clips"] if c["status"] == "ok"]
    return StageOutput(
        metadata={
            "clips": len(ok),
            "clips_without_regions": sum(c["scenes"] == 0 for c in ok),
            "tracks": sum(c["tracks"] for c in ok),
            "scenes": sum(c["scenes"] for c in ok),
            "scene_frames": sum(c["scene_frames"] for c in ok),
            **reuse,
            **failures,
        },
        files=[REGION_TRACKS / "index.json"],
        input_hash=hash_files(RAW_CLIPS / "manifest.json", *[p for p in [SYNTHETIC_SCENES / "manifest.json"] if p.is_file()]),
    )


def _clips_with_scenes() -> list[str]:
    index = read_json(REGION_TRACKS / "index.json", "region_tracks")
    return [c["clip_id"] for c in index["clips"] if c["status"] == "ok" and c["scenes"] > 0]


def _render_plan(params: Params, out_root: Path, only: set[str] | None, fn, section, label: str, body, *config) -> ClipPlan:
    mask_shape = params.tracking.mask_shape
    raw_sha = {c["clip_id"]: c["sha256"] for c in source_clips()}
    cache = stage_cache(label, body, section, encoder(params), mask_shape, params.seed, *config)
    # A clip's inputs: its region_tracks record and the raw clip the record's frames come from.
    jobs = [
        CachedJob(cid, cache.key([cid, _record_digest(cid), raw_sha.get(cid)]),
                  (load_clip_tracks(REGION_TRACKS, cid), out_root, section, encoder(params), mask_shape, params.seed), (cid,))
        for cid in _clips_with_scenes() if only is None or cid in only
    ]
    return ClipPlan(label, fn, cache, jobs, out_root)


def plan_eggplant_gt(params: Params, out_root: Path, only: set[str] | None = None) -> ClipPlan:
    e = params.eggplant
    sprites = file_digest(e.emoji_png) if e.sprites == "emoji" else file_digest(e.sprites)
    return _render_plan(params, out_root, only, composite_clip, e, "eggplant_gt", run_eggplant_gt, sprites)


def plan_mosaic_lq(params: Params, out_root: Path, only: set[str] | None = None) -> ClipPlan:
    return _render_plan(params, out_root, only, mosaic_clip, params.mosaic, "mosaic_lq", run_mosaic_lq)


def _render_stage(params: Params, out: Path, planner) -> StageOutput:
    with atomic_dir(out) as tmp:
        plan = planner(params, tmp)
        outcomes, reuse = plan.run(params.data.workers)
        index = clip_index(outcomes, keys={j.clip_id: j.key for j in plan.jobs})
        write_json(tmp / "index.json", index)
        failures = batch_failures(index)
    _keep_cache_within(params)
    ok = [c for c in index["clips"] if c["status"] == "ok"]
    return StageOutput(
        metadata={"clips": len(ok), "scenes": sum(c["scenes"] for c in ok), "frames": sum(c["frames"] for c in ok),
                  **reuse, **failures},
        files=[out / "index.json"],
        input_hash=hash_files(REGION_TRACKS / "index.json"),
    )


def run_eggplant_gt(params: Params) -> StageOutput:
    return _render_stage(params, EGGPLANT_GT, plan_eggplant_gt)


def run_mosaic_lq(params: Params) -> StageOutput:
    return _render_stage(params, MOSAIC_LQ, plan_mosaic_lq)


def _ok_keys(path: Path, stage: str) -> dict[str, str]:
    """Clips that the stage made, with their cache keys (an index written before keys existed: the clip folder's
    content hash)."""
    return {c["clip_id"]: c.get("cache_key") or file_digest(path.parent / c["clip_id"])
            for c in read_json(path, stage)["clips"] if c["status"] == "ok"}


def dropped_contact_sheet(row: dict, frames: int = 6):
    """LQ | GT of a scene left out of the dataset, from the interim clips, titled with the reason."""
    from assets.video import read_frames

    lq = list(read_frames(MOSAIC_LQ / row["clip_id"] / f"{row['name']}.mp4"))
    gt = list(read_frames(EGGPLANT_GT / row["clip_id"] / f"{row['name']}.mp4"))
    picks = contact_sheet.pick_indices(min(len(lq), len(gt)), frames)
    return contact_sheet.grid({"LQ": [lq[i] for i in picks], "GT": [gt[i] for i in picks]},
                              f"DROPPED {row['name']} ({row['split']}): {row['reason']}")


def clip_contact_sheet(dataset: RestorationDataset, clip_id: str, frames: int = 6):
    items = [i for i in dataset if i.meta["name"] == clip_id]
    if not items:
        return None
    item = max(items, key=lambda i: i.frames_count)
    picks = contact_sheet.pick_indices(item.frames_count, frames)
    lq = RestorationDataset.read(item, "lq", unpadded=True)
    gt = RestorationDataset.read(item, "gt", unpadded=True)
    title = f"{item.meta_path.stem} | mosaic {item.meta['mosaic']['mod']} {item.meta['mosaic']['mosaic_size']}px"
    return contact_sheet.grid({"LQ": [lq[i] for i in picks], "GT": [gt[i] for i in picks]}, title)


def run_restoration_dataset(params: Params) -> StageOutput:
    with_scenes = _clips_with_scenes()
    gt_keys, lq_keys = _ok_keys(EGGPLANT_GT / "index.json", "eggplant_gt"), _ok_keys(MOSAIC_LQ / "index.json", "mosaic_lq")
    clip_ids = [c for c in with_scenes if c in gt_keys and c in lq_keys]
    groups = clip_groups(REGION_TRACKS, clip_ids)
    copies = grouped(groups)
    # The user's clips split by content group; the synthetic scenes keep the side their source gave them.
    splits = {**split_clips(clip_ids, params.dataset.val_fraction, groups),
              **{c: s for c, s in pinned_splits().items() if c in clip_ids}}
    min_change = params.dataset.min_mosaic_change
    cache = stage_cache("restoration_dataset", run_restoration_dataset, min_change)
    with atomic_dir(RESTORATION_DATASET) as tmp:
        make_layout(tmp)
        # A clip's inputs: its record and the GT/LQ clips below (their own keys: same key, same bytes), and its side.
        jobs = [CachedJob(cid, cache.key([cid, _record_digest(cid), gt_keys[cid], lq_keys[cid], splits[cid], groups.get(cid, cid)]),
                          (cid, splits[cid], groups.get(cid, cid), REGION_TRACKS, EGGPLANT_GT, MOSAIC_LQ, tmp, min_change), clip_files)
                for cid in clip_ids]
        outcomes, reuse = map_clips_cached(assemble_clip, jobs, cache, tmp, params.data.workers, "restoration_dataset")
        rows = [row for o in outcomes if o.ok for row in o.result["scenes"]]
        dropped = [row for o in outcomes if o.ok for row in o.result["dropped"]]
        failed = {o.clip_id: o.error for o in outcomes if not o.ok}
        if failed and len(failed) == len(clip_ids):
            raise StageInputError("every clip failed:\n" + "\n".join(f"{k}: {v}" for k, v in failed.items()))
        skipped = sorted(set(with_scenes) - set(clip_ids) | set(failed))
        write_json(tmp / "index.json", {"scenes": rows, "dropped_scenes": dropped, "skipped_clips": skipped,
                                        "content_groups": copies})
    _keep_cache_within(params)
    images: dict[str, Path] = {}
    with atomic_dir(DATASET_REPORT) as tmp:
        for split in ("train", "val"):
            dataset = RestorationDataset(RESTORATION_DATASET, split)
            for clip_id in sorted({i.meta["name"] for i in dataset}):
                sheet = clip_contact_sheet(dataset, clip_id)
                if sheet is not None:
                    name = f"{clip_id}.png"
                    contact_sheet.save_png(sheet, tmp / name)
                    images[f"{split}/{clip_id}"] = DATASET_REPORT / name
        for row in dropped:
            # Left out of the pairs, still shown: marked, so a reader sees what was dropped and why.
            name = f"dropped-{row['name']}.png"
            contact_sheet.save_png(dropped_contact_sheet(row), tmp / name)
            images[f"dropped/{row['name']}"] = DATASET_REPORT / name
    summary = summarize(rows, dropped)
    write_json(DATASET_METRICS, summary)
    return StageOutput(
        metadata={**summary, **reuse, "skipped_clips": ", ".join(skipped) or "none",
                  "dropped": "\n".join(f"{r['name']}: {r['reason']}" for r in dropped) or "none",
                  "failures": "\n".join(f"{k}: {v}" for k, v in failed.items()) or "none",
                  "content_groups": "; ".join(f"{g}: {', '.join(m)}" for g, m in copies.items()) or "none"},
        images=images,
        files=[RESTORATION_DATASET / "index.json", DATASET_METRICS],
        input_hash=hash_files(REGION_TRACKS / "index.json", EGGPLANT_GT / "index.json", MOSAIC_LQ / "index.json"),
    )
