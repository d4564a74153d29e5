"""The typed schema of params.yaml, and the one switch between the embedded CPU default and the full recipe.

params.yaml holds the full GPU recipe as its body. Its `profiles:` section holds small overlays; the
top-level `profile:` key picks one of them ("full" applies none). So the embedded default is one
documented switch away from the full recipe (`dvc exp run -S profile=full`, or edit the key) and the
two can never drift apart as two copies of the file would.

Every model here forbids unknown keys, so a typo is an error that names the key, not a silently
ignored knob.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ConfigError(ValueError):
    """params.yaml (or an override) is not valid; the message names key, value and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


def _ordered(value: tuple) -> tuple:
    low, high = value
    if low > high:
        raise ValueError(f"a range must be [low, high] with low <= high, got [{low}, {high}]")
    return value


# A [low, high] range from which a value is drawn per scene.
Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
IntRange = Annotated[tuple[int, int], AfterValidator(_ordered)]


class DataParams(_Strict):
    """`raw_clips`: where clips come from and which ones are accepted."""

    raw_dir: str = "data/raw"
    extensions: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
    min_frames: PositiveInt = 8
    max_frames: PositiveInt = 200_000
    min_complete_fraction: float = Field(0.5, ge=0.0, le=1.0)  # a partial file is kept from this share of its promised frames
    min_side: PositiveInt = 32
    max_side: PositiveInt = 8192
    min_fps: Annotated[float, Field(gt=0)] = 5.0
    max_fps: Annotated[float, Field(gt=0)] = 240.0
    max_duration_s: Annotated[float, Field(gt=0)] = 4 * 3600.0
    workers: PositiveInt = 1

    @model_validator(mode="after")
    def _ranges(self) -> "DataParams":
        for low, high in (("min_frames", "max_frames"), ("min_side", "max_side"), ("min_fps", "max_fps")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must not exceed {high} ({getattr(self, high)})")
        return self


class DetectionParams(_Strict):
    """`region_tracks`: which offline detector finds faces and plates."""

    faces: Literal["yunet", "haar", "detector", "none"] = "yunet"
    plates: Literal["haar", "detector", "none"] = "haar"
    yunet_model: str = "data/models/yunet/face_detection_yunet_2023mar.onnx"
    # A trained face/plate detector (detector_checkpoint's detector.pth, copied out so the lineage has no cycle:
    # region_tracks feeds the detector's training data). Used where faces/plates say "detector".
    detector_model: str = "weights/face_plate_detector.pth"
    detector_score_threshold: Fraction = 0.5
    face_score_threshold: Fraction = 0.7
    haar_min_neighbors: PositiveInt = 5
    plate_min_neighbors: PositiveInt = 4
    max_side: PositiveInt = 1280
    every_n_frames: PositiveInt = 8  # README, Performance: recall and cost against every frame
    plate_every_n_frames: PositiveInt | None = 16  # the plate detectors' interval; None = every_n_frames
    # Between two keyframes: "flow" carries the boxes by optical flow and looks near a box where a region starts,
    # ends or is lost (assets/sparse_detection.py); "none" leaves the frames empty for association to bridge.
    # A clip with a sidecar of boxes is read on every frame.
    between: Literal["flow", "none"] = "flow"
    min_box_size: PositiveInt = 12
    sidecar_suffix: str = ".coco.json"


class TrackingParams(_Strict):
    """`region_tracks`: association across frames, smoothing and scene cutting."""

    iou_threshold: Fraction = 0.25
    max_gap_frames: Annotated[int, Field(ge=0)] = 6
    smoothing_seconds: Annotated[float, Field(ge=0)] = 1.0
    min_scene_frames: PositiveInt = 12
    max_scene_frames: PositiveInt = 240
    min_track_detections: PositiveInt = 3  # a track seen on fewer frames is a false positive (lineage and restore)
    min_track_score: Fraction = 0.75  # ... and one whose mean detector score stays below this (Haar scores are 1)
    box_margin: Annotated[float, Field(ge=0, le=2)] = 0.15
    crop_margin: Annotated[float, Field(ge=0, le=2)] = 0.4
    mask_shape: Literal["ellipse", "rect"] = "ellipse"

    @model_validator(mode="after")
    def _scene_lengths(self) -> "TrackingParams":
        if self.min_scene_frames > self.max_scene_frames:
            raise ValueError(
                f"min_scene_frames ({self.min_scene_frames}) must not exceed max_scene_frames ({self.max_scene_frames})"
            )
        return self


class EggplantParams(_Strict):
    """`eggplant_gt`: the sprite and how it is composited."""

    sprites: str = "emoji"  # "emoji" (Noto U+1F346, provisioned at set-up) or a folder of RGBA PNGs
    emoji_png: str = "data/media/eggplant/emoji_u1f346.png"
    fit: Literal["cover", "contain"] = "cover"  # cover = every mask pixel is eggplant (assets/eggplant.py)
    fill: Annotated[float, Field(gt=0, le=1.5)] = 1.0
    color_match: Fraction = 0.35
    edge_feather: Fraction = 0.08


MosaicMode = Literal["square_mid", "square_avg", "rect_avg"]


class DegradeParams(_Strict):
    """Optional LQ degradation; off in the Stage 1 recipe (`degrade=False`)."""

    enabled: bool = False
    crf: IntRange = (18, 32)
    blur_sigma: Range = (0.0, 1.0)
    noise_sigma: Range = (0.0, 3.0)

    @field_validator("crf")
    @classmethod
    def _crf_bounds(cls, value):
        if not (0 <= value[0] <= 51 and 0 <= value[1] <= 51):
            raise ValueError(f"crf must lie in [0, 51], got {list(value)}")
        return value


class MosaicParams(_Strict):
    """`mosaic_lq`: a Lada-style mosaic of the original content."""

    modes: tuple[MosaicMode, ...] = ("square_mid", "square_avg", "rect_avg")
    block_size_scale: Range = (0.8, 1.2)
    min_block_size: PositiveInt = 4
    rect_ratio: Range = (1.1, 1.8)
    feather: Range = (0.0, 1.0)
    degrade: DegradeParams = DegradeParams()

    @field_validator("modes")
    @classmethod
    def _non_empty(cls, value):
        if not value:
            raise ValueError("at least one mosaic mode is required")
        return value


class DatasetParams(_Strict):
    """`restoration_dataset` and the encoding of every video the lineage writes."""

    root: str = "data/datasets/restoration"
    val_fraction: Fraction = 0.25
    codec: str = "libx264"
    crf: Annotated[int, Field(ge=0, le=51)] = 15
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "medium"
    # x264 with frame threads gave different bytes run to run here; one thread per encoder is byte-stable
    # (clips still run in parallel across `data.workers` processes).
    encoder_threads: PositiveInt = 1
    # A scene whose mosaic changes the region by less than this (mean |LQ - original| over its pixels and channels,
    # 0-255) is left out of the pairs: over a smooth region the model cannot see where to paint (README).
    min_mosaic_change: Annotated[float, Field(ge=0.0)] = 6.0


class SyntheticScenesParams(_Strict):
    """`synthetic_scenes`: clips in which a synthetic person's face and a rendered plate move through a pan/zoom over
    a picture (assets/synthetic_scenes.py), boxes as sidecars; they join the user's clips in the restoration track
    with their split decided by person and picture, so both kinds of region are in train and in val."""

    count: Annotated[int, Field(ge=0)] = 40  # 0 = none: the restoration track uses the user's clips alone
    frames: Annotated[int, Field(ge=8)] = 24
    fps: Annotated[float, Field(gt=0)] = 24.0
    width: Annotated[int, Field(ge=64)] = 320
    height: Annotated[int, Field(ge=64)] = 240
    face_width: Range = (0.2, 0.34)  # face box width / frame width
    plate_width: Range = (0.24, 0.4)  # plate width / frame width
    plate_aspect: Range = (2.0, 4.0)  # plate width / height
    zoom: Fraction = 0.25  # the camera's zoom changes by up to this share over a clip
    pan: Fraction = 0.25  # its centre moves by up to this share of the frame width
    drift: Fraction = 0.12  # each region moves on its own by up to this share of the frame width
    val_fraction: Fraction = 0.25  # of the people (split by person)
    people_index: str = "data/media/people/people.json"


# BasicVSR++'s top-level modules (training.basicvsrpp.MODULE_GROUPS; a test keeps the two equal). Kept here
# so reading params never imports torch.
RESTORER_MODULE_GROUPS = (
    "spynet", "feat_extract", "deform_align", "backbone", "reconstruction", "upsample1", "upsample2", "conv_hr", "conv_last",
)


class Stage1Params(_Strict):
    """Restoration Stage 1 (pixel loss), defaults = the eggplant fine-tuning recipe."""

    degrade: bool = False
    random_mosaic_params: bool = False
    num_frame: PositiveInt = 12
    batch_size: PositiveInt = 1
    max_iters: PositiveInt = 3000
    log_interval: PositiveInt = 10
    checkpoint_interval: PositiveInt = 500
    lr: Annotated[float, Field(gt=0)] = 5e-5
    lr_mult: dict[str, Annotated[float, Field(ge=0)]] = {
        "spynet": 0.0,
        "feat_extract": 0.0,
        "deform_align": 0.0,
        "backbone": 0.0,
    }
    region_loss_weight: Annotated[float, Field(ge=1)] = 1.0  # pixel loss inside the region x this (1 = recipe)
    lq_size: PositiveInt = 256
    mid_channels: PositiveInt = 64
    num_blocks: PositiveInt = 15
    load_from: str | None = "weights/lada_mosaic_restoration_model_generic_v1.2.pth"
    load_from_sha256: str | None = None
    # Only used when load_from is null: mmagic's pretrained SPyNet, so flows are meaningful from the start.
    spynet_from: str | None = None
    sample_interval: PositiveInt = 100  # iterations between LQ | output | GT sample grids
    device: str = "auto"  # auto = cuda when available, else cpu
    amp: bool = True  # mixed precision, CUDA only
    cache_frames_mb: Annotated[int, Field(ge=0)] = 2048  # decoded scenes kept in memory between iterations

    @field_validator("lr_mult")
    @classmethod
    def _known_groups(cls, value: dict) -> dict:
        unknown = sorted(set(value) - set(RESTORER_MODULE_GROUPS))
        if unknown:
            raise ValueError(f"unknown module group(s) {unknown}; groups: {list(RESTORER_MODULE_GROUPS)}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("lq_size")
    @classmethod
    def _lq_size(cls, value: int) -> int:
        if value < 128 or value % 4:
            raise ValueError("must be a multiple of 4 and at least 128 (the flow network works on a quarter-size copy)")
        return value


class Stage2Params(_Strict):
    """Restoration Stage 2 (GAN + perceptual polish), defaults = the recipe."""

    enabled: bool = True
    lr_generator: Annotated[float, Field(gt=0)] = 2e-5
    lr_discriminator: Annotated[float, Field(gt=0)] = 5e-5
    perceptual_weight: Annotated[float, Field(ge=0)] = 0.05
    gan_loss_weight: Annotated[float, Field(ge=0)] = 0.02
    max_iters: PositiveInt = 5000
    checkpoint_interval: PositiveInt = 500
    log_interval: PositiveInt = 10
    sample_interval: PositiveInt = 100
    discriminator_channels: PositiveInt = 64  # U-Net discriminator width (Lada: 64)
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.999  # generator_ema = decay * ema + (1 - decay) * generator
    vgg19_weights: str | None = "weights/vgg19-dcbb9e9d.pth"
    vgg19_sha256: str | None = None


class RestorationReportParams(_Strict):
    """`restoration_report`: PSNR/SSIM on the val split, grids, and a whole-video restore of one sample."""

    max_scenes: PositiveInt = 50  # val scenes evaluated (all of them on the sample data)
    grid_frames: PositiveInt = 6
    # raw clip (its clip id) run through `aubergine restore` for the report; "auto" = the first val-split clip
    # (held out from training); null = skip
    sample_clip: str | None = "auto"
    register_model: bool = True  # log the generator and register it as `eggplant-restorer` (alias challenger)


class RestorationParams(_Strict):
    stage1: Stage1Params = Stage1Params()
    stage2: Stage2Params = Stage2Params()
    report: RestorationReportParams = RestorationReportParams()


class RestoreParams(_Strict):
    """`aubergine restore` / `aubergine validate`: applying a trained restorer to whole videos."""

    max_clip_length: PositiveInt = 180  # frames per restored clip (memory bound on long scenes)
    codec: Literal["libx264", "h264_nvenc", "libx265", "hevc_nvenc"] = "libx264"
    crf: Annotated[int, Field(ge=0, le=51)] = 18
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "medium"
    blend_feather: Fraction = 0.1  # soft edge of the blend back into the frame, fraction of the region's short side
    # "detect": faces/plates by the `detection` section, mosaicked as in training, then restored.
    # "mosaic": the regions are already pixelated (found by the mosaic detector or given by sidecar boxes).
    regions: Literal["detect", "mosaic"] = "detect"
    # How pixelated regions are found when regions = mosaic: "model" = the mosaic detector trained by the lineage
    # (mosaic_detector_checkpoint), "grid" = the hand-written grid heuristic (inference/mosaic_detect.py), "auto" =
    # the model where mosaic_detection_report measured it beating the grid on val (AP50, in
    # mosaic_detection_metrics), else the grid, and the summary says which and why; null = sidecar boxes only.
    mosaic_detector: Literal["auto", "model", "grid"] | None = "auto"
    mosaic_detector_model: str = "data/models/mosaic_detector/detector.pth"
    mosaic_detection_metrics: str = "data/metrics/mosaic_detection.json"  # what auto reads
    detection_batch_size: PositiveInt = 4  # frames per detector call (Lada's --mosaic-detection-batch-size)
    detector_queue_size: PositiveInt = 8  # frames decoded ahead of detection (Lada's --detector-queue-size)
    # Decoding on a device through PyAV (Lada's --hw-decode): auto = the first FFmpeg hw device that opens, else CPU.
    hw_decode: Literal["off", "auto", "cuda", "vaapi", "qsv", "videotoolbox", "d3d11va"] = "off"

    @field_validator("hw_decode", mode="before")
    @classmethod
    def _yaml_booleans(cls, value):
        # YAML 1.1 reads an unquoted off/on as a boolean (DVC's `-S` rewrite of params.yaml writes it unquoted),
        # and lada-cli's --hw-decode is a switch: false = off, true = auto.
        if isinstance(value, bool):
            return "auto" if value else "off"
        return value
    device: str = "auto"
    fp16: bool = True  # half precision on CUDA


class AnonymizeParams(_Strict):
    """`aubergine anonymize`: applying the anonymizer (or a baseline) to images, folders and whole videos."""

    method: Literal["lora", "blur", "pixelate", "fill"] = "lora"
    lora_dir: str = "data/models/anonymizer/lora"  # what lora_checkpoint publishes
    base_dir: str = ""  # "" = the base recorded in train.json beside the LoRA folder
    device: str = "auto"
    batch_size: PositiveInt = 4  # regions denoised per UNet call
    box_margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1  # detector boxes widened by this share per side
    # Videos: detect on every frame by default. A face the sparse path misses is a face left visible, and on the
    # 40-clip library of bench/incremental.py it missed a few short scenes (README, Performance); "detection"
    # = the detection section's every_n_frames / plate_every_n_frames / between, as the lineage uses them.
    video_detection: Literal["every_frame", "detection"] = "every_frame"
    # Temporal consistency on video: where a track's box barely moved (IoU with its previous box at least
    # reuse_iou), start from the previous output frame there, re-noised to track_strength of the fresh noise
    # level (and that share of the steps). 1.0 = every frame from scratch (each still with the track's seed).
    reuse_iou: Fraction = 0.6
    track_strength: Annotated[float, Field(gt=0.0, le=1.0)] = 0.35
    codec: Literal["libx264", "h264_nvenc", "libx265", "hevc_nvenc"] = "libx264"
    crf: Annotated[int, Field(ge=0, le=51)] = 18
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "medium"


class SyntheticPlatesParams(_Strict):
    """Plate-like panels with rendered random valid text, composited into frames of the sample media."""

    count: Annotated[int, Field(ge=0)] = 2000
    per_image: IntRange = (1, 3)
    width_ratio: Range = (0.08, 0.3)  # plate width / image width
    aspect: Range = (2.0, 4.7)  # plate width / height (EU plates ~4.7, US ~2)
    font_ratio: Range = (0.55, 0.8)  # text height / plate height (the anchoring recipe's font ratio knobs)
    image_side: PositiveInt = 480  # backgrounds are scaled so their long side is this


class SyntheticFacesParams(_Strict):
    """Faces of the synthetic people (`make setup` draws them) composited into frames of the sample media."""

    count: Annotated[int, Field(ge=0)] = 1000
    per_image: IntRange = (1, 3)  # distinct people per image, all of one split
    width_ratio: Range = (0.1, 0.3)  # face box width / image width
    image_side: PositiveInt = 480  # backgrounds are scaled so their long side is this
    people_index: str = "data/media/people/people.json"


class CocoParams(_Strict):
    """`unified_coco`: faces and plates from every source, one COCO set with a split by source group."""

    external_dir: str = "data/external"  # drop folders: wider_face/, pp4av/, coco/ (see README)
    frames_every_n: PositiveInt = 10  # frames sampled from region_tracks clips
    max_frames_per_clip: PositiveInt = 30
    val_fraction: Fraction = 0.2
    synthetic_plates: SyntheticPlatesParams = SyntheticPlatesParams()
    synthetic_faces: SyntheticFacesParams = SyntheticFacesParams()


class DetectorParams(_Strict):
    """`detector_checkpoint`: a torchvision detector of faces and plates trained on unified_coco."""

    arch: Literal["fcos_resnet18_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "retinanet_resnet50_fpn"] = "fcos_resnet18_fpn"
    pretrained_backbone: str | None = None  # local ImageNet backbone weights (e.g. torchvision's resnet18-f37072fd.pth)
    pretrained_sha256: str | None = None
    init_from: str | None = None  # a whole detector .pth to fine-tune (the embedded default's set-up-pretrained base)
    init_sha256: str | None = None
    fpn_channels: PositiveInt = 256  # FPN / head width (torchvision's 256); 128 trains 2x faster on CPU
    min_size: PositiveInt = 512  # torchvision's GeneralizedRCNNTransform resize
    max_size: PositiveInt = 853
    batch_size: PositiveInt = 8
    lr: Annotated[float, Field(gt=0)] = 0.01
    max_iters: PositiveInt = 20000
    log_interval: PositiveInt = 20
    checkpoint_interval: PositiveInt = 1000
    score_threshold: Fraction = 0.3  # detections kept when the detector finds regions in the lineage / restore
    device: str = "auto"
    amp: bool = True

    @model_validator(mode="after")
    def _one_start(self):
        if self.init_from and self.pretrained_backbone:
            raise ValueError("init_from and pretrained_backbone are both set: a whole detector to fine-tune already "
                             "holds its backbone; set one of them to null")
        return self



class MosaicCocoParams(_Strict):
    """`mosaic_coco`: where the lineage's mosaics are, on whole frames (assets/mosaic_coco.py)."""

    frames_every_n: PositiveInt = 2  # of the frames a scene covers (and of the free frames for pasted mosaics)
    max_frames_per_clip: Annotated[int, Field(ge=0)] = 200  # lineage-mosaic frames per clip
    pasted_frames_per_clip: Annotated[int, Field(ge=0)] = 100  # train clips: free frames given random mosaics
    clean_frames_per_clip: Annotated[int, Field(ge=0)] = 20  # frames with no mosaic (negatives), both splits
    pasted_per_frame: IntRange = (1, 3)
    paste_side: Range = (0.08, 0.35)  # a pasted mosaic's size, fraction of the frame's short side
    paste_aspect: Range = (0.5, 2.5)  # its width / height
    min_visible_change: Annotated[float, Field(ge=0)] = 4.0  # a pasted mosaic changing pixels less (mean, 0-255) is dropped
    jpeg_quality: IntRange = (40, 90)  # every image is stored as a JPEG of a quality drawn here (mosaics arrive re-compressed)

    @field_validator("pasted_per_frame")
    @classmethod
    def _at_least_one(cls, value):
        if value[0] < 1:
            raise ValueError("pasted_per_frame must start at 1 or more")
        return value

    @field_validator("paste_side")
    @classmethod
    def _side(cls, value):
        if not 0 < value[0] <= value[1] < 1:
            raise ValueError("paste_side must lie inside (0, 1)")
        return value


class MosaicDetectorParams(DetectorParams):
    """`mosaic_detector_checkpoint`: the detection track's torchvision detector, one category (mosaic), trained on
    mosaic_coco. The same knobs as `detector`, plus the data it is trained on."""

    max_iters: PositiveInt = 5000
    checkpoint_interval: PositiveInt = 500
    score_threshold: Fraction = 0.5  # what `aubergine restore --regions mosaic` keeps
    # With regions = mosaic, tracks whose mean score is lower are dropped: this replaces tracking.min_track_score,
    # which is calibrated on the face/plate detectors (the grid heuristic's block scores on a clean mosaic are
    # ~0.6-0.8, measured on astronaut_zoom.mp4).
    min_track_score: Fraction = 0.5
    data: MosaicCocoParams = MosaicCocoParams()

LAYER_PATH = r"^unet(\.[A-Za-z_][A-Za-z0-9_]*(\[-?[0-9]+\])*)+$"  # unet.up_blocks[-1], unet.down_blocks[0].attentions[0]


class InpaintGeneratorParams(_Strict):
    """The inpainting pipeline the LoRA adapts: a local folder in diffusers' layout (never a hub download)."""

    variant: Literal["sd2", "sdxl"] = "sd2"  # sdxl: StableDiffusionXLInpaintPipeline, the recipe's optional migration
    model_id: str = "stabilityai/stable-diffusion-2-inpainting"  # what model_dir must hold (download it elsewhere)
    model_dir: str = "weights/stable-diffusion-2-inpainting"
    model_sha256: dict[str, str] = {}  # file relative to model_dir -> sha256, checked before loading
    prompt_face: str = "a photo of a person's face"
    prompt_plate: str = "a car license plate"


class AnonymizerDiscriminatorParams(_Strict):
    enabled: bool = True
    channels: PositiveInt = 64  # capacity of the spectral-norm patch discriminator
    layers: PositiveInt = 3


class AlternatingParams(_Strict):
    """Every how many joint steps each model is updated (1 = every step)."""

    detector: PositiveInt = 4
    generator: PositiveInt = 1
    discriminator: PositiveInt = 1


class AnonymizerLrParams(_Strict):
    generator: Annotated[float, Field(gt=0)] = 1.0e-4
    discriminator: Annotated[float, Field(gt=0)] = 1.0e-4
    detector: Annotated[float, Field(gt=0)] = 1.0e-5
    pretrain: Annotated[float, Field(gt=0)] = 1.0e-4  # warm-up (self-reconstruction) of the base UNet


class AnonymizerCheckpointParams(_Strict):
    save_every_steps: PositiveInt = 500


class AnonymizationReportParams(_Strict):
    """`anonymization_report`: the trained anonymizer against blur, pixelation and fill on the val split."""

    max_images: PositiveInt = 200  # val images (half with faces where there are enough), every region in them
    max_plates: PositiveInt = 100  # EasyOCR reads per method (~0.5-1 s each on a CPU)
    face_steps: PositiveInt = 25  # DDIM steps from noise for faces (plates: plate_steps from the text anchor)
    grid_rows: PositiveInt = 6  # per category: original | blur | pixelate | fill | anonymizer
    register_model: bool = True  # register the LoRA as MLflow model `face-plate-anonymizer`, alias challenger
    flicker_clips: Annotated[int, Field(ge=0)] = 2  # sample clips for the flicker measure, 0 = none
    flicker_frames: PositiveInt = 60  # the first frames of each


class AnonymizationParams(_Strict):
    """`lora_checkpoint`: SD2 inpainting + LoRA, trained jointly with a discriminator and the face/plate detector
    (the "Plan B" recipe; knob names as the recipe spells them)."""

    generator: InpaintGeneratorParams = InpaintGeneratorParams()
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"  # autocast + grad scaler on CUDA; CPU always runs fp32
    enable_xformers: bool = True  # memory-efficient attention when xFormers is installed; PyTorch SDPA otherwise
    gradient_checkpointing: bool = False
    use_lora: bool = True
    learnable_layers: tuple[Annotated[str, Field(pattern=LAYER_PATH)], ...] = ("unet.mid_block", "unet.up_blocks[-1]")
    lora_rank: PositiveInt = 8
    lora_alpha: Annotated[float, Field(gt=0)] = 8.0
    separate_adapters: bool = False  # one LoRA for faces, one for plates, picked per region class
    resolution: PositiveInt = 512  # side of the square region crops the generator trains on
    context_pad: Annotated[float, Field(ge=0.0)] = 0.5  # context around the box, as a fraction of its size
    batch_size: PositiveInt = 4
    discriminator: AnonymizerDiscriminatorParams = AnonymizerDiscriminatorParams()
    diffusion_weight: Annotated[float, Field(ge=0.0)] = 1.0
    l1_weight: Annotated[float, Field(ge=0.0)] = 1.0
    perceptual_weight: Annotated[float, Field(ge=0.0)] = 0.1
    # The recipe raises it 0.1 -> 0.25 when identity similarity stays high; too high distorts faces.
    id_suppress_weight: Annotated[float, Field(ge=0.0)] = 0.1
    id_margin: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.0  # identity similarity (1 - dlib distance) tolerated before the loss acts
    adv_weight: Annotated[float, Field(ge=0.0)] = 0.01  # too high: mode collapse and artefacts
    alternating: AlternatingParams = AlternatingParams()
    lr: AnonymizerLrParams = AnonymizerLrParams()
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    pretrain_steps: Annotated[int, Field(ge=0)] = 0  # warm-up by self-reconstruction before the joint phase
    # The stand-in only: its random VAE learns to reconstruct the crops first (never set it for a real SD2 VAE).
    pretrain_vae_steps: Annotated[int, Field(ge=0)] = 0
    plate_steps: PositiveInt = 20  # denoising steps from the rendered text anchor: more = crisper characters
    plate_text_anchor_strength: Fraction = 0.6  # lower keeps more of the rendered fake text
    plate_text_font_ratio_min: Annotated[float, Field(gt=0, le=1)] = 0.55  # font height / plate height
    plate_text_font_ratio_max: Annotated[float, Field(gt=0, le=1)] = 0.75
    max_steps: PositiveInt = 10000
    checkpoint: AnonymizerCheckpointParams = AnonymizerCheckpointParams()
    val_every_steps: PositiveInt = 500
    num_val_samples: PositiveInt = 16
    log_every_steps: PositiveInt = 10
    vgg19_weights: str | None = "weights/vgg19-dcbb9e9d.pth"  # perceptual loss; null = random init (labelled)
    # insightface buffalo_l folder holding w600k_r50.onnx: ArcFace (onnx2torch) for the identity loss and
    # arcface_mean_sim; null = the dlib port. Non-commercial licence: never bundled.
    arcface_pack: str | None = None
    device: str = "auto"
    report: AnonymizationReportParams = AnonymizationReportParams()

    @model_validator(mode="after")
    def _consistent(self):
        if self.plate_text_font_ratio_min > self.plate_text_font_ratio_max:
            raise ValueError(f"plate_text_font_ratio_min ({self.plate_text_font_ratio_min}) must not exceed "
                             f"plate_text_font_ratio_max ({self.plate_text_font_ratio_max})")
        if not self.use_lora:
            raise ValueError("use_lora: false (fine-tuning the whole UNet) is not supported: the recipe adapts SD2 "
                             "with LoRA (bench/anonymizer.py measures the cost of a full-UNet step)")
        if not self.learnable_layers:
            raise ValueError("learnable_layers is empty: name at least one UNet block, e.g. unet.mid_block")
        if self.pretrain_vae_steps and not self.pretrain_steps:
            raise ValueError("pretrain_vae_steps > 0 needs pretrain_steps > 0: the UNet must learn the new VAE's latents")
        return self


class TrackingServerParams(_Strict):
    """MLflow. `uri: null` = SQLite store and artifact folder inside the project."""

    uri: str | None = None
    artifact_dir: str = "mlartifacts"
    enabled: bool = True
    # Where a person opens the runs (`make mlflow-ui`); Dagster metadata and run tags link there.
    ui_url: str = "http://127.0.0.1:5000"


class CompareRule(_Strict):
    """Challenger vs champion on one metric of their evaluation runs."""

    metric: str
    better: Literal["higher", "lower"] = "higher"
    # The challenger must beat the champion by at least this much (0 = "not worse").
    margin: Annotated[float, Field(ge=0)] = 0.0
    # ...or may be worse by at most this much (FID's noise on a small val set): "not worse by more than".
    tolerance: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _one_slack(self) -> "CompareRule":
        if self.margin > 0 and self.tolerance > 0:
            raise ValueError(f"compare rule on {self.metric!r}: set margin (must beat by) or tolerance (may trail by), "
                             "not both")
        return self


class FloorRule(_Strict):
    """An absolute bound every promoted version meets; the only test a first model (no champion yet) faces."""

    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> "FloorRule":
        if self.min is None and self.max is None:
            raise ValueError(f"floor on {self.metric!r} needs `min` or `max`")
        return self


class ModelGate(_Strict):
    compare: tuple[CompareRule, ...] = ()
    floors: tuple[FloorRule, ...] = ()


def _default_gates() -> dict[str, ModelGate]:
    return {
        "eggplant-restorer": ModelGate(compare=(CompareRule(metric="output_psnr_region", margin=0.1),),
                                       floors=(FloorRule(metric="psnr_region_gain_db", min=0.0),)),
        "face-plate-detector": ModelGate(compare=(CompareRule(metric="AP50"),), floors=(FloorRule(metric="AP50", min=0.05),)),
        "mosaic-detector": ModelGate(compare=(CompareRule(metric="AP50"),), floors=(FloorRule(metric="AP50_gain_over_grid", min=0.0),)),
        "face-plate-anonymizer": ModelGate(
            compare=(CompareRule(metric="fid_image", better="lower", tolerance=5.0), CompareRule(metric="reid_rate", better="lower")),
            floors=(FloorRule(metric="reid_rate", max=0.1), FloorRule(metric="orig_text_read_rate", max=0.1),
                    FloorRule(metric="fake_text_char_acc", min=0.5), FloorRule(metric="map_retention", min=0.5))),
    }


class PromotionParams(_Strict):
    """`promoted_models`: rules that move a registered model's `champion` alias to its `challenger`."""

    models: dict[str, ModelGate] = Field(default_factory=_default_gates)

    @field_validator("models")
    @classmethod
    def _known_metrics(cls, models: dict[str, ModelGate]) -> dict[str, ModelGate]:
        from orchestration.model_metrics import REPORT_METRICS

        for name, gate in models.items():
            if name not in REPORT_METRICS:
                raise ValueError(f"promotion.models.{name}: no evaluation registers a model of that name "
                                 f"(known: {', '.join(sorted(REPORT_METRICS))})")
            known = REPORT_METRICS[name]
            for kind, rules in (("compare", gate.compare), ("floors", gate.floors)):
                for i, rule in enumerate(rules):
                    if rule.metric not in known:
                        raise ValueError(f"promotion.models.{name}.{kind}[{i}].metric = {rule.metric!r}: the "
                                         f"evaluation run of {name} logs no such metric (known: {', '.join(sorted(known))})")
        return models


class RetrainingParams(_Strict):
    """Dagster's schedule (retrain → evaluate → promote) and the sensor that runs the lineage on new clips."""

    cron: str = "0 3 * * 1"  # weekly, Monday 03:00
    timezone: str = "UTC"
    schedule_running: bool = True  # on by default once `dagster-daemon` runs; off = turn it on in the UI
    sensor_running: bool = True
    sensor_interval_s: Annotated[int, Field(ge=5)] = 30
    # A clip younger than this is probably still being copied in; the next tick picks it up.
    min_file_age_s: Annotated[float, Field(ge=0)] = 10.0

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(value) or len(value.split()) != 5:
            raise ValueError("not a 5-field cron expression (minute hour day-of-month month day-of-week), "
                             "e.g. '0 3 * * 1' for Mondays at 03:00")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone name (e.g. UTC, Europe/Berlin)") from None
        return value


class LockParams(_Strict):
    """The project lock every stage run takes, whichever engine starts it (orchestration/project_lock.py). No
    stage reads this section, so changing it re-runs nothing."""

    timeout_s: Annotated[float, Field(ge=0)] = 3600.0  # wait this long for another run, then stop naming it
    poll_s: Annotated[float, Field(gt=0, le=60)] = 2.0


class CacheParams(_Strict):
    """The per-clip store (assets/clip_cache.py) that lets a run compute only the clips whose inputs changed; no
    stage's output depends on it, so changing it re-runs nothing."""

    max_gb: Annotated[float, Field(ge=0)] = 20.0  # least recently used entries go once the store is larger


class TrainingParams(_Strict):
    """How the training stages are launched (orchestration/launcher.py): in the stage's own process (`none`), or
    data-parallel under `torchrun` / `accelerate launch` with `nproc_per_node` processes per machine (one per GPU;
    gloo processes on a CPU machine). The recipes' `batch_size` is per process, as in the recipes it comes from
    (BasicVSR++: 1 per GPU; torchvision's detection reference): the effective batch is batch_size x processes, and
    the learning rate is not rescaled (scale it by hand for the larger batch). No stage's output depends on it beyond float rounding
    (and, for the detector, the per-process normalisation of its loss: README), so changing it re-runs nothing."""

    launcher: Literal["none", "torchrun", "accelerate"] = "none"
    nproc_per_node: PositiveInt = 1
    nnodes: PositiveInt = 1
    node_rank: Annotated[int, Field(ge=0)] = 0  # this machine's index (accelerate's --machine_rank; torchrun finds it)
    rdzv_endpoint: str | None = None  # host:port of the first machine; required when nnodes > 1
    timeout_s: Annotated[float, Field(gt=0)] = 600.0  # a collective that waits longer (a rank died) fails the job

    @property
    def world(self) -> int:
        return self.nproc_per_node * self.nnodes if self.launcher != "none" else 1

    @model_validator(mode="after")
    def _multi_node(self):
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of the first machine, reachable from all)")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        return self


class Params(_Strict):
    profile: str = "embedded"
    seed: int = 1234
    data: DataParams = DataParams()
    detection: DetectionParams = DetectionParams()
    tracking: TrackingParams = TrackingParams()
    eggplant: EggplantParams = EggplantParams()
    mosaic: MosaicParams = MosaicParams()
    dataset: DatasetParams = DatasetParams()
    synthetic_scenes: SyntheticScenesParams = SyntheticScenesParams()
    restoration: RestorationParams = RestorationParams()
    restore: RestoreParams = RestoreParams()
    anonymize: AnonymizeParams = AnonymizeParams()
    coco: CocoParams = CocoParams()
    detector: DetectorParams = DetectorParams()
    mosaic_detector: MosaicDetectorParams = MosaicDetectorParams()
    anonymization: AnonymizationParams = AnonymizationParams()
    mlflow: TrackingServerParams = TrackingServerParams()
    promotion: PromotionParams = PromotionParams()
    retraining: RetrainingParams = RetrainingParams()
    lock: LockParams = LockParams()
    cache: CacheParams = CacheParams()
    training: TrainingParams = TrainingParams()


def _deep_merge(base: dict, overlay: dict, prefix: str = "") -> dict:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value, f"{prefix}{key}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (check the spelling against params.yaml)")
            continue
        shown = repr(item.get("input"))
        if len(shown) > 120:  # a whole section as "value" hides the message
            shown = f"{shown[:100]}…"
        allowed = item.get("ctx", {}).get("expected")
        message = item["msg"]
        detail = f"  - {key} = {shown}: {message}"
        if allowed and allowed not in message:
            detail += f" (allowed: {allowed})"
        lines.append(detail)
    return "\n".join(lines)


def resolve_profile(raw: dict, source: str = "params.yaml") -> dict:
    """Apply `profiles[profile]` over the body; "full" (or a profile with no overlay) applies nothing."""
    raw = dict(raw)
    profiles = raw.pop("profiles", {}) or {}
    profile = raw.get("profile", "embedded")
    if not isinstance(profiles, dict):
        raise ConfigError(f"{source}: profiles must be a mapping of name -> overrides, got {type(profiles).__name__}")
    if profile == "full":
        return raw
    if profile not in profiles:
        allowed = ", ".join(["full", *sorted(profiles)])
        raise ConfigError(f"{source}: profile = {profile!r} is not defined (allowed: {allowed})")
    return _deep_merge(raw, profiles[profile] or {})


def _validate(resolved: dict, source: str) -> Params:
    try:
        return Params.model_validate(resolved)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    return _validate(resolve_profile(raw, source), source)


def load_params(path: str | Path = DEFAULT_PARAMS_PATH, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params.yaml. `overrides` uses dotted keys ("tracking.iou_threshold": 0.4)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    overrides = dict(overrides or {})
    if "profile" in overrides:
        raw["profile"] = overrides.pop("profile")
    resolved = resolve_profile(raw, str(path))
    # Overrides land after the profile overlay, so they win over it (an override is the most specific ask).
    for dotted, value in overrides.items():
        node = resolved
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _validate(resolved, str(path))


def section(params: Params, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
