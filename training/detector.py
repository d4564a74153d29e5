"""The face/plate detector: torchvision detection models built offline, checkpoint I/O, inference.

Architectures (`ARCHS`)
- `fcos_resnet18_fpn`: torchvision's `FCOS` on a ResNet-18 FPN built the way torchvision builds
  `fcos_resnet50_fpn` (returned layers 2-4 → FPN in-channels 128/256/512, 256 out, extra P6/P7 from P5 by
  `LastLevelP6P7`). The embedded default: small enough to train on a CPU.
- `fasterrcnn_mobilenet_v3_large_fpn`, `retinanet_resnet50_fpn`: torchvision's own recipes (same anchors,
  extractors and heads as its builders; state-dict keys and shapes identical), for GPU boxes.

`fpn_channels` (default 256, torchvision's) sets the FPN and head width. FCOS' four 3x3 head convolutions
per branch at 256 channels are most of its cost on a CPU; 128 trains about twice as fast (bench/detector.py).
The FPN extractors are written out here (with the public `BackboneWithFPN`) because torchvision's private
ones fix the width at 256; they freeze the same layers and give the same keys.

Every model is built from classes, never through a builder that could reach a model hub: the classification
backbone is made with `weights=None`, the optional ImageNet weights come from a local file
(`pretrained_backbone`, e.g. torchvision's `resnet18-f37072fd.pth`), guarded by `assets.weights.verify_weights`
(missing file, Git-LFS pointer, checksum) and read with `torch.load(weights_only=True)`, then loaded
strictly into the backbone with an error that names the file and the mismatching keys.

Normalisation follows torchvision: a pretrained backbone gets `FrozenBatchNorm2d` and 3 trainable stages
(conv1/layer1 frozen), a random-init backbone gets ordinary `BatchNorm2d` and trains every stage. The choice
changes the state-dict keys (frozen BN has no `num_batches_tracked`), so it is stored in the checkpoint meta.

Labels: the COCO category ids of `assets.coco_records.CATEGORY_IDS` are the model's labels (face=1,
plate=2), `num_classes=3`. For Faster R-CNN label 0 is its background class; FCOS and RetinaNet score every
class with a sigmoid, so their class 0 is simply never a positive (its logit learns to stay low, a negligible
cost) — one label space for all three architectures, no id shifting anywhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from assets.coco_records import CATEGORY_IDS
from assets.detect import Detection

ARCHS = ("fcos_resnet18_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "retinanet_resnet50_fpn")
BACKBONE_FILES = {  # torchvision's ImageNet classification weights each architecture's backbone takes
    "fcos_resnet18_fpn": "resnet18-f37072fd.pth",
    "fasterrcnn_mobilenet_v3_large_fpn": "mobilenet_v3_large-8738ca79.pth",
    "retinanet_resnet50_fpn": "resnet50-0676ba61.pth",
}
CATEGORY_NAMES = {v: k for k, v in CATEGORY_IDS.items()}
INTERNAL_SCORE_THRESHOLD = 0.05  # what the model keeps before `predict` filters by the caller's threshold
FORMAT = "aubergine-detector/1"


class DetectorError(ValueError):
    pass


def _how_to_get(arch: str) -> str:
    return (f"put torchvision's ImageNet `{BACKBONE_FILES.get(arch, 'backbone')}` at the configured "
            "detector.pretrained_backbone path, or set it to null to start from random weights")


def read_weights(path: str | Path, sha256: str | None, how_to_get: str) -> dict:
    """A dict from a checked `.pth` file (guarded, `weights_only=True`), with errors naming the file."""
    from training.checkpoints import CheckpointError, read_checkpoint

    try:
        return read_checkpoint(path, sha256, how_to_get)
    except CheckpointError as err:  # same guard as the restorer's files, reported as a detector problem
        raise DetectorError(f"{err}; {how_to_get}") from None


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """The project's strict loader (training.checkpoints.load_strict), reported as a detector problem.
    BatchNorm's `num_batches_tracked` counters are not compared (FrozenBatchNorm2d drops them itself)."""
    from training.checkpoints import CheckpointError
    from training.checkpoints import load_strict as strict

    try:
        strict(module, sd, where, optional_suffixes=("num_batches_tracked",))
    except CheckpointError as err:
        raise DetectorError(str(err)) from None


def _load_backbone(classifier: nn.Module, arch: str, path: str | Path, sha256: str | None) -> None:
    how = _how_to_get(arch)
    data = read_weights(path, sha256, how)
    sd = data.get("state_dict", data) if isinstance(data.get("state_dict"), dict) else data
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    try:
        load_strict(classifier, sd, f"{path} (ImageNet backbone for {arch}; expected {BACKBONE_FILES[arch]})")
    except DetectorError as err:
        raise DetectorError(f"{err}; {how}") from None


@dataclass
class DetectorSpec:
    """Everything that decides a detector's structure; stored as the checkpoint's meta."""

    arch: str = "fcos_resnet18_fpn"
    num_classes: int = 3
    min_size: int = 512
    max_size: int = 853
    frozen_bn: bool = False  # True when built for a pretrained backbone (torchvision's convention)
    trainable_layers: int = 5
    fpn_channels: int = 256  # FPN and head width (torchvision's 256); 128 is ~3x cheaper for FCOS on a CPU
    categories: dict[str, int] = field(default_factory=lambda: dict(CATEGORY_IDS))

    def meta(self) -> dict:
        return {"format": FORMAT, "arch": self.arch, "num_classes": self.num_classes, "min_size": self.min_size,
                "max_size": self.max_size, "frozen_bn": self.frozen_bn, "trainable_layers": self.trainable_layers,
                "fpn_channels": self.fpn_channels, "categories": dict(self.categories)}

    @classmethod
    def from_meta(cls, meta: dict, where: str = "checkpoint") -> "DetectorSpec":
        try:
            return cls(arch=str(meta["arch"]), num_classes=int(meta["num_classes"]), min_size=int(meta["min_size"]),
                       max_size=int(meta["max_size"]), frozen_bn=bool(meta.get("frozen_bn", False)),
                       trainable_layers=int(meta.get("trainable_layers", 5)),
                       fpn_channels=int(meta.get("fpn_channels", 256)),
                       categories={str(k): int(v) for k, v in (meta.get("categories") or CATEGORY_IDS).items()})
        except (KeyError, TypeError, ValueError) as err:
            raise DetectorError(f"{where}: not a detector checkpoint: meta lacks or mangles {err} "
                                f"(has: {', '.join(sorted(meta)) or 'nothing'})") from None


def build_detector(
    arch: str,
    num_classes: int = 3,
    pretrained_backbone: str | Path | None = None,
    sha256: str | None = None,
    min_size: int = 512,
    max_size: int = 853,
    *,
    frozen_bn: bool | None = None,
    trainable_layers: int | None = None,
    fpn_channels: int = 256,
    categories: dict[str, int] | None = None,
) -> nn.Module:
    """A torchvision detector; random init unless `pretrained_backbone` names a local ImageNet file.
    `categories` (name -> label, default face/plate) is what its labels mean; the mosaic detector has one.

    `frozen_bn` / `trainable_layers` default to torchvision's choice (frozen BN and 3 trainable stages with a
    pretrained backbone; BatchNorm2d and every stage without). `fpn_channels` is the FPN/head width
    (torchvision's 256). The built model carries `model.spec`."""
    if arch not in ARCHS:
        raise DetectorError(f"unknown detector arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if num_classes < 2:
        raise DetectorError(f"num_classes must be >= 2 (labels are COCO category ids, 0 unused), got {num_classes}")
    from torchvision.ops import misc as misc_nn_ops

    pretrained = pretrained_backbone is not None
    frozen_bn = pretrained if frozen_bn is None else frozen_bn
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    max_layers = 6 if arch.startswith("fasterrcnn_mobilenet") else 5
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else max_layers
    if not 0 <= trainable_layers <= max_layers:
        raise DetectorError(f"{arch}: trainable_layers must be in 0..{max_layers}, got {trainable_layers}")
    if fpn_channels < 8 or (arch != "fasterrcnn_mobilenet_v3_large_fpn" and fpn_channels % 32):
        raise DetectorError(f"{arch}: fpn_channels must be a multiple of 32 (GroupNorm in the head), got {fpn_channels}")
    categories = dict(categories or CATEGORY_IDS)
    if not categories or min(categories.values()) < 1 or max(categories.values()) >= num_classes:
        raise DetectorError(f"categories {categories} need labels in 1..{num_classes - 1} (num_classes={num_classes})")
    spec = DetectorSpec(arch, num_classes, int(min_size), int(max_size), frozen_bn, trainable_layers, int(fpn_channels),
                        categories)
    model = _build(spec, norm_layer, pretrained_backbone, sha256)
    model.spec = spec
    return model


def _resnet_fpn(classifier: nn.Module, trainable_layers: int, channels: int) -> nn.Module:
    """torchvision's `_resnet_fpn_extractor` (layers 2-4, P6/P7 from P5) with the FPN width as a knob."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers] + (["bn1"] if trainable_layers == 5 else [])
    for name, p in classifier.named_parameters():
        if not any(name.startswith(layer) for layer in train):
            p.requires_grad_(False)
    stage2 = classifier.inplanes // 8  # 64 for resnet18 (basic blocks), 256 for resnet50 (bottlenecks)
    returned = [2, 3, 4]
    return BackboneWithFPN(classifier, {f"layer{k}": str(v) for v, k in enumerate(returned)},
                           [stage2 * 2 ** (i - 1) for i in returned], channels, extra_blocks=LastLevelP6P7(channels, channels))


def _mobilenet_fpn(classifier: nn.Module, trainable_layers: int, channels: int) -> nn.Module:
    """torchvision's `_mobilenet_extractor(fpn=True)` (the last two stages) with the FPN width as a knob."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    features = classifier.features
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    freeze_before = len(features) if trainable_layers == 0 else stages[len(stages) - trainable_layers]
    for block in features[:freeze_before]:
        for p in block.parameters():
            p.requires_grad_(False)
    returned = [len(stages) - 2, len(stages) - 1]
    return BackboneWithFPN(features, {f"{stages[k]}": str(v) for v, k in enumerate(returned)},
                           [features[stages[i]].out_channels for i in returned], channels, extra_blocks=LastLevelMaxPool())


def _build(spec: DetectorSpec, norm_layer, pretrained_backbone, sha256) -> nn.Module:
    from torchvision.models import mobilenet_v3_large, resnet18, resnet50
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = {"min_size": spec.min_size, "max_size": spec.max_size}
    # weights=None everywhere: no enum, no download (fasterrcnn_mobilenet_v3_large_fpn's builder would
    # otherwise fetch ImageNet weights by default).
    if spec.arch in ("fcos_resnet18_fpn", "retinanet_resnet50_fpn"):
        classifier = (resnet18 if spec.arch == "fcos_resnet18_fpn" else resnet50)(weights=None, norm_layer=norm_layer)
        if pretrained_backbone is not None:
            _load_backbone(classifier, spec.arch, pretrained_backbone, sha256)
        backbone = _resnet_fpn(classifier, spec.trainable_layers, spec.fpn_channels)
        if spec.arch == "fcos_resnet18_fpn":
            return FCOS(backbone, spec.num_classes, score_thresh=INTERNAL_SCORE_THRESHOLD, **sizes)
        return RetinaNet(backbone, spec.num_classes, score_thresh=INTERNAL_SCORE_THRESHOLD, **sizes)
    classifier = mobilenet_v3_large(weights=None, norm_layer=norm_layer)
    if pretrained_backbone is not None:
        _load_backbone(classifier, spec.arch, pretrained_backbone, sha256)
    backbone = _mobilenet_fpn(classifier, spec.trainable_layers, spec.fpn_channels)
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    return FasterRCNN(backbone, spec.num_classes, rpn_anchor_generator=anchors, rpn_score_thresh=0.05,
                      box_score_thresh=INTERNAL_SCORE_THRESHOLD, **sizes)


def spec_of(model: nn.Module) -> DetectorSpec:
    spec = getattr(model, "spec", None)
    if not isinstance(spec, DetectorSpec):
        raise DetectorError(f"{type(model).__name__} was not made by build_detector (no .spec)")
    return spec


# ---------------------------------------------------------------------------------------- checkpoints


def detector_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_detector(model: nn.Module, dest: str | Path, meta: dict | None = None) -> Path:
    """An inference file (no optimiser state): `{"meta": spec + extra, "state_dict": …}`, written atomically."""
    from training.checkpoints import save_atomic

    return save_atomic({"meta": {**(meta or {}), **spec_of(model).meta()}, "state_dict": detector_state(model)}, dest)


def load_detector(path: str | Path, sha256: str | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the detector from a checkpoint's meta (training `latest.pth` or `save_detector` file) and load
    its weights strictly; returns (model in eval mode, meta)."""
    data = read_weights(path, sha256, "materialize detector_checkpoint first (or point at a detector .pth)")
    meta = data.get("meta")
    if not isinstance(meta, dict) or "arch" not in meta:
        keys = ", ".join(list(data)[:5])
        raise DetectorError(f"{path}: not a detector checkpoint (no meta with an arch; top-level keys: {keys})")
    spec = DetectorSpec.from_meta(meta, str(path))
    model = build_detector(spec.arch, spec.num_classes, None, None, spec.min_size, spec.max_size,
                           frozen_bn=spec.frozen_bn, trainable_layers=spec.trainable_layers,
                           fpn_channels=spec.fpn_channels, categories=spec.categories)
    sd = data.get("state_dict")
    if not isinstance(sd, dict):
        raise DetectorError(f"{path}: no state_dict in the checkpoint")
    load_strict(model, sd, f"{path} ({spec.arch})")
    return model.to(device).eval(), dict(meta)


# ------------------------------------------------------------------------------------------ inference


@contextlib.contextmanager
def score_threshold_set(model: nn.Module, threshold: float) -> Iterator[None]:
    """The model's own post-processing threshold, lowered or raised for one call."""
    holder = model.roi_heads if hasattr(model, "roi_heads") else model
    old = holder.score_thresh
    holder.score_thresh = float(threshold)
    try:
        yield
    finally:
        holder.score_thresh = old


def to_tensor(image: np.ndarray) -> torch.Tensor:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DetectorError(f"images must be RGB uint8 arrays (H, W, 3), got {got}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def raw_predict(model: nn.Module, tensors: list[torch.Tensor], score_threshold: float, batch_size: int = 4) -> list[dict]:
    """torchvision outputs (boxes xyxy, labels, scores on CPU) for CHW float tensors, model left as it was."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    out: list[dict] = []
    try:
        with score_threshold_set(model, score_threshold):
            for i in range(0, len(tensors), batch_size):
                for res in model([t.to(device) for t in tensors[i:i + batch_size]]):
                    keep = res["scores"] >= score_threshold
                    out.append({k: v[keep].cpu() for k, v in res.items()})
    finally:
        model.train(was_training)
    return out


def predict(model: nn.Module, images: list[np.ndarray], score_threshold: float = 0.3, batch_size: int = 4) -> list[list[dict]]:
    """Per image, detections as `{"category": "face"|"plate", "category_id": int, "bbox": [x, y, w, h], "score"}`
    in the image's pixel coordinates, best first. Labels outside the categories (0) and empty boxes are never
    reported."""
    names = {v: k for k, v in getattr(getattr(model, "spec", None), "categories", CATEGORY_IDS).items()}
    results = raw_predict(model, [to_tensor(im) for im in images], score_threshold, batch_size)
    out = []
    for res in results:
        dets = []
        for box, label, score in zip(res["boxes"].tolist(), res["labels"].tolist(), res["scores"].tolist()):
            x0, y0, x1, y1 = box
            if int(label) not in names or x1 <= x0 or y1 <= y0:
                continue  # label 0 (background / FCOS' and RetinaNet's unused slot), or an empty box
            dets.append({"category": names[int(label)], "category_id": int(label),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
        out.append(sorted(dets, key=lambda d: -d["score"]))
    return out


class DetectorRegions:
    """The trained detector as a region detector (`assets.detect.Detector`): `(frame RGB uint8, index)` →
    `Detection(kind, (x0, y0, x1, y1) in frame pixels, score)`; `kinds` limits what is reported."""

    def __init__(self, model: nn.Module, score_threshold: float = 0.3, kinds: tuple[str, ...] = ("face", "plate")):
        self.model = model.eval()
        self.score_threshold = float(score_threshold)
        self.kinds = tuple(kinds)

    @classmethod
    def from_checkpoint(cls, path: str | Path, score_threshold: float = 0.3, device: str = "auto",
                        sha256: str | None = None, kinds: tuple[str, ...] = ("face", "plate")) -> "DetectorRegions":
        from training.restorer import pick_device

        model, _ = load_detector(path, sha256, pick_device(device))
        return cls(model, score_threshold, kinds)

    def __call__(self, frame: np.ndarray, index: int) -> list[Detection]:
        return self.detect_batch([frame], [index])[0]

    def detect_batch(self, frames: list[np.ndarray], indices: list[int]) -> list[list[Detection]]:
        """One forward pass over the frames (restore's `--mosaic-detection-batch-size`)."""
        out = []
        for frame, dets in zip(frames, predict(self.model, frames, self.score_threshold, max(1, len(frames)))):
            h, w = frame.shape[:2]
            found = []
            for det in dets:
                if det["category"] not in self.kinds:
                    continue
                x, y, bw, bh = det["bbox"]
                box = (max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh))
                if box[2] > box[0] and box[3] > box[1]:
                    found.append(Detection(det["category"], box, det["score"]))
            out.append(found)
        return out


_LOADED: dict = {}


def trained_regions(path: str | Path, score_threshold: float, kinds: tuple[str, ...]) -> DetectorRegions:
    """The detector trained by `detector_checkpoint` as a region detector, loaded once per process and file
    (`assets.detect.build_detector` takes this as its `trained` loader)."""
    from assets.weights import verify_weights

    key = (str(path), score_threshold, kinds)
    if key not in _LOADED:
        verify_weights(path, None, "copy data/models/detector/detector.pth there after materializing detector_checkpoint")
        _LOADED[key] = DetectorRegions.from_checkpoint(path, score_threshold, device="cpu", kinds=kinds)
    return _LOADED[key]


def evaluate_coco(model: nn.Module, coco_json: str | Path, image_root: str | Path, score_threshold: float = 0.0,
                  batch_size: int = 4, progress: bool = False) -> list[dict]:
    """Detections on every image of a COCO file, in COCO results format (`image_id, category_id, bbox xywh,
    score`) with the category ids of that file (matched by name), for `evaluation.detection_map.coco_map`."""
    from tqdm import tqdm

    from training.detector_data import CocoBoxes

    data = CocoBoxes(coco_json, image_root, categories=getattr(model, "spec", DetectorSpec()).categories)
    label_to_file_id = {label: cid for cid, label in data.label_of.items()}
    out: list[dict] = []
    for i in tqdm(range(0, len(data), batch_size), desc="detect", unit="batch", disable=not progress):
        idx = list(range(i, min(i + batch_size, len(data))))
        results = raw_predict(model, [data.load_image(j) for j in idx], score_threshold, batch_size)
        for j, res in zip(idx, results):
            for box, label, score in zip(res["boxes"].tolist(), res["labels"].tolist(), res["scores"].tolist()):
                if int(label) not in label_to_file_id:
                    continue  # a label the file has no category for (e.g. plates on a faces-only set)
                x0, y0, x1, y1 = box
                out.append({"image_id": data.images[j]["id"], "category_id": label_to_file_id[int(label)],
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "score": round(float(score), 5)})
    return out
