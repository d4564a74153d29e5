"""The restoration track's training and evaluation stages: stage1_checkpoint, stage2_checkpoint,
restoration_report. Same contract as `lineage.py`: paths in, files out, a StageOutput back.

Training state that must survive a killed run lives under `.cache/train/<stage>/` (not a DVC output, so
`dvc repro` does not wipe it before re-running); the published checkpoint folder is swapped in atomically
at the end. The work folder is keyed by a fingerprint of the recipe and the data, so a changed recipe
never resumes a stale run, while an interrupted one resumes at its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from assets.atomic import atomic_dir, write_json
from orchestration import tracking
from orchestration.config import Params
from orchestration.stage_io import (
    RESTORATION_DATASET, StageInputError, StageOutput, fingerprint, hash_files, split_timings, without_timings, write_timings,
)

STAGE1 = Path("data/models/restoration/stage1")
STAGE2 = Path("data/models/restoration/stage2")
RESTORATION_REPORT = Path("data/reports/restoration")
STAGE1_METRICS = Path("data/metrics/stage1.json")
STAGE2_METRICS = Path("data/metrics/stage2.json")
RESTORATION_METRICS = Path("data/metrics/restoration.json")
WORK = Path(".cache/train")
GENERATOR = "generator.pth"  # Lada-loadable: state_dict with generator. and generator_ema. keys
REGISTERED_MODEL = "eggplant-restorer"

# Knobs that say how long or how often, not what is trained: changing them resumes instead of restarting.
_SCHEDULE_KEYS = {"max_iters", "log_interval", "checkpoint_interval", "sample_interval", "device", "amp", "cache_frames_mb", "enabled"}




def _recipe(section) -> dict:
    return {k: v for k, v in section.model_dump().items() if k not in _SCHEDULE_KEYS}


def _dataset_hash() -> str:
    index = RESTORATION_DATASET / "index.json"
    if not index.is_file():
        raise StageInputError(f"{index}: missing; materialize `restoration_dataset` first")
    return hash_files(index)


def _hooks(prefix: str):
    def on_log(metrics: dict, step: int) -> None:
        tracking.log_step({f"{prefix}/{k}": v for k, v in metrics.items()}, step)

    def on_sample(path: Path, step: int) -> None:
        tracking.log_image(path, f"samples/{prefix}")

    return on_log, on_sample


def _publish(out: Path, result, config: dict, title: str, metrics_path: Path, extra_meta: dict) -> StageOutput:
    from training import checkpoints as ckpt
    from training.loop import summary, write_curves

    work_dir = result.checkpoint.parent
    data = ckpt.read_checkpoint(result.checkpoint, None)
    sd = ckpt.state_dict_of(data)
    # Training state (optimisers, RNG) stays in the work folder; the published file is what Lada loads.
    published = {k: v for k, v in sd.items() if k.startswith(("generator.", "generator_ema."))}
    if not any(k.startswith("generator_ema.") for k in published):
        published.update({"generator_ema." + k[len("generator."):]: v for k, v in sd.items() if k.startswith("generator.")})
    meta = {**(data.get("meta") or {}), **extra_meta}
    metrics = {**summary(result), **{k: v for k, v in extra_meta.items() if isinstance(v, (int, float, bool))}}
    kept, timings = split_timings(metrics)
    images = {}
    with atomic_dir(out) as tmp:
        ckpt.save_atomic({"meta": meta, "state_dict": published}, tmp / GENERATOR)
        ckpt.write_lada_config(tmp / GENERATOR, int(meta.get("mid_channels", 64)), int(meta.get("num_blocks", 15)))
        write_json(tmp / "history.json", without_timings(result.history))
        write_json(tmp / "train.json", {**kept, "labels": result.labels, "config": config, "device": result.device})
        if result.history:
            write_curves(result.history, tmp / "curves.png", title)
        samples = sorted(work_dir.glob("sample_*.png"))
        if samples:
            shutil.copyfile(samples[-1], tmp / "sample_last.png")
    if (out / "curves.png").is_file():
        images["loss curves"] = out / "curves.png"
    if (out / "sample_last.png").is_file():
        images["LQ | output | GT (last sample)"] = out / "sample_last.png"
    write_json(metrics_path, kept)
    write_timings(metrics_path.stem, timings, result.history)
    return StageOutput(
        metadata={**metrics, "init": result.labels.get("init", ""), "resumed": result.labels.get("resumed", "no"),
                  "device": result.device},
        images=images,
        files=[out / "train.json", out / "history.json", metrics_path],
    )


def run_stage1(params: Params) -> StageOutput:
    from training.loop import TrainSettings, train

    s1 = params.restoration.stage1
    data_hash = _dataset_hash()
    init = Path(s1.load_from) if s1.load_from else None
    # The start weights' content, not only their path: a re-pretrained base must not resume a stale run.
    init_hash = hash_files(init) if init is not None and init.is_file() else None
    run_key = fingerprint("stage1", _recipe(s1), params.seed, data_hash, init_hash)
    work = WORK / "stage1" / run_key
    settings = TrainSettings(
        stage="stage1", dataset_root=RESTORATION_DATASET, work_dir=work, fingerprint=run_key,
        num_frame=s1.num_frame, batch_size=s1.batch_size, max_iters=s1.max_iters, log_interval=s1.log_interval,
        checkpoint_interval=s1.checkpoint_interval, sample_interval=s1.sample_interval, lr=s1.lr, lr_mult=dict(s1.lr_mult),
        region_loss_weight=s1.region_loss_weight, lq_size=s1.lq_size, mid_channels=s1.mid_channels, num_blocks=s1.num_blocks,
        init_from=Path(s1.load_from) if s1.load_from else None, init_sha256=s1.load_from_sha256,
        spynet_from=Path(s1.spynet_from) if s1.spynet_from else None, seed=params.seed, device=s1.device, amp=s1.amp,
        cache_mb=s1.cache_frames_mb,
    )
    on_log, on_sample = _hooks("stage1")
    result = train(settings, on_log, on_sample)
    from training import distributed as dist

    if not dist.current().main:  # under a launcher only rank 0 publishes
        return StageOutput()
    output = _publish(STAGE1, result, s1.model_dump(), "Stage 1 (Charbonnier)", STAGE1_METRICS, {"stage": "stage1"})
    output.input_hash = data_hash
    return output


def run_stage2(params: Params) -> StageOutput:
    from training import checkpoints as ckpt
    from training.loop import TrainSettings, train

    s1, s2 = params.restoration.stage1, params.restoration.stage2
    source = STAGE1 / GENERATOR
    if not source.is_file():
        raise StageInputError(f"{source}: missing; materialize `stage1_checkpoint` first")
    source_hash = hash_files(source)
    if not s2.enabled:
        from training import distributed as dist

        if not dist.current().main:
            return StageOutput()
        # Stage 2 is optional polish: disabled, the Stage 1 generator is published as the final model.
        with atomic_dir(STAGE2) as tmp:
            shutil.copyfile(source, tmp / GENERATOR)
            write_json(tmp / "train.json", {"enabled": False, "source": str(source)})
        write_json(STAGE2_METRICS, {"enabled": False})
        return StageOutput(metadata={"enabled": False, "source": str(source)}, input_hash=source_hash)
    run_key = fingerprint("stage2", _recipe(s2), _recipe(s1), params.seed, source_hash)
    work = WORK / "stage2" / run_key
    init = work / "init_from_stage1.pth"
    if not init.is_file():
        work.mkdir(parents=True, exist_ok=True)
        ckpt.convert_stage1_to_stage2(source, init)
    settings = TrainSettings(
        stage="stage2", dataset_root=RESTORATION_DATASET, work_dir=work, fingerprint=run_key,
        num_frame=s1.num_frame, batch_size=s1.batch_size, max_iters=s2.max_iters, log_interval=s2.log_interval,
        checkpoint_interval=s2.checkpoint_interval, sample_interval=s2.sample_interval, lr=s2.lr_generator,
        lr_discriminator=s2.lr_discriminator, lr_mult=dict(s1.lr_mult), region_loss_weight=s1.region_loss_weight,
        lq_size=s1.lq_size, init_from=init,
        perceptual_weight=s2.perceptual_weight, gan_loss_weight=s2.gan_loss_weight,
        vgg19_weights=Path(s2.vgg19_weights) if s2.vgg19_weights else None, vgg19_sha256=s2.vgg19_sha256,
        ema_decay=s2.ema_decay, discriminator_channels=s2.discriminator_channels, seed=params.seed, device=s1.device, amp=s1.amp, cache_mb=s1.cache_frames_mb,
    )
    on_log, on_sample = _hooks("stage2")
    result = train(settings, on_log, on_sample)
    from training import distributed as dist

    if not dist.current().main:  # under a launcher only rank 0 publishes
        return StageOutput()
    output = _publish(STAGE2, result, s2.model_dump(), "Stage 2 (pixel + perceptual + GAN)", STAGE2_METRICS,
                      {"stage": "stage2", "converted_from": str(source)})
    output.input_hash = source_hash
    return output


def _curve_figures() -> dict[str, Path]:
    return {f"{label} loss curves": path for label, path in (("Stage 1", STAGE1 / "curves.png"), ("Stage 2", STAGE2 / "curves.png"))
            if path.is_file()}


def _has_scenes(split: str) -> bool:
    return any((RESTORATION_DATASET / split / "crop_unscaled_meta").glob("*.json"))


def _eval_split() -> str:
    return "val" if _has_scenes("val") else "train"


def restoration_eval_data(params: Params) -> tuple[str, str]:
    """(split, hash) of what the restorer's numbers are measured on: every file of that split and the knobs
    that shape the measurement. Two runs with equal hashes measured the same thing."""
    split = _eval_split()
    files = sorted(p for p in (RESTORATION_DATASET / split).rglob("*") if p.is_file())
    return split, fingerprint(split, hash_files(*files), params.restoration.report.max_scenes,
                              params.restoration.stage1.lq_size)


def evaluate_restorer(params: Params, model, grid_frames: int = 0):
    """The restorer's figures on the split `restoration_eval_data` names: what the report shows and what the
    promotion gate re-scores a champion with (the same code for both)."""
    from evaluation.restoration_eval import evaluate_split
    from training.restorer import Restorer, pick_device

    s1, rep = params.restoration.stage1, params.restoration.report
    restorer = Restorer(model, s1.lq_size, pick_device(s1.device), fp16=False)
    return evaluate_split(restorer.restore, RESTORATION_DATASET, _eval_split(), rep.max_scenes, grid_frames)


def run_restoration_report(params: Params) -> StageOutput:
    from evaluation.report import write_report
    from training.checkpoints import load_generator, stand_in_base

    s1, rep = params.restoration.stage1, params.restoration.report
    source = STAGE2 / GENERATOR
    if not source.is_file():
        raise StageInputError(f"{source}: missing; materialize `stage2_checkpoint` first")
    model, info = load_generator(source)
    split, eval_hash = restoration_eval_data(params)
    evaluation = evaluate_restorer(params, model, rep.grid_frames)
    tracking.set_tags({tracking.EVAL_DATA_TAG: eval_hash})
    train1 = json.loads((STAGE1 / "train.json").read_text()) if (STAGE1 / "train.json").is_file() else {}
    init_label = (train1.get("labels") or {}).get("init", "unknown")
    base = stand_in_base(s1.load_from)
    embedded = s1.load_from is None or base is not None
    metrics = {**evaluation.metrics, "evaluated_on_val": split == "val", "model_mid_channels": info["mid_channels"], "model_num_blocks": info["num_blocks"],
               "weights": info["part"]}
    if (STAGE1 / GENERATOR).is_file() and params.restoration.stage2.enabled:
        # Stage 1's own figures beside the final model's: what the polish changed.
        stage1_model, _ = load_generator(STAGE1 / GENERATOR)
        stage1 = evaluate_restorer(params, stage1_model, 0).metrics
        metrics.update({f"stage1_{k}": stage1[k] for k in ("output_psnr_region", "output_ssim_region", "psnr_region_gain_db",
                                                           "output_temporal_change", "temporal_ratio") if k in stage1})
    grids = list(evaluation.grids)
    base_note = (f"Base (stand-in for Lada's weights): {base['about']}; held-out region PSNR {base['held_out']}, "
                 f"file sha256 {base['file_sha256'][:12]}." if base else
                 "Base: random init (no pretrained weights)." if s1.load_from is None else f"Base: {s1.load_from}.")
    notes = [
        f"Model: {source} ({info['part']} weights, mid_channels={info['mid_channels']}, num_blocks={info['num_blocks']}); "
        f"Stage 1 started from: {init_label}.",
        base_note,
        f"Metrics compare the mosaic input and the restored output with the eggplant GT on the {split} split, over "
        "each frame's own crop; 'region' = inside the region mask. Stability: mean absolute frame-to-frame change "
        "inside the region (track-aligned crops) of the output over that of the GT (temporal_ratio; 1 = as steady "
        "as the GT).",
        "Visibility (evaluation/eggplant_visibility.py): lowpass_* = PSNR inside the region after an 8-px box blur of "
        "both frames (shape and colour, not block edges); purple_iou / green_iou = IoU inside the region of the "
        "pixels classed as the sprite's purple body / green cap in the GT and in the output (the *_input figures: "
        "the mosaic itself); changed_outside_share = share of pixels clear of the region whose mean difference from "
        "the GT (the original there) exceeds 12 grey levels (a global tint scores near 1).",
    ]
    if split != "val":
        notes.append("The val split is empty (too few clips for a split by clip), so these numbers are on the "
                     "TRAIN split and say nothing about generalisation.")
    with atomic_dir(RESTORATION_REPORT) as tmp:
        if rep.sample_clip:
            sample = _sample_restore(params, source, rep.sample_clip, tmp / "sample")
            if sample is None:
                notes.append(f"Sample restore skipped: clip {rep.sample_clip!r} is not among the usable raw clips.")
            else:
                summary, sheet_rows = sample
                metrics.update({f"sample_{k}": v for k, v in summary.items()
                                if k in ("frames", "regions_found", "scenes", "seconds", "temporal_ratio",
                                         "output_temporal_change", "input_temporal_change")})
                grids.append((f"aubergine restore on {summary['clip']}: input | output", sheet_rows))
                notes.append(f"Whole-video restore of `{summary['clip']}`: {summary.get('regions_found', 0)} regions in "
                             f"{summary.get('frames')} frames; the video is sample/{Path(summary['output']).name}. "
                             "Its sample_temporal_ratio compares the change inside the regions with the original "
                             "video's (there is no GT for a whole video).")
        write_report(
            tmp, title="Restoration report: mosaic → eggplant (BasicVSR++)", metrics=metrics,
            tables={"Val scenes": evaluation.rows}, grids=grids, figures=_curve_figures(), notes=notes,
            embedded_default=embedded,
        )
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    kept, timings = split_timings(numeric)
    write_json(RESTORATION_METRICS, kept)
    write_timings(RESTORATION_METRICS.stem, timings)
    registration = {"registered": False, "reason": "restoration.report.register_model is false"}
    tracking.log_dir(RESTORATION_REPORT, "report")
    if rep.register_model:
        tags = {"stage": "restoration_report", "embedded_default": str(embedded), "source": str(source),
                **{k: f"{v:.6g}" for k, v in numeric.items() if k.startswith(("output_", "input_", "psnr_"))}}
        registration = tracking.register_pytorch_model(params, model.cpu().eval(), REGISTERED_MODEL, "challenger", tags)
    images = {f"report/{p.name}": p for p in sorted((RESTORATION_REPORT / "images").glob("*.png"))[:6]}
    return StageOutput(
        metadata={**numeric, "registered_model": registration.get("model", "no"),
                  "model_version": registration.get("version", 0), "model_uri": registration.get("model_uri", "none"),
                  "report": str(RESTORATION_REPORT / "report.html")},
        images=images,
        files=[RESTORATION_METRICS],
        input_hash=hash_files(source, RESTORATION_DATASET / "index.json"),
    )


def _sample_restore(params: Params, checkpoint: Path, clip_id: str, out_dir: Path):
    """Run the user-facing `aubergine restore` path on one raw clip; the report shows frames before/after."""
    from assets import contact_sheet
    from assets.video import read_frames
    from evaluation.restoration_eval import TemporalChange
    from inference.restore_video import restore_video

    manifest = json.loads((Path("data/interim/raw_clips") / "manifest.json").read_text())
    clips = {c["clip_id"]: c for c in manifest["clips"] if c["status"] == "ok"}
    if clip_id == "auto":
        split = "val" if _has_scenes("val") else "train"
        val_clips = sorted({json.loads(p.read_text())["name"] for p in (RESTORATION_DATASET / split / "crop_unscaled_meta").glob("*.json")})
        clip_id = next((c for c in val_clips if c in clips), None)
    if clip_id not in clips:
        return None
    src = Path(clips[clip_id]["path"])
    out = out_dir / f"{clip_id}_restored.mp4"
    temporal = TemporalChange(reference="input")
    summary = restore_video(src, out, checkpoint, params, size=params.restoration.stage1.lq_size, progress=False,
                            temporal=temporal)
    summary.update(temporal.metrics())
    frames_in = list(read_frames(src))
    frames_out = list(read_frames(out))
    picks = contact_sheet.pick_indices(min(len(frames_in), len(frames_out)), 5)
    summary["clip"] = clip_id
    return summary, {"input": [frames_in[i] for i in picks], "restored": [frames_out[i] for i in picks]}
