"""The one stage table. Dagster's asset graph (orchestration/definitions.py) and dvc.yaml
(orchestration/dvc.py) are both generated from it, so the two engines cannot disagree about what a stage
reads, which knobs it depends on, or what it writes. A test fails when the committed dvc.yaml drifts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from orchestration import (
    anonymization_stages, detection_stages, lineage, mosaic_detection_stages, promotion_stages, restoration_stages, stage_io,
)


@dataclass(frozen=True)
class Stage:
    name: str  # asset key and DVC stage name: a contract with users, keep stable
    group: str  # Dagster group; also the MLflow experiment suffix (one experiment per track)
    description: str
    run: Callable
    upstream: tuple[str, ...]
    params: tuple[str, ...]  # params.yaml sections this stage reads
    outs: tuple[str, ...]  # paths it writes (whole folders, swapped in atomically)
    extra_deps: tuple[str, ...] = ()  # inputs that are not stage outputs (raw data, provisioned weights)
    kinds: tuple[str, ...] = ("python",)
    metrics: tuple[str, ...] = ()  # JSON files among outs that DVC shows as metrics
    # Training curves for `dvc plots show`: (JSON file inside an out, x field, y fields).
    plots: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    pool: str | None = None  # Dagster concurrency pool: "gpu" for training, at most one at a time
    # Per-clip stages: (params, out_root) -> lineage.ClipPlan. Dagster runs the plan's pending clips as steps of
    # their own (one per clip, on whatever executor the deployment uses) before the stage body publishes.
    per_clip: Callable | None = None
    # Training stages that `training.launcher` runs data-parallel (orchestration/launcher.py).
    distributed: bool = False

    @property
    def track(self) -> str:
        return self.group


# Every stage depends on the switch that picks the recipe, and on the seed.
COMMON_PARAMS = ("profile", "profiles", "seed")
# Files every stage runs besides its body's own imports (derived in orchestration/code_deps.py): the schema
# that fills in defaults, and the runner, which sets what makes outputs reproducible (OpenCV's thread count).
COMMON_CODE = ("orchestration/config.py", "orchestration/runner.py")

STAGES: tuple[Stage, ...] = (
    Stage(
        name="raw_clips",
        group="ingest",
        description="Probe every clip in the raw folder with PyAV (fps, frames, size, codec, duration, rotation); "
        "quarantine undecodable or out-of-range files with their reason in the manifest.",
        run=lineage.run_raw_clips,
        upstream=(),
        params=("data",),
        outs=(str(stage_io.RAW_CLIPS),),
        extra_deps=("${data.raw_dir}",),
        kinds=("python", "pyav", "json"),
    ),
    Stage(
        name="synthetic_scenes",
        group="ingest",
        description="Clips of a synthetic person's face and a rendered plate moving through a pan/zoom over a picture, "
        "boxes as sidecars; they join the user's clips in the restoration track, split by person and picture, so "
        "faces and plates are in train and in val.",
        run=lineage.run_synthetic_scenes,
        upstream=(),
        params=("synthetic_scenes", "dataset", "detection", "data"),
        outs=(str(stage_io.SYNTHETIC_SCENES),),
        extra_deps=("${synthetic_scenes.people_index}",),
        kinds=("python", "opencv", "video"),
    ),
    Stage(
        name="region_tracks",
        group="ingest",
        description="Faces (YuNet/Haar) and plates (OpenCV cascade) or sidecar COCO boxes per frame, linked into "
        "tracks, median-smoothed over ~1 s, cut into scenes with Lada-style crops, pads and mask videos.",
        run=lineage.run_region_tracks,
        per_clip=lineage.plan_region_tracks,
        upstream=("raw_clips", "synthetic_scenes"),
        params=("detection", "tracking", "dataset"),
        outs=(str(stage_io.REGION_TRACKS),),
        extra_deps=("${detection.yunet_model}",),
        kinds=("python", "opencv", "onnx"),
    ),
    Stage(
        name="eggplant_gt",
        group="restoration",
        description="GT of the training pairs: each scene's crop with an eggplant composited into the region "
        "(aspect kept, pose from the smoothed track, colour matched, soft edge); the region's own pixels are "
        "inpainted away first.",
        run=lineage.run_eggplant_gt,
        per_clip=lineage.plan_eggplant_gt,
        upstream=("region_tracks",),
        params=("eggplant", "tracking", "dataset"),
        outs=(str(stage_io.EGGPLANT_GT),),
        extra_deps=("${eggplant.emoji_png}",),
        kinds=("python", "opencv", "video"),
    ),
    Stage(
        name="mosaic_lq",
        group="restoration",
        description="LQ of the training pairs: a seeded Lada-style mosaic (square-mid / square-avg / rect-avg, "
        "block size from region area, feather) of the ORIGINAL region, with optional degradation.",
        run=lineage.run_mosaic_lq,
        per_clip=lineage.plan_mosaic_lq,
        upstream=("region_tracks",),
        params=("mosaic", "tracking", "dataset"),
        outs=(str(stage_io.MOSAIC_LQ),),
        kinds=("python", "opencv", "video"),
    ),
    Stage(
        name="restoration_dataset",
        group="restoration",
        description="Lada version-2 restoration dataset (crop_unscaled_meta/img/mask/mosaic/mask_mosaic) with "
        "train/ and val/ split by source clip, plus GT-vs-LQ contact sheets.",
        run=lineage.run_restoration_dataset,
        upstream=("region_tracks", "eggplant_gt", "mosaic_lq"),
        params=("dataset",),
        outs=(str(stage_io.RESTORATION_DATASET), str(stage_io.DATASET_REPORT)),
        kinds=("python", "video", "lada"),
        metrics=(str(stage_io.DATASET_METRICS),),
    ),
    Stage(
        name="stage1_checkpoint",
        group="restoration",
        description="Stage 1 fine-tuning of BasicVSR++ (Lada's generator) on the LQ/GT pairs: Charbonnier loss, "
        "Adam, spynet/feat_extract/deform_align/backbone frozen (requires_grad off); resumes from its last "
        "checkpoint; curves and LQ | output | GT grids to MLflow.",
        run=restoration_stages.run_stage1,
        upstream=("restoration_dataset",),
        params=("restoration.stage1",),
        outs=(str(restoration_stages.STAGE1),),
        extra_deps=(),
        kinds=("pytorch", "mlflow"),
        metrics=(str(restoration_stages.STAGE1_METRICS),),
        plots=((str(restoration_stages.STAGE1 / "history.json"), "iteration", ("loss_pix",)),),
        pool="gpu",
        distributed=True,
    ),
    Stage(
        name="stage2_checkpoint",
        group="restoration",
        description="Stage 2 polish from the converted Stage 1 weights: pixel + VGG19 perceptual + GAN loss with a "
        "spectral-norm U-Net discriminator and an EMA generator; disabled = Stage 1 weights passed through.",
        run=restoration_stages.run_stage2,
        upstream=("stage1_checkpoint",),
        params=("restoration.stage1", "restoration.stage2"),
        outs=(str(restoration_stages.STAGE2),),
        kinds=("pytorch", "mlflow"),
        metrics=(str(restoration_stages.STAGE2_METRICS),),
        plots=((str(restoration_stages.STAGE2 / "history.json"), "iteration", ("loss_pix", "loss_perceptual", "loss_gan")),),
        pool="gpu",
        distributed=True,
    ),
    Stage(
        name="restoration_report",
        group="restoration",
        description="PSNR/SSIM of mosaic input vs restored output against the eggplant GT on the val split (full "
        "frame and inside regions), before/after grids, a whole-video restore of a sample clip; registers the "
        "generator as MLflow model `eggplant-restorer` (alias challenger).",
        run=restoration_stages.run_restoration_report,
        upstream=("stage2_checkpoint", "restoration_dataset", "raw_clips"),
        params=("restoration.stage1", "restoration.report", "restore", "detection", "tracking", "mosaic"),
        outs=(str(restoration_stages.RESTORATION_REPORT),),
        kinds=("pytorch", "mlflow", "html"),
        metrics=(str(restoration_stages.RESTORATION_METRICS),),
    ),
    Stage(
        name="mosaic_coco",
        group="restoration",
        description="Where every mosaic is, on whole frames: the lineage's own seeded mosaics over its scenes' regions, "
        "random mosaics pasted on free frames (train clips) and clean frames, as a one-category COCO set split like "
        "the restoration dataset; each val clip's whole LQ video.",
        run=mosaic_detection_stages.run_mosaic_coco,
        upstream=("raw_clips", "region_tracks", "restoration_dataset"),
        params=("mosaic", "tracking", "dataset", "mosaic_detector.data"),
        outs=(str(mosaic_detection_stages.MOSAIC_COCO),),
        kinds=("python", "coco", "video"),
        metrics=(str(mosaic_detection_stages.MOSAIC_COCO_METRICS),),
    ),
    Stage(
        name="mosaic_detector_checkpoint",
        group="restoration",
        description="The detection track's torchvision detector with one category (mosaic), fine-tuned on mosaic_coco "
        "(from the face/plate base in the embedded default); what `aubergine restore --regions mosaic` uses.",
        run=mosaic_detection_stages.run_mosaic_detector,
        upstream=("mosaic_coco",),
        params=("mosaic_detector",),
        outs=(str(mosaic_detection_stages.MOSAIC_DETECTOR),),
        kinds=("pytorch", "mlflow"),
        metrics=(str(mosaic_detection_stages.MOSAIC_DETECTOR_METRICS),),
        plots=((str(mosaic_detection_stages.MOSAIC_DETECTOR / "history.json"), "iteration",
                ("loss", "loss_classification", "loss_bbox_regression", "loss_bbox_ctrness")),),
        pool="gpu",
        distributed=True,
    ),
    Stage(
        name="mosaic_detection_report",
        group="restoration",
        description="COCO mAP of the trained mosaic detector against the grid heuristic on the val clips' mosaics, and "
        "the lineage scenes a whole-video pass over each val LQ video finds; registers `mosaic-detector` (alias "
        "challenger).",
        run=mosaic_detection_stages.run_mosaic_detection_report,
        upstream=("mosaic_detector_checkpoint", "mosaic_coco", "region_tracks"),
        params=("mosaic_detector", "restore", "tracking", "detection"),
        outs=(str(mosaic_detection_stages.MOSAIC_DETECTION_REPORT),),
        kinds=("pytorch", "mlflow", "html"),
        metrics=(str(mosaic_detection_stages.MOSAIC_DETECTION_METRICS),),
    ),
    Stage(
        name="unified_coco",
        group="detection",
        description="Faces and plates from every source in one COCO set (categories face=1, plate=2): WIDER FACE, "
        "PP4AV and COCO drop folders, frames of the clips with their tracked boxes, synthetic plates with rendered "
        "text, faces of the synthetic people (split by person); deduplicated by content, split by source group; "
        "every rejected line or entry in problems.json.",
        run=detection_stages.run_unified_coco,
        upstream=("raw_clips", "region_tracks"),
        params=("coco",),
        outs=(str(detection_stages.UNIFIED_COCO),),
        extra_deps=("${coco.external_dir}", "${coco.synthetic_faces.people_index}"),
        kinds=("python", "coco", "pillow"),
        metrics=(str(detection_stages.COCO_METRICS),),
    ),
    Stage(
        name="detector_checkpoint",
        group="detection",
        description="A torchvision face/plate detector (FCOS ResNet-18 FPN by default) trained on unified_coco; "
        "resumes from its last checkpoint; loss curves and detection samples to MLflow.",
        run=detection_stages.run_detector,
        upstream=("unified_coco",),
        params=("detector",),
        outs=(str(detection_stages.DETECTOR),),
        kinds=("pytorch", "mlflow"),
        metrics=(str(detection_stages.DETECTOR_METRICS),),
        plots=((str(detection_stages.DETECTOR / "history.json"), "iteration",
                ("loss", "loss_classification", "loss_bbox_regression", "loss_bbox_ctrness")),),
        pool="gpu",
        distributed=True,
    ),
    Stage(
        name="detection_report",
        group="detection",
        description="COCO mAP (AP, AP50, AP75, per category) of the detector on the val split, PR curves, example "
        "detections; registers the detector as MLflow model `face-plate-detector` (alias challenger).",
        run=detection_stages.run_detection_report,
        upstream=("detector_checkpoint", "unified_coco"),
        params=("detector",),
        outs=(str(detection_stages.DETECTION_REPORT),),
        kinds=("pytorch", "mlflow", "html"),
        metrics=(str(detection_stages.DETECTION_METRICS),),
    ),
    Stage(
        name="lora_checkpoint",
        group="anonymization",
        description="The anonymizer: SD2 inpainting adapted with LoRA (peft, diffusers' format) on faces and plates of "
        "unified_coco, trained jointly with a spectral-norm patch discriminator and the detection track's detector; "
        "identity suppression through a differentiable dlib ResNet, plate-text anchoring; resumes from its last "
        "checkpoint; metrics.csv and val_samples/stepXXXX to MLflow.",
        run=anonymization_stages.run_lora_checkpoint,
        upstream=("unified_coco", "detector_checkpoint"),
        params=("anonymization",),
        outs=(str(anonymization_stages.LORA),),
        kinds=("pytorch", "diffusers", "mlflow"),
        metrics=(str(anonymization_stages.LORA_METRICS),),
        plots=((str(anonymization_stages.LORA / anonymization_stages.METRICS_CSV), "step",
                ("l1", "perceptual", "arcface_mean_sim")),),
        pool="gpu",
        distributed=True,
    ),
    Stage(
        name="anonymization_report",
        group="anonymization",
        description="The anonymizer against Gaussian blur, Lada's pixelation and a solid fill on the val split: "
        "identity similarity and re-identification rate (the identity backend named), EasyOCR's read rate of the "
        "original plate text and the fake text's accuracy, FID of whole images and region crops, the detector's "
        "AP50 retention; the flicker ratio of each method through `aubergine anonymize` on sample clips; method grids; registers `face-plate-anonymizer` (alias challenger) as an MLflow pyfunc.",
        run=anonymization_stages.run_anonymization_report,
        upstream=("lora_checkpoint", "unified_coco", "detector_checkpoint", "region_tracks"),
        params=("anonymization", "anonymize", "detection", "tracking"),
        outs=(str(anonymization_stages.ANONYMIZATION_REPORT),),
        kinds=("pytorch", "diffusers", "mlflow", "html"),
        metrics=(str(anonymization_stages.ANONYMIZATION_METRICS),),
    ),
    Stage(
        name="promoted_models",
        group="promotion",
        description="The promotion gate: for each registered model, compares the `challenger` version's evaluation "
        "metrics with the `champion`'s by the rules in `promotion.models` and moves `champion` only on a pass; the "
        "decision (inputs, outcome, reasons) goes to model-version tags, this run's tags and decisions.json.",
        run=promotion_stages.run_promoted_models,
        upstream=("restoration_report", "mosaic_detection_report", "detection_report", "anonymization_report"),
        params=("promotion",),
        outs=(str(promotion_stages.PROMOTION_REPORT),),
        kinds=("mlflow",),
    ),
)

BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    if name not in BY_NAME:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def topological() -> list[Stage]:
    done: list[str] = []
    pending = list(STAGES)
    while pending:
        for s in pending:
            if all(u in done for u in s.upstream):
                done.append(s.name)
                pending.remove(s)
                break
        else:
            raise ValueError(f"cycle among stages {[s.name for s in pending]}")
    return [BY_NAME[n] for n in done]
