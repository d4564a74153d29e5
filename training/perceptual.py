"""VGG19 perceptual loss with mmagic's `PerceptualLoss` semantics (perceptual term only, no style term).

loss = perceptual_weight * sum_k layer_weights[k] * criterion(vgg.features[:k+1](x), same(gt)),
with x, gt in [0, 1], ImageNet mean/std normalisation, VGG frozen and in eval mode.

Weights: torchvision's `vgg19-dcbb9e9d.pth` (a full VGG19 state dict, `features.N.*` keys) or a file holding
only the features. They are not available offline, so `vgg_weights=None` builds a seeded random-init VGG19
and says so in `weights_label`; every report must carry that label.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from assets.weights import WeightsError, sha256_file, verify_weights

DEFAULT_LAYER_WEIGHTS: dict[str, float] = {"2": 0.1, "7": 0.1, "16": 1.0, "25": 1.0, "34": 1.0}
VGG19_NUM_FEATURES = 37  # len(torchvision.models.vgg19().features): valid layer keys are '0'..'36'
CANONICAL_FILE = "vgg19-dcbb9e9d.pth"
HOW_TO_GET = (
    f"download torchvision's {CANONICAL_FILE} (https://download.pytorch.org/models/{CANONICAL_FILE}) "
    "on a machine with network access and pass its path as vgg_weights"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _parse_layers(layer_weights: dict[str, float]) -> dict[str, float]:
    if not layer_weights:
        raise ValueError("layer_weights is empty: name at least one VGG19 features index ('0'..'36')")
    for key in layer_weights:
        try:
            idx = int(key)
        except (TypeError, ValueError):
            idx = -1
        if not 0 <= idx < VGG19_NUM_FEATURES or str(idx) != str(key):
            raise ValueError(
                f"layer_weights key {key!r} is not a VGG19 features index (expected '0'..'{VGG19_NUM_FEATURES - 1}')"
            )
    return {str(k): float(v) for k, v in layer_weights.items()}


def _vgg19_features() -> nn.Sequential:
    """torchvision's VGG19 `features` (same modules and indices as `vgg19(weights=None).features`).

    Built without the 120M-parameter classifier, which costs seconds to initialise and is never used;
    the conv init is torchvision's VGG init (Kaiming normal, fan_out, zero bias).
    """
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"], batch_norm=False)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.ReLU):
            # Requested layers may be convs followed by an in-place ReLU that would overwrite the captured
            # activation (mmagic clones instead; out-of-place costs no more than the clone).
            m.inplace = False
    return features


def _features_state(path: Path) -> dict[str, torch.Tensor]:
    """Features-only state dict (`N.weight`) from a full torchvision file or a features-only one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's unpickling errors do not say which file they were reading
        raise WeightsError(f"{path}: cannot be read as a torch state dict ({err}); {HOW_TO_GET}") from err
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(state).__name__}; {HOW_TO_GET}")
    if any(k.startswith("features.") for k in state):
        return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    return dict(state)


class VGG19Features(nn.Module):
    """Frozen VGG19 `features`, truncated after the deepest requested layer; returns {key: activation}."""

    def __init__(
        self,
        layers: list[str],
        vgg_weights: str | Path | None = None,
        use_input_norm: bool = True,
        channel_order: str = "bgr",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        self.layers = [str(k) for k in _parse_layers({k: 1.0 for k in layers})]
        self.use_input_norm = use_input_norm
        self.channel_order = channel_order

        if vgg_weights is None:
            # Seeded so two runs of the embedded default see the same "perceptual" space.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                features = _vgg19_features()
            self.pretrained = False
            self.weights_label = f"random-init VGG19 seed={seed} (embedded default: no ImageNet weights offline)"
        else:
            features = _vgg19_features()
            path = verify_weights(vgg_weights, sha256=None, how_to_get=HOW_TO_GET)
            if path.name == CANONICAL_FILE:
                self._check_canonical_prefix(path)
            try:
                features.load_state_dict(_features_state(path), strict=True)
            except RuntimeError as err:
                raise WeightsError(f"{path}: not a VGG19 state dict ({err}); {HOW_TO_GET}") from err
            self.pretrained = True
            self.weights_label = f"VGG19 from {path.name}"

        depth = max(int(k) for k in self.layers) + 1
        self.vgg_layers = features[:depth]
        for p in self.vgg_layers.parameters():
            p.requires_grad_(False)
        # Persistent, like mmagic's PerceptualVGG: a full mmagic model state dict then maps key for key
        # (`perceptual_loss.vgg.vgg_layers.N.*`, `perceptual_loss.vgg.mean`, `.std`).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval()

    @staticmethod
    def _check_canonical_prefix(path: Path) -> None:
        # torchvision names its files by the first 8 hex digits of the sha256: a mismatch means a bad download.
        digest = sha256_file(path)
        prefix = CANONICAL_FILE.split("-")[1].split(".")[0]
        if not digest.startswith(prefix):
            raise WeightsError(
                f"{path}: sha256 {digest[:12]}… does not start with {prefix} as torchvision's "
                f"{CANONICAL_FILE} must: truncated or wrong file; {HOW_TO_GET}"
            )

    def train(self, mode: bool = True) -> "VGG19Features":
        # The loss network stays in eval mode even when the trainer calls .train() on its parent.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channel_order == "bgr":
            x = x.flip(1)  # Lada's frames are BGR; ImageNet statistics are RGB
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for name, module in self.vgg_layers.named_children():
            x = module(x)
            if name in self.layers:
                out[name] = x
        return out


class PerceptualLoss(nn.Module):
    """mmagic-style perceptual loss; `forward(x, gt)` returns a scalar tensor."""

    def __init__(
        self,
        layer_weights: dict[str, float] | None = None,
        vgg_weights: str | Path | None = None,
        use_input_norm: bool = True,
        criterion: str = "l1",
        perceptual_weight: float = 1.0,
        channel_order: str = "bgr",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.layer_weights = _parse_layers(dict(DEFAULT_LAYER_WEIGHTS if layer_weights is None else layer_weights))
        self.perceptual_weight = float(perceptual_weight)
        criteria = {"l1": nn.L1Loss, "mse": nn.MSELoss}
        if criterion.lower() not in criteria:
            raise ValueError(f"criterion must be one of {sorted(criteria)}, got {criterion!r}")
        self.criterion = criteria[criterion.lower()]()
        self.vgg = VGG19Features(
            list(self.layer_weights),
            vgg_weights=vgg_weights,
            use_input_norm=use_input_norm,
            channel_order=channel_order,
            seed=seed,
        )

    @property
    def pretrained(self) -> bool:
        return self.vgg.pretrained

    @property
    def weights_label(self) -> str:
        return self.vgg.weights_label

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        x_feats = self.vgg(x)
        with torch.no_grad():  # the target needs no graph: saves the activations' memory
            gt_feats = self.vgg(gt)
        loss = x.new_zeros(())
        for key, weight in self.layer_weights.items():
            loss = loss + self.criterion(x_feats[key], gt_feats[key]) * weight
        return loss * self.perceptual_weight
