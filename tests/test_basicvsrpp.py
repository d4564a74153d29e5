"""BasicVSR++ weight compatibility: mmagic/Lada key names, strict loading, exact round trips."""

from __future__ import annotations

import torch
import pytest

from orchestration.config import RESTORER_MODULE_GROUPS
from training import checkpoints as ckpt
from training.basicvsrpp import MODULE_GROUPS, BasicVSRPlusPlusNet
from assets.weights import WeightsError


def mmagic_keys(num_blocks: int) -> set[str]:
    """The state-dict keys of mmagic's BasicVSRPlusPlusNet (is_low_res_input=False), written out from its
    module structure independently of our implementation."""
    keys = {"spynet.mean", "spynet.std"}
    for level in range(6):
        for conv in range(5):
            keys |= {f"spynet.basic_module.{level}.basic_module.{conv}.conv.{p}" for p in ("weight", "bias")}

    def res_blocks(prefix: str, n: int) -> set[str]:
        out = {f"{prefix}.main.0.weight", f"{prefix}.main.0.bias"}
        for b in range(n):
            out |= {f"{prefix}.main.2.{b}.{c}.{p}" for c in ("conv1", "conv2") for p in ("weight", "bias")}
        return out

    keys |= {"feat_extract.0.weight", "feat_extract.0.bias", "feat_extract.2.weight", "feat_extract.2.bias"}
    keys |= res_blocks("feat_extract.4", 5)
    for branch in ("backward_1", "forward_1", "backward_2", "forward_2"):
        keys |= {f"deform_align.{branch}.weight", f"deform_align.{branch}.bias"}
        keys |= {f"deform_align.{branch}.conv_offset.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")}
        keys |= res_blocks(f"backbone.{branch}", num_blocks)
    keys |= res_blocks("reconstruction", 5)
    for name in ("upsample1.upsample_conv", "upsample2.upsample_conv", "conv_hr", "conv_last"):
        keys |= {f"{name}.weight", f"{name}.bias"}
    return keys


def test_key_names_match_mmagic_at_ladas_size():
    model = BasicVSRPlusPlusNet(64, 15)
    sd = model.state_dict()
    assert set(sd) == mmagic_keys(15)
    shapes = {
        "spynet.basic_module.0.basic_module.0.conv.weight": (32, 8, 7, 7),
        "feat_extract.0.weight": (64, 3, 3, 3),
        "deform_align.backward_1.weight": (64, 128, 3, 3),
        "deform_align.forward_2.conv_offset.0.weight": (64, 196, 3, 3),
        "deform_align.backward_1.conv_offset.6.weight": (432, 64, 3, 3),
        "backbone.forward_2.main.0.weight": (64, 320, 3, 3),
        "reconstruction.main.0.weight": (64, 320, 3, 3),
        "upsample1.upsample_conv.weight": (256, 64, 3, 3),
        "upsample2.upsample_conv.weight": (256, 64, 3, 3),
        "conv_hr.weight": (64, 64, 3, 3),
        "conv_last.weight": (3, 64, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key


def test_module_groups_agree_with_config():
    assert tuple(MODULE_GROUPS) == RESTORER_MODULE_GROUPS
    assert {k.split(".")[0] for k in BasicVSRPlusPlusNet(8, 1).state_dict()} == set(MODULE_GROUPS)


def _clip(seed=0, t=3, size=128):
    return torch.rand(1, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_saved_state_reproduces_outputs_exactly(tmp_path):
    torch.manual_seed(1)
    model = BasicVSRPlusPlusNet(8, 1).eval()
    with torch.no_grad():  # make the offset heads non-trivial, so the deformable path is exercised
        for m in model.deform_align.values():
            m.conv_offset[-1].weight.normal_(0, 0.01)
    x = _clip()
    with torch.no_grad():
        expected = model(x)
    path = ckpt.export_lada(model, tmp_path / "g.pth")
    loaded, info = ckpt.load_generator(path)
    assert (info["mid_channels"], info["num_blocks"]) == (8, 1)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), expected)
    assert x.shape == expected.shape


def test_lada_format_with_both_prefixes_loads_the_ema_generator(tmp_path):
    torch.manual_seed(2)
    gen, ema = BasicVSRPlusPlusNet(8, 1), BasicVSRPlusPlusNet(8, 1)
    sd = {f"generator.{k}": v for k, v in gen.state_dict().items()}
    sd |= {f"generator_ema.{k}": v for k, v in ema.state_dict().items()}
    sd["discriminator.conv_0.weight"] = torch.zeros(64, 3, 3, 3)  # Lada's training files also carry the discriminator
    path = tmp_path / "lada_like.pth"
    torch.save({"meta": {"mmengine_version": "0.10"}, "state_dict": sd, "message_hub": {}}, path)
    loaded, info = ckpt.load_generator(path)
    assert info["part"] == "generator_ema"
    for k, v in ema.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    plain, info = ckpt.load_generator(path, prefer_ema=False)
    assert info["part"] == "generator"
    assert torch.equal(plain.state_dict()["conv_last.weight"], gen.state_dict()["conv_last.weight"])


def test_bare_mmagic_state_dict_loads(tmp_path):
    model = BasicVSRPlusPlusNet(16, 2)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    loaded, info = ckpt.load_generator(tmp_path / "bare.pth")
    assert info["part"] == "bare" and (info["mid_channels"], info["num_blocks"]) == (16, 2)


def test_other_architecture_names_missing_and_unexpected_keys(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ckpt.CheckpointError, match=r"resnet\.pth.*not a BasicVSR\+\+ generator"):
        ckpt.load_generator(tmp_path / "resnet.pth")
    # Same family, wrong size: the error lists the mismatching keys.
    torch.save(BasicVSRPlusPlusNet(8, 2).state_dict(), tmp_path / "small.pth")
    with pytest.raises(ckpt.CheckpointError, match=r"missing keys|unexpected keys") as err:
        ckpt.load_generator(tmp_path / "small.pth", model=BasicVSRPlusPlusNet(8, 1))
    assert "backbone.backward_1.main.2.1.conv1.weight" in str(err.value)
    # A state dict with a key renamed: missing and unexpected are both named.
    sd = BasicVSRPlusPlusNet(8, 1).state_dict()
    sd["conv_final.weight"] = sd.pop("conv_last.weight")
    torch.save(sd, tmp_path / "renamed.pth")
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_generator(tmp_path / "renamed.pth")
    assert "1 missing keys (conv_last.weight)" in str(err.value) and "1 unexpected keys (conv_final.weight)" in str(err.value)


def test_lfs_pointer_missing_file_and_checksum(tmp_path):
    pointer = tmp_path / "lada.pth"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(WeightsError, match=r"lada\.pth.*Git-LFS pointer"):
        ckpt.load_generator(pointer)
    with pytest.raises(WeightsError, match="not found"):
        ckpt.load_generator(tmp_path / "nope.pth")
    path = ckpt.export_lada(BasicVSRPlusPlusNet(8, 1), tmp_path / "g.pth")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        ckpt.load_generator(path, sha256="0" * 64)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a zip" * 10)
    with pytest.raises(ckpt.CheckpointError, match="garbage.pth: not a readable PyTorch checkpoint"):
        ckpt.load_generator(garbage)


def test_stage1_to_stage2_conversion(tmp_path):
    gen = BasicVSRPlusPlusNet(8, 1)
    src = ckpt.save_atomic({"meta": {"iteration": 7}, "state_dict": {f"generator.{k}": v for k, v in gen.state_dict().items()},
                            "optimizers": {}}, tmp_path / "s1.pth")
    meta = ckpt.convert_stage1_to_stage2(src, tmp_path / "s2.pth")
    assert meta["source_iteration"] == 7
    data = torch.load(tmp_path / "s2.pth", weights_only=True)
    assert set(data) == {"meta", "state_dict"}  # no optimiser state carried over
    for k, v in gen.state_dict().items():
        assert torch.equal(data["state_dict"][f"generator.{k}"], v)
        assert torch.equal(data["state_dict"][f"generator_ema.{k}"], v)


def test_input_size_rules():
    model = BasicVSRPlusPlusNet(8, 1)
    with pytest.raises(ValueError, match="at least 128"):
        model(torch.rand(1, 2, 3, 64, 128))
    with pytest.raises(ValueError, match="at least 2 frames"):
        model(torch.rand(1, 1, 3, 128, 128))


def test_export_cli_writes_a_lada_file_from_a_training_checkpoint(tmp_path):
    from typer.testing import CliRunner

    from orchestration.cli import app

    gen = BasicVSRPlusPlusNet(8, 1)
    training_state = {"meta": {"iteration": 3}, "state_dict": ckpt.lada_state_dict(gen), "optimizers": {"generator": {}},
                      "rng": {"torch": torch.get_rng_state()}}
    torch.save(training_state, tmp_path / "latest.pth")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "latest.pth"), "-o", str(tmp_path / "lada.pth")])
    assert result.exit_code == 0, result.output
    data = torch.load(tmp_path / "lada.pth", weights_only=True)
    assert set(data) == {"meta", "state_dict"}
    assert {k.split(".")[0] for k in data["state_dict"]} == {"generator", "generator_ema"}
    assert torch.equal(data["state_dict"]["generator.conv_last.weight"], gen.state_dict()["conv_last.weight"])
    bad = CliRunner().invoke(app, ["export", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "x.pth")])
    assert bad.exit_code == 2 and "missing.pth" in bad.output


def test_export_comes_with_a_lada_config_that_builds_the_same_network_strictly(tmp_path):
    """Lada's loader builds 64/15 without a config and loads non-strictly: an export of another size is only
    usable with its config. Read ours with mmengine's Config reader (what Lada's `load_model` uses), build the
    network from it and load the exported weights with no missing or unexpected key."""
    from mme.config import Config
    from typer.testing import CliRunner

    from orchestration.cli import app

    gen = BasicVSRPlusPlusNet(16, 2)
    torch.save({"meta": {"iteration": 3, "input_size": 128}, "state_dict": ckpt.lada_state_dict(gen)}, tmp_path / "latest.pth")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "latest.pth"), "-o", str(tmp_path / "eggplant.pth")])
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.stderr and "mid_channels=16, num_blocks=2" in result.stderr
    assert "--mosaic-restoration-config-path" in result.stderr
    config_path = tmp_path / "eggplant_lada_config.py"
    summary = __import__("json").loads(result.stdout.strip().splitlines()[-1])
    assert summary["lada_config"] == str(config_path) and str(config_path) in summary["lada_cli"]
    model_cfg = Config.fromfile(str(config_path)).model
    assert model_cfg["type"] == "BasicVSRPlusPlusGan" and model_cfg["is_use_ema"] is True
    net_cfg = model_cfg["generator"]
    assert net_cfg["type"] == "BasicVSRPlusPlusGanNet"
    built = BasicVSRPlusPlusNet(net_cfg["mid_channels"], net_cfg["num_blocks"])
    weights = torch.load(tmp_path / "eggplant.pth", weights_only=True)["state_dict"]
    report = built.load_state_dict(ckpt.split_prefix(weights, "generator_ema."), strict=True)
    assert not report.missing_keys and not report.unexpected_keys
    x = torch.rand(1, 2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(built.eval()(x), gen.eval()(x))
    # Lada's default size: no warning, and the config still says so
    torch.save({"meta": {}, "state_dict": ckpt.lada_state_dict(BasicVSRPlusPlusNet(64, 15))}, tmp_path / "big.pth")
    quiet = CliRunner().invoke(app, ["export", str(tmp_path / "big.pth"), "-o", str(tmp_path / "lada64.pth")])
    assert quiet.exit_code == 0 and "WARNING" not in quiet.stderr
    assert Config.fromfile(str(tmp_path / "lada64_lada_config.py")).model["generator"]["mid_channels"] == 64
