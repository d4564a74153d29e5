"""Bad inputs to the anonymizer are clear errors naming the key or the file, before any training starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestration.config import ConfigError, load_params

ROOT = Path(__file__).resolve().parents[1]
TINY_BASE = ROOT / "data/models/tiny-sd2-inpainting"


def _params_file(tmp_path: Path, **anonymization) -> Path:
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["profiles"]["embedded"]["anonymization"].update(anonymization)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(("override", "expect"), [
    ({"lora_rank": 0}, "anonymization.lora_rank = 0"),
    ({"precision": "fp8"}, "anonymization.precision = 'fp8'"),
    ({"alternating": {"detector": 0}}, "anonymization.alternating.detector = 0"),
    ({"plate_text_font_ratio_min": 0.9, "plate_text_font_ratio_max": 0.5}, "plate_text_font_ratio_min (0.9) must not exceed"),
    ({"learnable_layers": ["unet.up_blocks[last]"]}, "anonymization.learnable_layers.0"),
    ({"use_lora": False}, "use_lora: false"),
])
def test_bad_recipe_values_fail_at_load_naming_the_key(tmp_path, override, expect):
    with pytest.raises(ConfigError) as err:
        load_params(_params_file(tmp_path, **override))
    assert expect in str(err.value)


def _need_tiny_base() -> None:
    if not (TINY_BASE / "model_index.json").is_file():
        pytest.fail(f"{TINY_BASE} missing: `make setup` writes it (make test does)")


def _check(tmp_path: Path, model_dir: Path, layers=None):
    from orchestration.anonymization_stages import check_generator_inputs

    extra = {"generator": {"model_dir": str(model_dir)}}
    if layers is not None:
        extra["learnable_layers"] = layers
    return check_generator_inputs(load_params(_params_file(tmp_path, **extra)))


def test_the_embedded_tiny_base_passes_and_is_labelled(tmp_path):
    _need_tiny_base()
    info = _check(tmp_path, TINY_BASE)
    assert info.tiny_random


def test_a_missing_model_folder_is_named(tmp_path):
    from training.anonymizer.generator import GeneratorWeightsError

    with pytest.raises(GeneratorWeightsError, match="nowhere"):
        _check(tmp_path, tmp_path / "nowhere")


def test_an_lfs_pointer_instead_of_weights_is_named(tmp_path):
    from training.anonymizer.generator import GeneratorWeightsError

    _need_tiny_base()
    base = shutil.copytree(TINY_BASE, tmp_path / "base")
    weights = next((base / "unet").glob("*.safetensors"))
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 3463726498\n")
    with pytest.raises(GeneratorWeightsError) as err:
        _check(tmp_path, base)
    assert weights.name in str(err.value) and "LFS" in str(err.value)


def test_a_text_to_image_unet_is_refused_naming_the_folder(tmp_path):
    from training.anonymizer.generator import GeneratorWeightsError

    _need_tiny_base()
    base = shutil.copytree(TINY_BASE, tmp_path / "base")
    config = json.loads((base / "unet/config.json").read_text())
    (base / "unet/config.json").write_text(json.dumps({**config, "in_channels": 4}))
    with pytest.raises(GeneratorWeightsError) as err:
        _check(tmp_path, base)
    assert str(base / "unet") in str(err.value) and "not an inpainting UNet" in str(err.value)


def test_a_learnable_layer_that_names_no_module_is_refused(tmp_path):
    from training.anonymizer.generator import GeneratorConfigError

    _need_tiny_base()
    with pytest.raises(GeneratorConfigError, match=r"up_blocks\[7\]"):
        _check(tmp_path, TINY_BASE, layers=["unet.mid_block", "unet.up_blocks[7]"])
    with pytest.raises(GeneratorConfigError, match="middle_block"):
        _check(tmp_path, TINY_BASE, layers=["unet.middle_block"])


def test_the_stage_fails_before_training_with_the_setup_hint(project):
    from orchestration.runner import run_stage
    from orchestration.stage_io import StageInputError

    coco = project.root / "data/datasets/coco"
    coco.mkdir(parents=True)
    for split in ("train", "val"):
        (coco / f"{split}.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    doc = yaml.safe_load((project.root / "params.yaml").read_text())
    doc["profiles"]["embedded"]["anonymization"]["generator"]["model_dir"] = "missing-base"
    (project.root / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(StageInputError) as err:
        run_stage("lora_checkpoint", project.params())
    assert "missing-base" in str(err.value) and "make setup" in str(err.value)
    assert not (project.root / ".cache/train/lora").exists()  # nothing started
