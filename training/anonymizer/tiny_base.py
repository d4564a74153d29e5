"""A tiny, randomly initialised inpainting base in diffusers' folder layout: the embedded default.

Real SD2 / SDXL inpainting weights are never reachable here, so the pipeline the anonymizer trains on by
default is built from the SAME classes with toy sizes and saved with `save_pretrained`; everything downstream
loads it through the same `from_pretrained` path as the real model. Its outputs mean nothing visually: a
`aubergine_tiny_base.json` marker in the folder lets reports label numbers made with it.

The tokenizer is CLIP's real one (see clip_vocab), so prompts get real token ids.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from training.anonymizer.clip_vocab import MODEL_MAX_LENGTH, VOCAB_SIZE
from training.anonymizer.generator import TINY_MARKER

# The noise schedules of the real models' scheduler_config.json, so the tiny base trains and samples on the
# same timesteps/betas as the model it stands in for.
_SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # Module constructors draw from the global RNG; fork it so callers' random state is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _text_config(hidden: int, layers: int, heads: int, act: str, projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,  # the real CLIP vocabulary, so real token ids index the embedding
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act=act,
        projection_dim=projection_dim,
        # Real ids (not the legacy 0/2/1) so the pooled output is taken at the first end-of-text token.
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def _tiny_vae(block_out_channels: tuple[int, ...], scaling_factor: float) -> AutoencoderKL:
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(32, *block_out_channels),
        scaling_factor=scaling_factor,
    )


def _heads(block_out_channels: tuple[int, ...], head_dim: int) -> tuple[int, ...]:
    # diffusers' `attention_head_dim` on these UNets is really the number of heads (SD2 configs rely on it).
    return tuple(max(1, c // head_dim) for c in block_out_channels)


def _save_atomically(out_dir: Path, save: Callable[[Path], None], marker: dict) -> Path:
    """save(tmp) into a sibling folder, then swap it in, so a killed run never leaves a half base behind."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save(tmp)
        (tmp / TINY_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def build_tiny_inpaint_pipeline(
    tokenizer_dir: str | os.PathLike,
    seed: int = 0,
    block_out_channels: tuple[int, ...] = (32, 64),
    layers_per_block: int = 1,
    text_hidden_size: int = 32,
    text_layers: int = 2,
    vae_block_out_channels: tuple[int, ...] = (32, 64),
    sample_size: int = 32,
) -> StableDiffusionInpaintPipeline:
    """An SD2-inpainting-shaped pipeline with random weights (see write_tiny_inpaint_base)."""
    n = len(block_out_channels)
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=9,  # noisy latent 4 + mask 1 + masked-image latent 4: the inpainting UNet's input
            out_channels=4,
            # SD2's arrangement: attention in all but the deepest down block and all but the first up block,
            # so the recipe's learnable_layers (down_blocks[0].attentions[0], up_blocks[-1]) exist here too.
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            attention_head_dim=_heads(block_out_channels, 16),
            cross_attention_dim=text_hidden_size,
            use_linear_projection=True,
            norm_num_groups=min(32, *block_out_channels),
        )
    with _seeded(seed + 1):
        vae = _tiny_vae(vae_block_out_channels, scaling_factor=0.18215)
    with _seeded(seed + 2):
        text_encoder = CLIPTextModel(
            _text_config(text_hidden_size, text_layers, heads=4, act="gelu", projection_dim=text_hidden_size)
        )
    scheduler = PNDMScheduler(
        **_SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon"
    )
    return StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_tiny_inpaint_base(
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    seed: int = 0,
    block_out_channels: tuple[int, ...] = (32, 64),
    layers_per_block: int = 1,
    text_hidden_size: int = 32,
    text_layers: int = 2,
    vae_block_out_channels: tuple[int, ...] = (32, 64),
    sample_size: int = 32,
) -> Path:
    """Save a tiny random StableDiffusionInpaintPipeline to `out_dir` (replacing what is there).

    Same seed and sizes -> the same bytes in every file. Default pipeline resolution is
    sample_size * 2**(len(vae_block_out_channels) - 1) = 64 px.
    """
    sizes = {
        "block_out_channels": list(block_out_channels),
        "layers_per_block": layers_per_block,
        "text_hidden_size": text_hidden_size,
        "text_layers": text_layers,
        "vae_block_out_channels": list(vae_block_out_channels),
        "sample_size": sample_size,
    }
    pipe = build_tiny_inpaint_pipeline(tokenizer_dir, seed, block_out_channels, layers_per_block,
                                       text_hidden_size, text_layers, vae_block_out_channels, sample_size)
    marker = {"tiny_random": True, "variant": "sd2", "seed": seed, "sizes": sizes,
              "note": "randomly initialised stand-in for stabilityai/stable-diffusion-2-inpainting; "
                      "outputs are not meaningful"}
    return _save_atomically(Path(out_dir), lambda d: pipe.save_pretrained(d, safe_serialization=True), marker)


def build_tiny_sdxl_inpaint_pipeline(
    tokenizer_dir: str | os.PathLike,
    seed: int = 0,
    block_out_channels: tuple[int, ...] = (32, 64),
    layers_per_block: int = 1,
    text_hidden_size: int = 32,
    text_2_hidden_size: int = 32,
    text_layers: int = 2,
    addition_time_embed_dim: int = 8,
    vae_block_out_channels: tuple[int, ...] = (32, 64),
    sample_size: int = 32,
) -> StableDiffusionXLInpaintPipeline:
    """An SDXL-inpainting-shaped pipeline with random weights (see write_tiny_sdxl_inpaint_base)."""
    n = len(block_out_channels)
    projection_dim = text_2_hidden_size
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=9,
            out_channels=4,
            # SDXL's arrangement: no attention in the first down / last up block.
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            attention_head_dim=_heads(block_out_channels, 16),
            # The pipeline concatenates both encoders' penultimate hidden states.
            cross_attention_dim=text_hidden_size + text_2_hidden_size,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=addition_time_embed_dim,
            # pooled text embedding + 6 time ids (original size, crop corner, target size), no aesthetic score
            projection_class_embeddings_input_dim=projection_dim + 6 * addition_time_embed_dim,
            norm_num_groups=min(32, *block_out_channels),
        )
    with _seeded(seed + 1):
        vae = _tiny_vae(vae_block_out_channels, scaling_factor=0.13025)
    with _seeded(seed + 2):
        text_encoder = CLIPTextModel(
            _text_config(text_hidden_size, text_layers, heads=4, act="quick_gelu", projection_dim=text_hidden_size)
        )
    with _seeded(seed + 3):
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(text_2_hidden_size, text_layers, heads=4, act="gelu", projection_dim=projection_dim)
        )
    scheduler = EulerDiscreteScheduler(
        **_SD_BETAS, steps_offset=1, timestep_spacing="leading", interpolation_type="linear", prediction_type="epsilon"
    )
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    return StableDiffusionXLInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def write_tiny_sdxl_inpaint_base(
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    seed: int = 0,
    block_out_channels: tuple[int, ...] = (32, 64),
    layers_per_block: int = 1,
    text_hidden_size: int = 32,
    text_2_hidden_size: int = 32,
    text_layers: int = 2,
    addition_time_embed_dim: int = 8,
    vae_block_out_channels: tuple[int, ...] = (32, 64),
    sample_size: int = 32,
) -> Path:
    """Save a tiny random StableDiffusionXLInpaintPipeline to `out_dir` (replacing what is there)."""
    sizes = {
        "block_out_channels": list(block_out_channels),
        "layers_per_block": layers_per_block,
        "text_hidden_size": text_hidden_size,
        "text_2_hidden_size": text_2_hidden_size,
        "text_layers": text_layers,
        "addition_time_embed_dim": addition_time_embed_dim,
        "vae_block_out_channels": list(vae_block_out_channels),
        "sample_size": sample_size,
    }
    pipe = build_tiny_sdxl_inpaint_pipeline(tokenizer_dir, seed, block_out_channels, layers_per_block,
                                            text_hidden_size, text_2_hidden_size, text_layers,
                                            addition_time_embed_dim, vae_block_out_channels, sample_size)
    marker = {"tiny_random": True, "variant": "sdxl", "seed": seed, "sizes": sizes,
              "note": "randomly initialised stand-in for SDXL inpainting; outputs are not meaningful"}
    return _save_atomically(Path(out_dir), lambda d: pipe.save_pretrained(d, safe_serialization=True), marker)


STAND_IN_SIZES = {"vae_block_out_channels": (32, 64, 64), "sample_size": 16}  # 64 px, latents 4x smaller


def main(argv: list[str] | None = None) -> int:
    """Set-up step (`make setup`): write the embedded default's tiny SD2-inpainting base from the pinned
    open_clip wheel's vocabulary and, with --pretrain-portraits, pretrain it (training/anonymizer/
    stand_in_pretrain.py). Skipped when the folder already holds a base of the same seed and recipe."""
    import argparse
    from dataclasses import asdict

    from training.anonymizer.clip_vocab import ClipVocabError, clip_tokenizer_files, find_clip_bpe_source
    from training.anonymizer.stand_in_pretrain import PretrainRecipe, pretrain_stand_in

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("."), help="checkout whose .cache/wheels holds the wheel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-portraits", type=Path, default=None,
                        help="people.json of the portraits to pretrain on (data/media/pretrain_people/people.json)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    recipe = PretrainRecipe(seed=args.seed)
    wanted = {"seed": args.seed, "pretrain_recipe": asdict(recipe) if args.pretrain_portraits else None}
    marker = args.out / TINY_MARKER
    if not args.force and marker.is_file():
        done = json.loads(marker.read_text())
        if {"seed": done.get("seed"), "pretrain_recipe": (done.get("pretrained") or {}).get("recipe")} == wanted:
            print(f"{args.out}: tiny inpainting base already written (seed {args.seed})")
            return 0
    source = find_clip_bpe_source(args.root)
    if source is None:
        raise SystemExit(f"no open_clip_torch wheel under {args.root / '.cache/wheels'}: run `make setup`")
    try:
        with tempfile.TemporaryDirectory() as tok:
            clip_tokenizer_files(source, tok)
            if args.pretrain_portraits is None:
                write_tiny_inpaint_base(args.out, tok, seed=args.seed)
            else:
                pipe = build_tiny_inpaint_pipeline(tok, args.seed, **STAND_IN_SIZES)
                torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
                record = pretrain_stand_in(pipe, args.pretrain_portraits, recipe)
                sizes = {k: list(v) if isinstance(v, tuple) else v for k, v in STAND_IN_SIZES.items()}
                marker_doc = {"tiny_random": True, "variant": "sd2", "seed": args.seed, "sizes": sizes,
                              "pretrained": record,
                              "note": "tiny stand-in for stabilityai/stable-diffusion-2-inpainting, pretrained here "
                                      "at set-up for minutes on a CPU: it shows the track works, not SD2's quality"}
                _save_atomically(args.out, lambda d: pipe.save_pretrained(d, safe_serialization=True), marker_doc)
    except ClipVocabError as err:
        raise SystemExit(str(err)) from None
    print(f"{args.out}: tiny SD2-inpainting stand-in written (seed {args.seed}"
          f"{', pretrained' if args.pretrain_portraits else ''}; a labelled stand-in, not SD2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
