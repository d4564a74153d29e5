"""The anonymization track's stages: lora_checkpoint (SD2 inpainting + LoRA, trained jointly with a
discriminator and the detection track's detector, the "Plan B" recipe). Same contract as the other tracks'
stage bodies: paths in, files out, a StageOutput back."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

from assets.atomic import atomic_dir, write_json
from orchestration import tracking
from orchestration.config import Params
from orchestration.detection_stages import DETECTOR, UNIFIED_COCO, coco_hash
from orchestration.stage_io import (
    REGION_TRACKS, StageInputError, StageOutput, fingerprint, hash_files, split_timings, without_timings, write_timings,
)

DETECTOR_CHECKPOINT = DETECTOR / "detector.pth"
LORA = Path("data/models/anonymizer")
LORA_METRICS = Path("data/metrics/lora.json")
WORK = Path(".cache/train")
CHECKOUT = Path(__file__).resolve().parents[1]  # provisioned weights (FID's Inception) live in the checkout
METRICS_CSV = "metrics.csv"  # written by the loop with the recipe's header (joint_loop.METRICS_COLUMNS)
SETUP_HINT = "run `make setup` (it writes the embedded tiny base) or point anonymization.generator.model_dir at SD2 inpainting"


def _has_annotations(path: Path) -> bool:
    return bool(json.loads(path.read_text()).get("annotations"))


def _settings(params: Params, work_dir: Path, run_key: str):
    from training.anonymizer.joint_loop import AnonymizerTrainSettings

    a = params.anonymization
    # With every source in one group (e.g. a single clip) nothing is held out: validate on the train split,
    # as detection_report does, and say so in the run's metadata.
    val_json = UNIFIED_COCO / "val.json" if _has_annotations(UNIFIED_COCO / "val.json") else None
    return AnonymizerTrainSettings(
        model_dir=Path(a.generator.model_dir), variant=a.generator.variant, work_dir=work_dir, fingerprint=run_key,
        train_json=UNIFIED_COCO / "train.json", val_json=val_json, images_root=UNIFIED_COCO,
        detector_checkpoint=DETECTOR_CHECKPOINT if DETECTOR_CHECKPOINT.is_file() else None,
        resolution=a.resolution, context_pad=a.context_pad, batch_size=a.batch_size,
        learnable_layers=list(a.learnable_layers), lora_rank=a.lora_rank, lora_alpha=a.lora_alpha,
        separate_adapters=a.separate_adapters, precision=a.precision, enable_xformers=a.enable_xformers,
        gradient_checkpointing=a.gradient_checkpointing, prompt_face=a.generator.prompt_face,
        prompt_plate=a.generator.prompt_plate, diffusion_weight=a.diffusion_weight, l1_weight=a.l1_weight,
        perceptual_weight=a.perceptual_weight, id_suppress_weight=a.id_suppress_weight, id_margin=a.id_margin,
        adv_weight=a.adv_weight, alternating=a.alternating.model_dump(), lr_generator=a.lr.generator,
        lr_discriminator=a.lr.discriminator, lr_detector=a.lr.detector, lr_pretrain=a.lr.pretrain,
        grad_clip=a.grad_clip, pretrain_steps=a.pretrain_steps, pretrain_vae_steps=a.pretrain_vae_steps,
        max_steps=a.max_steps,
        save_every_steps=a.checkpoint.save_every_steps, val_every_steps=a.val_every_steps,
        log_every_steps=a.log_every_steps, num_val_samples=a.num_val_samples, plate_steps=a.plate_steps,
        plate_text_anchor_strength=a.plate_text_anchor_strength,
        plate_text_font_ratio_min=a.plate_text_font_ratio_min, plate_text_font_ratio_max=a.plate_text_font_ratio_max,
        discriminator_enabled=a.discriminator.enabled, discriminator_channels=a.discriminator.channels,
        vgg19_weights=Path(a.vgg19_weights) if a.vgg19_weights else None, seed=params.seed, device=a.device,
        arcface_pack=Path(a.arcface_pack) if a.arcface_pack else None,
        progress=True,
    )


def check_generator_inputs(params: Params):
    """Everything that can be wrong with the generator's inputs, said before any training starts: the model
    folder (missing, LFS pointer, checksum, a text-to-image UNet) and `learnable_layers` against its UNet."""
    from training.anonymizer.generator import check_model_dir, lora_target_modules

    a = params.anonymization
    info = check_model_dir(a.generator.model_dir, a.generator.variant, a.generator.model_sha256 or None)
    # Only now diffusers and torch: a wrong folder is said without paying their import.
    import torch
    from diffusers import UNet2DConditionModel

    # The UNet's config alone builds its module tree on the meta device: the layer names are checked in a
    # second even for SD2's 865M parameters.
    config = UNet2DConditionModel.load_config(Path(a.generator.model_dir) / "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    lora_target_modules(unet, list(a.learnable_layers))
    return info


def _validator(params: Params):
    """The validation callback: the recipe's metrics on the val samples, with the loss's own embedder family."""
    from training.anonymizer.validation import default_models, validation_metrics
    from training.detector import load_detector
    from training.restorer import pick_device

    models = default_models(device="cpu")
    if params.anonymization.arcface_pack:  # arcface_mean_sim with the embedder the loss uses
        from training.anonymizer.arcface_torch import load_arcface_embedder

        models["embedder"] = load_arcface_embedder(params.anonymization.arcface_pack)
    detector = None
    if DETECTOR_CHECKPOINT.is_file():
        detector, _ = load_detector(DETECTOR_CHECKPOINT, device=pick_device("cpu"))

    def validate(samples, anonymized, fake_texts) -> dict:
        return validation_metrics(samples, anonymized, fake_texts, detector=detector, **models)

    return validate


def _last_csv_row(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    out = {}
    for key, value in rows[-1].items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def run_lora_checkpoint(params: Params) -> StageOutput:
    a = params.anonymization
    data_hash = coco_hash()
    try:
        info = check_generator_inputs(params)
    except FileNotFoundError as err:  # GeneratorWeightsError is a WeightsError
        raise StageInputError(f"{err}\n({SETUP_HINT})") from None
    from training.anonymizer.joint_loop import train_anonymizer
    from training.loop import run_rate, write_curves

    recipe = {k: v for k, v in a.model_dump().items() if k not in ("max_steps", "log_every_steps", "device")}
    detector_hash = hash_files(DETECTOR_CHECKPOINT) if DETECTOR_CHECKPOINT.is_file() else "none"
    run_key = fingerprint("anonymizer", recipe, params.seed, data_hash, detector_hash)
    settings = _settings(params, WORK / "lora" / run_key, run_key)
    base_label = ("tiny SD2-inpainting stand-in (same diffusers classes, pretrained for minutes at set-up; no SD2 "
                  "weights offline): its numbers show the track works, not SD2's anonymization quality"
                  if info.tiny_random else f"{a.generator.model_id} from {a.generator.model_dir}")
    tracking.set_tags({"anonymizer.base": base_label, "anonymizer.tiny_stand_in": str(info.tiny_random).lower()})

    def on_log(metrics: dict, step: int) -> None:
        tracking.log_step({f"lora/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step)

    def on_sample(path: Path, step: int) -> None:
        tracking.log_image(path, f"val_samples/step{step:04d}")

    result = train_anonymizer(settings, on_log, on_sample, validate=_validator(params))
    from training import distributed as dist

    if not dist.current().main:  # under a launcher only rank 0 publishes
        return StageOutput()
    last = _last_csv_row(result.metrics_csv)
    done = result.steps - result.resumed_from
    summary = {
        "steps": result.steps, "resumed_from": result.resumed_from, "train_seconds": round(result.seconds, 2),
        "steps_per_s": run_rate(done, result.seconds), "trainable_params": result.trainable_params,
        "frozen_params": result.frozen_params, "tiny_stand_in": info.tiny_random, "processes": result.processes,
        "validated_on_val": int(settings.val_json is not None),
        **{k: v for k, v in last.items() if k != "step" and not (isinstance(v, float) and math.isnan(v))},
    }
    kept, timings = split_timings(summary)
    images: dict[str, Path] = {}
    with atomic_dir(LORA) as tmp:
        shutil.copytree(result.lora_dir, tmp / "lora")
        if Path(result.base_dir).resolve() != Path(a.generator.model_dir).resolve():
            # The LoRA adapts the warmed base, not model_dir: publish that base beside it.
            shutil.copytree(result.base_dir, tmp / "base")
        shutil.copyfile(result.metrics_csv, tmp / METRICS_CSV)
        if result.val_dirs:
            shutil.copytree(Path(result.val_dirs[-1]).parent, tmp / "val_samples")
        write_json(tmp / "history.json", without_timings(result.history))
        base_dir = str(LORA / "base") if (tmp / "base").is_dir() else a.generator.model_dir
        write_json(tmp / "train.json", {**kept, "base": base_label, "base_dir": base_dir, "labels": result.labels,
                                        "config": a.model_dump(), "device": result.device})
        if result.history and any(k.startswith("loss") for k in result.history[0]):
            write_curves(result.history, tmp / "curves.png", "Anonymizer (LoRA)", x="step")
    if (LORA / "curves.png").is_file():
        images["loss curves"] = LORA / "curves.png"
    for grid in sorted((LORA / "val_samples").glob("step*/*.png"))[-3:]:
        images[f"{grid.parent.name}/{grid.stem}"] = grid
    write_json(LORA_METRICS, kept)
    write_timings(LORA_METRICS.stem, timings, result.history, step="step")
    return StageOutput(
        metadata={**summary, "base": base_label, "lora": str(LORA / "lora"), "device": result.device,
                  "load_with": f"StableDiffusionInpaintPipeline.from_pretrained({base_dir!r}).load_lora_weights({str(LORA / 'lora')!r})"},
        images=images, files=[LORA / "train.json", LORA / METRICS_CSV, LORA_METRICS], input_hash=data_hash,
    )


# ------------------------------------------------------------------------------------------ anonymization_report

ANONYMIZATION_REPORT = Path("data/reports/anonymization")
ANONYMIZATION_METRICS = Path("data/metrics/anonymization.json")
REGISTERED_ANONYMIZER = "face-plate-anonymizer"
REPORT_METHODS = ("anonymizer", "blur", "pixelate", "fill")
GRID_ORDER = ("original", "blur", "pixelate", "fill", "anonymizer")


def _trained_anonymizer() -> tuple[Path, dict]:
    lora_dir, train_json = LORA / "lora", LORA / "train.json"
    if not lora_dir.is_dir() or not train_json.is_file():
        raise StageInputError(f"{lora_dir}: missing; materialize `lora_checkpoint` first")
    return lora_dir, json.loads(train_json.read_text())


def _context_crop(image, box, side: int = 96):
    """The square twice the region's size around it, `side` px: what the report's grids show."""
    import cv2
    import numpy as np

    x, y, w, h = box
    scale = side / (max(w, h) * 2.0)
    m = np.array([[scale, 0, side / 2 - (x + w / 2) * scale], [0, scale, side / 2 - (y + h / 2) * scale]])
    return cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)


def _method_grids(val, results, rows: int) -> list[tuple[str, dict]]:
    by_method = {r.method: r.images for r in results}
    grids = []
    for kind in ("face", "plate"):
        table: dict[str, list] = {}
        for i, v in enumerate(val):
            for k, region in enumerate(v.regions):
                if region.kind != kind or len(table) >= rows:
                    continue
                row = [_context_crop(v.image, region.box)]
                row += [_context_crop(by_method[m][i], region.box) for m in GRID_ORDER[1:] if m in by_method]
                table[f"{Path(v.file_name).stem[:10]}#{k}"] = row
        if table:
            grids.append((f"{kind}s: " + " | ".join(m for m in GRID_ORDER if m == "original" or m in by_method), table))
    return grids


def flicker_clips(count: int) -> list[tuple[str, Path]]:
    """(clip id, path) of the raw clips `aubergine anonymize` runs on for the flicker measure: the clip with the
    most region frames of each kind first (a face clip and a plate clip), then the next by region frames."""
    index = REGION_TRACKS / "index.json"
    if count < 1 or not index.is_file():
        return []
    clips = [c for c in json.loads(index.read_text())["clips"] if c["status"] == "ok" and c.get("scene_frames")]
    clips.sort(key=lambda c: (-c["scene_frames"], c["clip_id"]))
    chosen: list[dict] = []
    for kind in ("face", "plate"):
        best = next((c for c in clips if kind in c.get("kinds", ()) and c not in chosen), None)
        if best is not None:
            chosen.append(best)
    chosen += [c for c in clips if c not in chosen]
    out = []
    for c in chosen[:count]:
        meta = REGION_TRACKS / f"{c['clip_id']}.json"
        if meta.is_file():
            out.append((c["clip_id"], Path(json.loads(meta.read_text())["path"])))
    return out


def _flicker_samples(params: Params, methods: dict, out_dir: Path) -> tuple[dict, list[tuple[str, dict]], list[dict]]:
    """Each method through `aubergine anonymize` on the first frames of the sample clips. Returns (pooled flicker
    ratio per method, frame grids, table rows)."""
    from assets import contact_sheet
    from assets.video import VideoError, probe_video, read_frames
    from inference.anonymize_media import anonymize_video, options_from, video_regions

    r = params.anonymization.report
    pooled: dict[str, list[float]] = {m: [0.0, 0.0] for m in methods}
    grids, rows = [], []
    for clip_id, path in flicker_clips(r.flicker_clips):
        try:
            probe = probe_video(path)
        except VideoError:
            continue
        opts = options_from(params, "blur", "cpu")
        regions = video_regions(path, params, opts, probe.frames, probe.width, probe.height, False, r.flicker_frames)
        frames: dict[str, list] = {"original": list(read_frames(path, stop=r.flicker_frames))}
        picks = contact_sheet.pick_indices(len(frames["original"]), 5)
        row: dict = {"clip": clip_id, "frames": len(frames["original"])}
        for label, method in methods.items():
            opts = options_from(params, "lora" if label == "anonymizer" else label, "cpu")
            out = out_dir / f"{Path(clip_id).stem}_{label}.mp4"
            summary = anonymize_video(path, out, params, opts, method if label == "anonymizer" else None, False,
                                      max_frames=r.flicker_frames, regions=regions)
            f = summary["flicker"]
            if f["pairs"]:
                pooled[label][0] += f["output_change"] * f["pairs"]
                pooled[label][1] += f["original_change"] * f["pairs"]
            row["tracks"] = summary["tracks"]
            row[label] = f["ratio"]
            frames[label] = list(read_frames(out))
        rows.append(row)
        grids.append((f"{clip_id}: frames {', '.join(str(i) for i in picks)}",
                      {k: [v[i] for i in picks] for k, v in frames.items()}))
    ratios = {m: (a / b if b > 0 else None) for m, (a, b) in pooled.items()}
    return ratios, grids, rows


def _eval_split() -> str:
    return "val" if _has_annotations(UNIFIED_COCO / "val.json") else "train"


def anonymization_eval_data(params: Params) -> tuple[str, str]:
    """(split, hash) of what the anonymizer's numbers are measured on: the split's COCO file and images, the
    detector that measures utility, and the knobs that pick the sample and the identity backend."""
    split = _eval_split()
    doc = json.loads((UNIFIED_COCO / f"{split}.json").read_text())
    r = params.anonymization.report
    detector = hash_files(DETECTOR_CHECKPOINT) if DETECTOR_CHECKPOINT.is_file() else None
    return split, fingerprint(split, hash_files(UNIFIED_COCO / f"{split}.json",
                                                *(UNIFIED_COCO / im["file_name"] for im in doc["images"])),
                              detector, r.max_images, r.max_plates, params.anonymization.arcface_pack)


def evaluate_anonymizers(params: Params, methods: dict, work: Path):
    """(per-method results, the originals' reference figures, val images, identity backend name) of each
    method on the split `anonymization_eval_data` names: the report's figures and the champion re-score's.
    The figures of the method named `anonymizer` are the unprefixed ones of `flat_metrics`."""
    from evaluation.anonymization_eval import Anonymized, evaluate_methods, load_val_images, plate_metrics
    from evaluation.fid import FID_WEIGHTS, load_inception
    from evaluation.identity import select_backend
    from evaluation.ocr import PlateReader
    from training.detector import load_detector

    r = params.anonymization.report
    split = _eval_split()
    val, subset = load_val_images(UNIFIED_COCO / f"{split}.json", UNIFIED_COCO, r.max_images)
    if not val:
        raise StageInputError(f"{UNIFIED_COCO / f'{split}.json'}: no faces or plates to anonymize")
    identity = select_backend(params.anonymization.arcface_pack)
    reader = PlateReader()
    detector = load_detector(DETECTOR_CHECKPOINT)[0] if DETECTOR_CHECKPOINT.is_file() else None
    results, reference = evaluate_methods(val, subset, methods, identity=identity, plate_reader=reader,
                                          fid_model=load_inception(CHECKOUT / FID_WEIGHTS), detector=detector, max_plates=r.max_plates,
                                          work=work)
    # Can EasyOCR read the originals at all? Without that, a low read rate on anonymized plates means nothing.
    unchanged = plate_metrics(reader, val, [Anonymized(v.image, []) for v in val], r.max_plates)
    reference["original_text_read_rate"] = unchanged["orig_text_read_rate"]
    return results, reference, val, identity


def flat_metrics(results, reference: dict) -> dict:
    flat: dict = dict(reference)
    for res in results:
        prefix = "" if res.method == "anonymizer" else f"{res.method}_"
        flat.update({prefix + k: v for k, v in res.metrics.items()})
    return flat


def run_anonymization_report(params: Params) -> StageOutput:
    import tempfile

    from evaluation.anonymization_eval import method_table
    from evaluation.report import write_report
    from inference.anonymize_media import anonymizer_settings
    from inference.anonymize_methods import BASELINE_FUNCS, LoraAnonymizer
    from inference.anonymizer_pyfunc import SETTINGS_FILE, AnonymizerPyfunc
    from training.restorer import pick_device

    a, r = params.anonymization, params.anonymization.report
    lora_dir, trained = _trained_anonymizer()
    base_dir = Path(trained["base_dir"])
    tiny = bool(trained.get("tiny_stand_in"))
    data_hash = coco_hash()
    split, eval_hash = anonymization_eval_data(params)
    settings = anonymizer_settings(params)
    anonymizer = LoraAnonymizer(base_dir, lora_dir, **settings, device=str(pick_device(a.device)))
    methods = {"anonymizer": anonymizer, **BASELINE_FUNCS}
    with tempfile.TemporaryDirectory(prefix=".tmp-anon-", dir=".") as work:
        results, reference, val, identity = evaluate_anonymizers(params, methods, Path(work))
    tracking.set_tags({tracking.EVAL_DATA_TAG: eval_hash})
    flat = flat_metrics(results, reference)
    backend = identity.name
    base_label = trained.get("base", str(base_dir))
    with atomic_dir(ANONYMIZATION_REPORT) as tmp:
        (tmp / "samples").mkdir()
        flicker, flicker_grids, flicker_rows = _flicker_samples(params, methods, tmp / "samples")
        tables = {"Methods": method_table(results, backend)}
        if flicker_rows:
            tables["Flicker ratio on sample clips"] = flicker_rows
        write_report(
            tmp, title=f"Anonymization report: the anonymizer against blur, pixelation and fill ({split} split)",
            metrics={**flat, "identity_backend": backend},
            tables=tables,
            grids=_method_grids(val, results, r.grid_rows) + flicker_grids,
            notes=[f"{int(reference['images'])} {split} images, {int(reference['regions'])} regions; identity with "
                   f"{backend} on every face box (re-id = the backend's own threshold, {identity.threshold_kind}"
                   f"{identity.threshold}); EasyOCR on up to {r.max_plates} plates per method (original text read when "
                   f"CER <= 0.2; on the unchanged images it reads {reference['original_text_read_rate']:.2f} of them); FID "
                   f"of anonymized vs original images and region crops (indicative below 50 images); the detector's "
                   f"AP50 on anonymized images against its AP50 on the originals "
                   f"({reference['original_AP50']:.3f}).",
                   f"Anonymizer: {base_label} + LoRA {lora_dir}; pixelation is Lada's mosaic block rule; fill is the "
                   "region's mean colour.",
                   f"Flicker: each method through `aubergine anonymize` on the first {r.flicker_frames} frames of "
                   "the sample clips (samples/); the mean frame-to-frame change inside each tracked region of the "
                   "output over the same of the original (1 = moves as the original did, above 1 = flickers, below "
                   "1 = steadier than the original, as a static patch)."],
            embedded_default=tiny,
        )
        write_json(tmp / SETTINGS_FILE, {"anonymizer": settings, "base_dir": str(base_dir),
                                        "base_model_id": a.generator.model_id, "tiny_stand_in": tiny})
    numeric = {k: v for k, v in flat.items() if isinstance(v, (int, float))}
    numeric.update({("" if m == "anonymizer" else f"{m}_") + "flicker_ratio": v for m, v in flicker.items() if v is not None})
    write_json(ANONYMIZATION_METRICS, numeric)
    tracking.log_dir(ANONYMIZATION_REPORT, "report")
    registration: dict = {}
    if r.register_model:
        artifacts = {"lora": str(lora_dir), "settings": str(ANONYMIZATION_REPORT / SETTINGS_FILE)}
        if tiny:  # a few MB: the version is self-contained; a real SD2 base is referenced, not copied
            artifacts["base"] = str(base_dir)
        registration = tracking.register_pyfunc_model(
            params, AnonymizerPyfunc(), artifacts, REGISTERED_ANONYMIZER, "challenger",
            {"stage": "anonymization_report", "embedded_default": str(tiny), "identity_backend": backend,
             **{k: f"{v:.6g}" for k, v in numeric.items() if k in ("reid_rate", "orig_text_read_rate", "fid_image",
                                                                      "map_retention", "fake_text_char_acc")}})
    images = {f"report/{p.name}": p for p in sorted((ANONYMIZATION_REPORT / "images").glob("*.png"))[:4]}
    return StageOutput(
        metadata={**numeric, "identity_backend": backend, "registered_model": registration.get("model", "no"),
                  "model_version": registration.get("version", 0), "report": str(ANONYMIZATION_REPORT / "report.html")},
        images=images, files=[ANONYMIZATION_METRICS],
        input_hash=fingerprint(data_hash, *(hash_files(f) for f in sorted(lora_dir.rglob("*.safetensors")))),
    )
