"""Checkpoint files: Lada/mmagic weights in, our training state out, Lada-loadable files exported.

Formats handled
- Lada's released restoration model and mmengine checkpoints: `{"state_dict": {"generator.<key>": …,
  "generator_ema.<key>": …, ["discriminator.<key>": …]}, "meta": …}`; the EMA generator is preferred, as Lada's
  inference config (`is_use_ema=True`) does.
- A bare generator state dict (mmagic's `BasicVSRPlusPlusNet` keys without prefix).
- Our training checkpoints: the same `state_dict` layout plus `meta` (architecture, stage, iteration),
  `optimizers` and `rng`, so that one file serves both resume and Lada.

Every load goes through `assets.weights.verify_weights` (missing file, Git-LFS pointer, checksum) and
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json

import copy
import re
from pathlib import Path

import torch

from assets.atomic import atomic_path
from assets.weights import verify_weights
from training.basicvsrpp import BasicVSRPlusPlusNet

HOW_TO_GET = (
    "put Lada's `lada_mosaic_restoration_model_generic_v1.2.pth` (from the Lada release) at the configured path, "
    "or set restoration.stage1.load_from: null to start from random weights"
)
PREFIXES = ("generator_ema.", "generator.")


class CheckpointError(ValueError):
    pass


def read_checkpoint(path: str | Path, sha256: str | None = None, how_to_get: str = HOW_TO_GET) -> dict:
    path = verify_weights(path, sha256, how_to_get)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors come in many types; the file is what matters
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    return data


def state_dict_of(data: dict) -> dict[str, torch.Tensor]:
    sd = data.get("state_dict", data)
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def split_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def generator_state(sd: dict[str, torch.Tensor], prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """The generator's weights from a Lada/mmengine file or a bare state dict, and which part was taken."""
    order = PREFIXES if prefer_ema else PREFIXES[::-1]
    for prefix in order:
        part = split_prefix(sd, prefix)
        if part:
            return part, prefix.rstrip(".")
    if any(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        return split_prefix(sd, "module."), "module"
    return dict(sd), "bare"


def infer_config(gen_sd: dict[str, torch.Tensor], where: str = "checkpoint") -> dict:
    """mid_channels and num_blocks from the tensors themselves, so a file needs no side-car config."""
    try:
        mid = int(gen_sd["feat_extract.0.weight"].shape[0])
    except KeyError:
        raise CheckpointError(
            f"{where}: no `feat_extract.0.weight`: not a BasicVSR++ generator "
            f"(first keys: {', '.join(list(gen_sd)[:5]) or 'none'})"
        ) from None
    pattern = re.compile(r"^backbone\.backward_1\.main\.2\.(\d+)\.conv1\.weight$")
    blocks = [int(m.group(1)) for k in gen_sd if (m := pattern.match(k))]
    return {"mid_channels": mid, "num_blocks": (max(blocks) + 1) if blocks else 0}


def load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], where: str,
                optional_suffixes: tuple[str, ...] = ()) -> None:
    """load_state_dict(strict=True) with an error that lists what is missing, unexpected or mis-shaped.

    Keys ending in `optional_suffixes` (e.g. BatchNorm's `num_batches_tracked`, which FrozenBatchNorm2d drops)
    are neither required nor unexpected; when absent from `sd` the model keeps its own values."""
    own = model.state_dict()

    def counted(k: str) -> bool:
        return not k.endswith(optional_suffixes) if optional_suffixes else True

    missing = [k for k in own if k not in sd and counted(k)]
    unexpected = [k for k in sd if k not in own and counted(k)]
    shapes = [f"{k}: {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" … (+{len(items) - 8})" if len(items) > 8 else "") if items else "none"
        raise CheckpointError(
            f"{where}: does not match {type(model).__name__}: {len(missing)} missing keys ({head(missing)}); "
            f"{len(unexpected)} unexpected keys ({head(unexpected)}); {len(shapes)} shape mismatches ({head(shapes)})"
        )
    if optional_suffixes:
        sd = {**{k: v for k, v in own.items() if k not in sd}, **{k: v for k, v in sd.items() if k in own}}
    model.load_state_dict(sd, strict=True)


def load_generator(
    path: str | Path, sha256: str | None = None, prefer_ema: bool = True, model: BasicVSRPlusPlusNet | None = None,
    how_to_get: str = HOW_TO_GET,
) -> tuple[BasicVSRPlusPlusNet, dict]:
    """A BasicVSR++ built to the file's own size (or the given model) with its weights loaded strictly.
    `how_to_get` finishes the message when the file is missing: it differs for training and inference."""
    data = read_checkpoint(path, sha256, how_to_get)
    gen, part = generator_state(state_dict_of(data), prefer_ema)
    config = infer_config(gen, str(path))
    if model is None:
        model = BasicVSRPlusPlusNet(config["mid_channels"], max(config["num_blocks"], 1))
    load_strict(model, gen, f"{path} ({part} weights)")
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    return model, {**config, "part": part, "meta": meta}


LADA_INPUT_SIZE = 256  # Lada's files record no size; its network is trained and run at 256 px


def input_size_of(meta: dict) -> int:
    """The square input side a generator was trained at, from its file's meta (ours record `input_size`)."""
    size = meta.get("input_size") if isinstance(meta, dict) else None
    return int(size) if isinstance(size, (int, float)) and size > 0 else LADA_INPUT_SIZE


def load_spynet(model: BasicVSRPlusPlusNet, path: str | Path, sha256: str | None = None) -> None:
    """mmagic's pretrained SPyNet file (keys `basic_module.*`, optionally under `state_dict`)."""
    data = read_checkpoint(path, sha256, "put mmagic's spynet_20210409-c6c1bd09.pth at the configured path")
    sd = state_dict_of(data)
    sd = split_prefix(sd, "spynet.") or split_prefix(sd, "generator.spynet.") or sd
    own = model.spynet.state_dict()
    for buffer in ("mean", "std"):  # some SPyNet files predate the normalisation buffers
        sd.setdefault(buffer, own[buffer])
    load_strict(model.spynet, sd, f"{path} (SPyNet)")


def lada_state_dict(generator: torch.nn.Module, ema: torch.nn.Module | None = None,
                    discriminator: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    sd = {f"generator.{k}": v.detach().cpu().clone() for k, v in generator.state_dict().items()}
    sd.update({f"generator_ema.{k}": v.detach().cpu().clone() for k, v in (ema or generator).state_dict().items()})
    if discriminator is not None:
        sd.update({f"discriminator.{k}": v.detach().cpu().clone() for k, v in discriminator.state_dict().items()})
    return sd


def save_atomic(obj: dict, dest: str | Path) -> Path:
    with atomic_path(dest) as tmp:
        torch.save(obj, tmp)
    return Path(dest)


LADA_DEFAULT_SIZE = (64, 15)  # (mid_channels, num_blocks) Lada builds when it is given no config file


def lada_config_path(weights: str | Path) -> Path:
    """Where the Lada config of a weights file lives: beside it, `<stem>_lada_config.py`."""
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}_lada_config.py")


def lada_config_text(mid_channels: int, num_blocks: int, weights_name: str) -> str:
    """An mmengine config (what Lada's `load_model` reads with `Config.fromfile(path).model`) that builds the
    BasicVSR++ GAN wrapper of Lada's inference at these sizes; `is_use_ema` picks the `generator_ema.` weights."""
    return f"""# Lada model config for {weights_name}: BasicVSR++ with mid_channels={mid_channels}, num_blocks={num_blocks}.
# Written by aubergine. Lada builds 64 channels / 15 blocks without a config and loads non-strictly, so a file of
# another size must come with this one:
#   lada-cli --mosaic-restoration-model-path {weights_name} --mosaic-restoration-config-path {lada_config_path(weights_name).name} ...
model = dict(
    type='BasicVSRPlusPlusGan',
    generator=dict(type='BasicVSRPlusPlusGanNet', mid_channels={mid_channels}, num_blocks={num_blocks}, spynet_pretrained=None),
    pixel_loss=dict(type='CharbonnierLoss', loss_weight=1.0, reduction='mean'),
    is_use_ema=True,
    data_preprocessor=dict(type='DataPreprocessor', mean=[0.0, 0.0, 0.0], std=[255.0, 255.0, 255.0]),
)
"""


def write_lada_config(weights: str | Path, mid_channels: int, num_blocks: int) -> Path:
    dest = lada_config_path(weights)
    with atomic_path(dest) as tmp:
        Path(tmp).write_text(lada_config_text(mid_channels, num_blocks, Path(weights).name))
    return dest


def export_lada(generator: BasicVSRPlusPlusNet, dest: str | Path, ema: BasicVSRPlusPlusNet | None = None,
                meta: dict | None = None) -> Path:
    """A file Lada's CLI loads (mmengine `load_checkpoint` into its BasicVSRPlusPlusGan: `generator.` and
    `generator_ema.` keys under `state_dict`), and its Lada config file beside it (`lada_config_path`).
    Optimiser and RNG state stay out: it is for inference."""
    save_atomic({"meta": {**generator.config, **(meta or {})}, "state_dict": lada_state_dict(generator, ema)}, dest)
    write_lada_config(dest, generator.mid_channels, generator.num_blocks)
    return Path(dest)


def convert_stage1_to_stage2(src: str | Path, dest: str | Path) -> dict:
    """Stage 2 starts from Stage 1's generator: both `generator.` and `generator_ema.` become copies of it
    (the EMA starts where the generator is), no optimiser state is carried over, the iteration restarts at 0."""
    data = read_checkpoint(src, None, "materialize stage1_checkpoint first")
    gen, part = generator_state(state_dict_of(data), prefer_ema=False)
    config = infer_config(gen, str(src))
    sd = {f"generator.{k}": v for k, v in gen.items()}
    sd.update({f"generator_ema.{k}": v.clone() for k, v in gen.items()})
    source_meta = data.get("meta") or {}
    meta = {"arch": "BasicVSRPlusPlusNet", **config, "converted_from": str(src), "source_part": part,
            "source_iteration": source_meta.get("iteration"),
            **({"input_size": source_meta["input_size"]} if "input_size" in source_meta else {})}
    save_atomic({"meta": meta, "state_dict": sd}, dest)
    return meta


def clone_frozen(model: torch.nn.Module) -> torch.nn.Module:
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema.eval()


def stand_in_base(load_from: str | Path | None) -> dict | None:
    """The `base.json` beside a Stage 1 `load_from` file when that file is the embedded default's set-up
    pretrained stand-in (training/restoration_base.py), else None (Lada's weights, or a user's checkpoint)."""
    if not load_from:
        return None
    marker = Path(load_from).parent / "base.json"
    if not marker.is_file():
        return None
    try:
        doc = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return doc if "restoration base" in str(doc.get("about", "")) else None
