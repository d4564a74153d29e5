"""The anonymizer's generator: an SD2 (or SDXL) inpainting UNet with LoRA adapters on chosen blocks.

Everything is loaded from a local diffusers folder (the real model, downloaded elsewhere, or the tiny random
base of tiny_base.py) with `from_pretrained`; nothing is fetched at run time. LoRA files are written in
diffusers' format so a stock pipeline reads them with `load_lora_weights`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from assets.weights import LFS_POINTER_PREFIX, WeightsError, sha256_file

Variant = Literal["sd2", "sdxl"]

REAL_MODEL_ID: dict[str, str] = {
    "sd2": "stabilityai/stable-diffusion-2-inpainting",
    "sdxl": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
}
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# Written by tiny_base into the random stand-in's folder. Kept here, not there, so importing this module
# (e.g. to check a folder from orchestration) does not import diffusers.
TINY_MARKER = "aubergine_tiny_base.json"
LORA_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")

# component folder -> weights file stems, in the order from_pretrained prefers them
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_COMPONENTS: dict[str, dict[str, tuple[str, ...]]] = {
    "sd2": {"unet": _DIFFUSERS_WEIGHTS, "vae": _DIFFUSERS_WEIGHTS, "text_encoder": _TRANSFORMERS_WEIGHTS},
    "sdxl": {
        "unet": _DIFFUSERS_WEIGHTS,
        "vae": _DIFFUSERS_WEIGHTS,
        "text_encoder": _TRANSFORMERS_WEIGHTS,
        "text_encoder_2": _TRANSFORMERS_WEIGHTS,
    },
}
_TOKENIZERS = {"sd2": ("tokenizer",), "sdxl": ("tokenizer", "tokenizer_2")}


class GeneratorWeightsError(WeightsError):
    """The generator's model folder is unusable; the message names the file and how to fix it."""


class GeneratorConfigError(ValueError):
    """A generator setting (learnable layers, LoRA rank, precision, variant) is invalid."""


# ------------------------------------------------------------------------------------------ model folder


def _fix_hint(model_dir: Path, variant: str) -> str:
    if (model_dir / TINY_MARKER).is_file():
        return ("this is the embedded tiny random base: delete the folder and write it again "
                "(training.anonymizer.tiny_base)")
    model_id = REAL_MODEL_ID[variant]
    return (f"on a machine with hub access download {model_id} into it (e.g. `huggingface-cli download "
            f"{model_id} --local-dir {model_dir}`, or `git lfs pull` in a clone) and copy the folder here, "
            "or leave generator.model_dir at the embedded tiny base")


def _check_variant(variant: str) -> None:
    if variant not in _COMPONENTS:
        raise GeneratorConfigError(f"generator variant {variant!r}: expected one of {sorted(_COMPONENTS)}")


def _read_json(path: Path, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise GeneratorWeightsError(f"{path}: missing; {hint}")
    if _is_lfs_pointer(path):
        raise GeneratorWeightsError(f"{path}: a Git LFS pointer, not the file; {hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GeneratorWeightsError(f"{path}: not valid JSON ({e}); {hint}") from None


def _is_lfs_pointer(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX


def _weights_files(folder: Path, names: tuple[str, ...], hint: str) -> list[Path]:
    """The weights file(s) from_pretrained will read in `folder` (all shards when sharded)."""
    for name in names:
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index, hint).get("weight_map", {}).values()))
            return [folder / s for s in shards]
        if (folder / name).is_file():
            return [folder / name]
    raise GeneratorWeightsError(f"{folder}: no weights file (expected {' or '.join(names)}); {hint}")


@dataclass(frozen=True)
class ModelDirInfo:
    model_dir: Path
    variant: str
    tiny_random: bool  # the embedded random stand-in: its numbers must be labelled as such
    weights: tuple[Path, ...]


def check_model_dir(
    model_dir: str | os.PathLike, variant: Variant = "sd2", sha256: dict[str, str] | None = None
) -> ModelDirInfo:
    """Fail early, naming the file, when `model_dir` is not a loadable inpainting folder of `variant`.

    `sha256` maps paths relative to `model_dir` to their expected digests (checked when given).
    """
    _check_variant(variant)
    root = Path(model_dir)
    hint = _fix_hint(root, variant)
    if not root.is_dir():
        raise GeneratorWeightsError(f"{root}: generator model folder does not exist; {hint}")
    index = _read_json(root / "model_index.json", hint)
    is_xl = "XL" in str(index.get("_class_name", ""))
    if is_xl != (variant == "sdxl"):
        raise GeneratorWeightsError(
            f"{root / 'model_index.json'}: a {index.get('_class_name')} folder, but the generator variant is "
            f"{variant!r}; set the variant to {'sdxl' if is_xl else 'sd2'} or point model_dir at a {variant} model"
        )
    weights: list[Path] = []
    for component, names in _COMPONENTS[variant].items():
        folder = root / component
        if not folder.is_dir():
            raise GeneratorWeightsError(f"{folder}: component folder missing; {hint}")
        _read_json(folder / "config.json", hint)
        for path in _weights_files(folder, names, hint):
            if not path.is_file():
                raise GeneratorWeightsError(f"{path}: weights shard missing; {hint}")
            if _is_lfs_pointer(path):
                raise GeneratorWeightsError(f"{path}: a Git LFS pointer, not the weights; {hint}")
            weights.append(path)
    for component in (*_TOKENIZERS[variant], "scheduler"):
        if not (root / component).is_dir():
            raise GeneratorWeightsError(f"{root / component}: component folder missing; {hint}")
    unet_config = _read_json(root / "unet" / "config.json", hint)
    if unet_config.get("in_channels") != 9:
        raise GeneratorWeightsError(
            f"{root / 'unet'}: in_channels={unet_config.get('in_channels')}: a text-to-image UNet, not an "
            f"inpainting UNet (in_channels=9: latent + mask + masked-image latent); use {REAL_MODEL_ID[variant]}"
        )
    for rel, expected in (sha256 or {}).items():
        path = root / rel
        if not path.is_file():
            raise GeneratorWeightsError(f"{path}: missing, but a sha256 is pinned for it; {hint}")
        if (actual := sha256_file(path)) != expected.lower():
            raise GeneratorWeightsError(f"{path}: sha256 {actual} is not the pinned {expected}; {hint}")
    return ModelDirInfo(root, variant, (root / TINY_MARKER).is_file(), tuple(weights))


# ------------------------------------------------------------------------------------------ components


@dataclass
class InpaintComponents:
    variant: str
    unet: nn.Module
    vae: nn.Module
    text_encoders: tuple[nn.Module, ...]  # sdxl: (CLIPTextModel, CLIPTextModelWithProjection)
    tokenizers: tuple[Any, ...]
    noise_scheduler: Any  # DDPMScheduler with the model's own noise schedule
    dtype: torch.dtype
    device: torch.device
    tiny_random: bool
    notes: list[str] = field(default_factory=list)

    @property
    def text_encoder(self) -> nn.Module:
        return self.text_encoders[0]

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_inpaint_components(
    model_dir: str | os.PathLike,
    variant: Variant = "sd2",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sha256: dict[str, str] | None = None,
) -> InpaintComponents:
    """Check, then load every part of the inpainting model with `from_pretrained`, frozen."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    info = check_model_dir(model_dir, variant, sha256)
    root = str(info.model_dir)
    device = torch.device(device)
    notes: list[str] = []
    vae_dtype = dtype
    if variant == "sdxl" and dtype == torch.float16:
        # SDXL's VAE overflows to NaN in fp16 (its activations exceed fp16's range); keep it in fp32.
        vae_dtype = torch.float32
        notes.append("SDXL VAE kept in fp32 (it produces NaN in fp16)")
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=vae_dtype)
    encoders: list[nn.Module] = [CLIPTextModel.from_pretrained(root, subfolder="text_encoder", dtype=dtype)]
    if variant == "sdxl":
        encoders.append(CLIPTextModelWithProjection.from_pretrained(root, subfolder="text_encoder_2", dtype=dtype))
    tokenizers = tuple(CLIPTokenizer.from_pretrained(root, subfolder=name) for name in _TOKENIZERS[variant])
    # Training noises with DDPM whatever the sampling scheduler is; the betas come from the model's config.
    noise_scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
    for module in (unet, vae, *encoders):
        module.requires_grad_(False)
        module.to(device)
    for module in (vae, *encoders):
        module.eval()
    return InpaintComponents(variant, unet, vae, tuple(encoders), tokenizers, noise_scheduler, dtype, device,
                             info.tiny_random, notes)


@torch.no_grad()
def encode_prompts(components: InpaintComponents, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(encoder_hidden_states, pooled) as the stock pipelines compute them; pooled is None for sd2."""
    states: list[torch.Tensor] = []
    pooled = None
    for tokenizer, encoder in zip(components.tokenizers, components.text_encoders, strict=True):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(components.device)
        if components.variant == "sd2":
            states.append(encoder(ids)[0])
        else:
            out = encoder(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])  # SDXL conditions on the penultimate layer
            pooled = out.text_embeds if hasattr(out, "text_embeds") else pooled
    return torch.cat(states, dim=-1), pooled


# ------------------------------------------------------------------------------------------ learnable layers

_SEGMENT = re.compile(r"^([A-Za-z_]\w*)((?:\[-?\d+\])*)$")
_INDEX = re.compile(r"\[(-?\d+)\]")


def _parse_entry(entry: str) -> list[str | int]:
    """'unet.down_blocks[0].attentions[-1]' -> ['down_blocks', 0, 'attentions', -1] (the 'unet.' is optional)."""
    parts: list[str | int] = []
    segments = entry.strip().split(".")
    if segments and segments[0] == "unet":
        segments = segments[1:]
    for seg in segments:
        if seg.isdigit():
            parts.append(int(seg))
            continue
        m = _SEGMENT.match(seg)
        if not m:
            raise GeneratorConfigError(
                f"learnable_layers entry {entry!r}: cannot read {seg!r}; write names and [index] like "
                "'unet.up_blocks[-1]' or 'unet.down_blocks[0].attentions[0]'"
            )
        parts.append(m.group(1))
        parts.extend(int(i) for i in _INDEX.findall(m.group(2)))
    return parts


def _resolve_entry(unet: nn.Module, entry: str) -> str:
    module, path = unet, []
    for part in _parse_entry(entry):
        children = dict(module.named_children())
        where = "unet" + "".join(f".{p}" for p in path)
        if isinstance(part, str):
            if part not in children:
                listing = ", ".join(sorted(children)) or "(none)"
                scope = "top-level names" if not path else f"names under {where}"
                raise GeneratorConfigError(
                    f"learnable_layers entry {entry!r}: {where} has no {part!r}; valid {scope}: {listing}"
                )
            module = children[part]
            path.append(part)
        else:
            if not isinstance(module, (nn.ModuleList, nn.Sequential)):
                raise GeneratorConfigError(
                    f"learnable_layers entry {entry!r}: {where} is not a list, cannot index [{part}]"
                )
            n = len(module)
            if not -n <= part < n:
                raise GeneratorConfigError(
                    f"learnable_layers entry {entry!r}: {where} has {n} entries, index {part} is out of range"
                )
            idx = part % n
            module = module[idx]
            path.append(str(idx))
    return ".".join(path)


def resolve_learnable_layers(unet: nn.Module, names: list[str]) -> list[str]:
    """Module paths (as in `unet.named_modules()`, '' for the whole UNet) named by learnable_layers entries."""
    if not names:
        raise GeneratorConfigError("learnable_layers is empty: name at least one UNet block, e.g. 'unet.mid_block'")
    paths: list[str] = []
    for entry in names:
        path = _resolve_entry(unet, entry)
        if path not in paths:
            paths.append(path)
    return paths


def _is_projection(name: str, module: nn.Module) -> bool:
    # Once an adapter is in, a projection is peft's wrapper around the original Linear (`base_layer`).
    is_linear = isinstance(getattr(module, "base_layer", module), nn.Linear)
    return is_linear and any(name == p or name.endswith("." + p) for p in LORA_PROJECTIONS)


def _blocks(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The UNet's blocks as a learnable_layers entry names them: mid_block, down_blocks.0, up_blocks.1, ..."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in unet.named_children():
        if isinstance(child, nn.ModuleList):
            out.extend((f"{name}.{i}", c) for i, c in enumerate(child))
        else:
            out.append((name, child))
    return out


def lora_target_modules(unet: nn.Module, names: list[str]) -> list[str]:
    """Fully qualified names of the attention projections (to_q/to_k/to_v/to_out.0) inside the named blocks."""
    resolve_learnable_layers(unet, names)  # every entry must name a module before any is looked into
    targets: list[str] = []
    for entry in names:
        path = _resolve_entry(unet, entry)
        module = unet.get_submodule(path) if path else unet
        found = [f"{path}.{n}" if path else n for n, m in module.named_modules() if _is_projection(n, m)]
        if not found:
            with_attention = [n for n, m in _blocks(unet) if any(_is_projection(k, s) for k, s in m.named_modules())]
            raise GeneratorConfigError(
                f"learnable_layers entry {entry!r} ({path or 'unet'}) holds no attention projections to adapt; "
                f"blocks with attention: {', '.join(with_attention) or '(none)'}"
            )
        targets.extend(t for t in found if t not in targets)
    return targets


# ------------------------------------------------------------------------------------------ LoRA


def _is_lora_param(name: str, adapter_name: str) -> bool:
    return f".lora_A.{adapter_name}." in name or f".lora_B.{adapter_name}." in name


def lora_parameters(unet: nn.Module, adapter_name: str = "default") -> list[nn.Parameter]:
    return [p for n, p in unet.named_parameters() if _is_lora_param(n, adapter_name)]


def activate_adapter(unet: nn.Module, adapter_name: str) -> None:
    """Make `adapter_name` the one adapter that runs and trains; every other weight is frozen."""
    unet.set_adapter(adapter_name)
    for n, p in unet.named_parameters():
        p.requires_grad_(_is_lora_param(n, adapter_name))


def add_lora(
    unet: nn.Module,
    target_modules: list[str],
    rank: int,
    alpha: float,
    adapter_name: str = "default",
    dropout: float = 0.0,
) -> list[nn.Parameter]:
    """Add a LoRA adapter on exactly `target_modules`, make it the active one; returns its parameters.

    Several named adapters (e.g. "face" and "plate") can live on one UNet; switch with activate_adapter.
    """
    from peft import LoraConfig

    if not isinstance(rank, int) or rank <= 0:
        raise GeneratorConfigError(f"lora_rank must be a positive integer, got {rank!r}")
    if alpha <= 0:
        raise GeneratorConfigError(f"lora_alpha must be positive, got {alpha!r}")
    if not target_modules:
        raise GeneratorConfigError("LoRA has no target modules (see lora_target_modules)")
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                        target_modules=list(target_modules))
    unet.add_adapter(config, adapter_name=adapter_name)
    params = lora_parameters(unet, adapter_name)
    # The trained weights stay fp32 even on an fp16/bf16 base: optimizer updates smaller than fp16's
    # resolution would vanish, and GradScaler refuses fp16 gradients. peft casts the result back.
    for p in params:
        p.data = p.data.float()
    activate_adapter(unet, adapter_name)
    return params


def _pipeline_class(variant: str) -> Any:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    _check_variant(variant)
    return StableDiffusionXLInpaintPipeline if variant == "sdxl" else StableDiffusionInpaintPipeline


def save_lora(unet: nn.Module, out_dir: str | os.PathLike, adapter_name: str = "default",
              variant: Variant = "sd2") -> Path:
    """Write `out_dir/pytorch_lora_weights.safetensors` in diffusers' format for a stock pipeline's
    `load_lora_weights`; rank and alpha travel in the file's metadata so the loaded scale matches."""
    from peft.utils import get_peft_model_state_dict

    if adapter_name not in getattr(unet, "peft_config", {}):
        raise GeneratorConfigError(f"the UNet has no LoRA adapter {adapter_name!r}")
    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in get_peft_model_state_dict(unet, adapter_name=adapter_name).items()}
    metadata = unet.peft_config[adapter_name].to_dict()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Saved beside, then renamed: a reader never sees half a file.
    tmp = Path(tempfile.mkdtemp(prefix=".lora.", dir=out))
    try:
        _pipeline_class(variant).save_lora_weights(tmp, unet_lora_layers=state, weight_name=LORA_WEIGHT_NAME,
                                                   safe_serialization=True, unet_lora_adapter_metadata=metadata)
        os.replace(tmp / LORA_WEIGHT_NAME, out / LORA_WEIGHT_NAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / LORA_WEIGHT_NAME


def save_loras(unet: nn.Module, out_dir: str | os.PathLike, adapter_names: list[str],
               variant: Variant = "sd2") -> dict[str, Path]:
    """One subfolder per adapter (out_dir/face/, out_dir/plate/), each a diffusers LoRA folder."""
    return {name: save_lora(unet, Path(out_dir) / name, name, variant) for name in adapter_names}


def load_lora_into_pipeline(pipe: Any, lora_dir: str | os.PathLike, activate: str | None = None) -> list[str]:
    """Load what save_lora/save_loras wrote into a stock diffusers pipeline; returns the adapter names.

    A single-file folder loads as adapter "default"; a folder of adapter subfolders loads each under its
    folder name. `activate` picks the adapter(s) that run (e.g. "face" on face regions).
    """
    root = Path(lora_dir)
    if (root / LORA_WEIGHT_NAME).is_file():
        sources = {"default": root}
    elif root.is_dir():
        sources = {d.name: d for d in sorted(root.iterdir()) if (d / LORA_WEIGHT_NAME).is_file()}
    else:
        sources = {}
    if not sources:
        raise GeneratorWeightsError(f"{root}: no {LORA_WEIGHT_NAME} in it or in any subfolder")
    for name, folder in sources.items():
        pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME, adapter_name=name)
    if activate is not None:
        if activate not in sources:
            raise GeneratorConfigError(f"LoRA adapter {activate!r} not in {root} (has {', '.join(sources)})")
        pipe.set_adapters(activate)
    return list(sources)


# ------------------------------------------------------------------------------------------ precision / memory

_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_dtype(precision: str, device: str | torch.device) -> tuple[torch.dtype, str | None]:
    """The dtype for `precision` on `device`, and a note when it had to differ from what was asked."""
    key = str(precision).lower()
    if key not in _PRECISIONS:
        raise GeneratorConfigError(f"precision {precision!r}: expected one of {', '.join(_PRECISIONS)}")
    asked = _PRECISIONS[key]
    dev = torch.device(device)
    if dev.type == "cpu" and asked != torch.float32:
        # Half precision on CPU is slow or unsupported for many kernels; the tiny CPU runs use fp32.
        return torch.float32, f"precision {key} asked, fp32 used on CPU"
    if dev.type == "cuda" and asked == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return torch.float16, "precision bf16 asked, this GPU lacks bf16: fp16 used"
    return asked, None


def enable_memory_efficient_attention(unet: nn.Module, enable_xformers: bool) -> tuple[str, str | None]:
    """xFormers attention when asked and usable, else PyTorch SDPA; returns (backend, note)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    note = None
    if enable_xformers:
        try:
            import xformers  # noqa: F401

            unet.enable_xformers_memory_efficient_attention()
            return "xformers", None
        except (ImportError, ValueError, NotImplementedError, RuntimeError) as e:
            note = f"xformers asked but unusable ({type(e).__name__}: {e}); PyTorch SDPA used"
    unet.set_attn_processor(AttnProcessor2_0())
    return "sdpa", note


def set_gradient_checkpointing(unet: nn.Module, enabled: bool) -> None:
    """Trade compute for memory on the UNet's blocks (recomputed in backward)."""
    if enabled:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
