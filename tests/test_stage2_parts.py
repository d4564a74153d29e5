"""Stage-2 building blocks: U-Net SN discriminator (mmagic key contract), VGG19 perceptual loss, GAN loss."""

from __future__ import annotations

import math

import pytest
import torch

from assets.weights import LFS_POINTER_PREFIX
from training.discriminator import UNetDiscriminatorWithSpectralNorm
from training.gan_loss import GANLoss
from training.perceptual import PerceptualLoss, VGG19Features, _vgg19_features

# Derived from mmagic's mmagic/models/editors/real_esrgan/unet_disc.py: conv_0 and conv_9 are plain convs with
# bias; conv_1..conv_8 are bias-free and wrapped in torch.nn.utils.spectral_norm (weight_orig/_u/_v).
SN_SUFFIXES = ("weight_orig", "weight_u", "weight_v")
EXPECTED_DISC_KEYS = (
    ["conv_0.weight", "conv_0.bias"]
    + [f"conv_{i}.{s}" for i in range(1, 9) for s in SN_SUFFIXES]
    + ["conv_9.weight", "conv_9.bias"]
)
# mid_channels=64 shapes of the weights (out, in, k, k), from the same source.
EXPECTED_DISC_SHAPES = {
    "conv_0.weight": (64, 3, 3, 3),
    "conv_1.weight_orig": (128, 64, 4, 4),
    "conv_2.weight_orig": (256, 128, 4, 4),
    "conv_3.weight_orig": (512, 256, 4, 4),
    "conv_4.weight_orig": (256, 512, 3, 3),
    "conv_5.weight_orig": (128, 256, 3, 3),
    "conv_6.weight_orig": (64, 128, 3, 3),
    "conv_7.weight_orig": (64, 64, 3, 3),
    "conv_8.weight_orig": (64, 64, 3, 3),
    "conv_9.weight": (1, 64, 3, 3),
}

SMALL_LAYERS = {"2": 0.1, "7": 0.1, "16": 1.0}  # keeps the perceptual tests fast; full default checked separately


# --- discriminator -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def disc() -> UNetDiscriminatorWithSpectralNorm:
    torch.manual_seed(0)
    return UNetDiscriminatorWithSpectralNorm(in_channels=3, mid_channels=64, skip_connection=True).eval()


@pytest.mark.parametrize("hw", [(64, 64), (64, 96)])
def test_discriminator_output_is_one_logit_per_pixel(disc, hw):
    with torch.no_grad():
        out = disc(torch.rand(2, 3, *hw))
    assert out.shape == (2, 1, *hw)
    assert torch.isfinite(out).all()


def test_discriminator_keys_match_mmagic_exactly(disc):
    state = disc.state_dict()
    assert list(state) == EXPECTED_DISC_KEYS
    for key, shape in EXPECTED_DISC_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    # power-iteration vectors: u has the out-channels length, v the flattened in*k*k length
    assert state["conv_1.weight_u"].shape == (128,) and state["conv_1.weight_v"].shape == (64 * 16,)


def test_spectral_norm_on_inner_convs_only(disc):
    keys = set(disc.state_dict())
    for i in range(1, 9):
        assert f"conv_{i}.weight_orig" in keys and f"conv_{i}.bias" not in keys
    for i in (0, 9):
        assert f"conv_{i}.weight" in keys and f"conv_{i}.weight_orig" not in keys
    # the classic hook, not torch.nn.utils.parametrizations (whose keys mmagic checkpoints lack)
    assert not any("parametrizations" in k for k in keys)


def test_discriminator_state_dict_round_trip(disc, tmp_path):
    # A train-mode step moves u/v away from their init so the round trip has to carry them.
    disc.train()
    disc(torch.rand(1, 3, 32, 32))
    disc.eval()
    path = tmp_path / "disc.pth"
    torch.save(disc.state_dict(), path)
    fresh = UNetDiscriminatorWithSpectralNorm()
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    fresh.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), disc(x))


def test_discriminator_skip_connection_flag_changes_output_not_keys(disc):
    plain = UNetDiscriminatorWithSpectralNorm(skip_connection=False)
    plain.load_state_dict(disc.state_dict(), strict=True)
    plain.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), disc(x))


def test_discriminator_rejects_size_not_divisible_by_8(disc):
    with pytest.raises(ValueError, match="divisible by 8"):
        disc(torch.rand(1, 3, 60, 64))


# --- perceptual loss -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ploss() -> PerceptualLoss:
    return PerceptualLoss(layer_weights=SMALL_LAYERS, vgg_weights=None, seed=0)


def test_perceptual_identical_inputs_give_zero(ploss):
    x = torch.rand(1, 3, 64, 64)
    assert ploss(x, x.clone()).item() == 0.0


def test_perceptual_grows_with_noise(ploss):
    gen = torch.Generator().manual_seed(1)
    gt = torch.rand(1, 3, 64, 64, generator=gen)
    noise = torch.randn(1, 3, 64, 64, generator=gen)
    losses = [ploss((gt + s * noise).clamp(0, 1), gt).item() for s in (0.02, 0.1, 0.3)]
    assert 0 < losses[0] < losses[1] < losses[2], losses


def test_perceptual_random_init_is_seeded_and_labelled():
    x, gt = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    a = PerceptualLoss(layer_weights={"7": 1.0}, seed=3)
    b = PerceptualLoss(layer_weights={"7": 1.0}, seed=3)
    c = PerceptualLoss(layer_weights={"7": 1.0}, seed=4)
    assert a(x, gt).item() == b(x, gt).item()
    assert a(x, gt).item() != c(x, gt).item()
    assert a.pretrained is False and "random-init" in a.weights_label


def test_perceptual_default_layers_and_weights_applied():
    loss = PerceptualLoss(vgg_weights=None, perceptual_weight=0.05)
    assert loss.layer_weights == {"2": 0.1, "7": 0.1, "16": 1.0, "25": 1.0, "34": 1.0}
    assert len(loss.vgg.vgg_layers) == 35  # truncated after the deepest layer, '34'
    keys = set(loss.state_dict())  # mmagic PerceptualLoss names: vgg.vgg_layers.N.*, vgg.mean, vgg.std
    convs = [i for i, m in enumerate(loss.vgg.vgg_layers) if isinstance(m, torch.nn.Conv2d)]
    assert keys == {"vgg.mean", "vgg.std"} | {f"vgg.vgg_layers.{i}.{p}" for i in convs for p in ("weight", "bias")}
    assert convs[-1] == 34 and len(convs) == 16
    x, gt = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    feats_x, feats_gt = loss.vgg(x), loss.vgg(gt)
    by_hand = sum(w * (feats_x[k] - feats_gt[k]).abs().mean() for k, w in loss.layer_weights.items()) * 0.05
    assert torch.allclose(loss(x, gt), by_hand)


def test_perceptual_bgr_input_is_flipped_to_rgb():
    bgr = VGG19Features(["2"], channel_order="bgr", seed=0)
    rgb = VGG19Features(["2"], channel_order="rgb", seed=0)
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(bgr(x)["2"], rgb(x.flip(1))["2"])
    assert not torch.allclose(bgr(x)["2"], rgb(x)["2"])


def test_perceptual_loads_torchvision_style_file(tmp_path):
    torch.manual_seed(123)
    source = _vgg19_features()
    # torchvision's file is the whole VGG19: features.* plus classifier.* (a stand-in tensor suffices)
    state = {f"features.{k}": v for k, v in source.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)
    path = tmp_path / "my_vgg19.pth"
    torch.save(state, path)
    vgg = VGG19Features(["2", "7"], vgg_weights=path, use_input_norm=False, channel_order="rgb")
    assert vgg.pretrained is True and "my_vgg19.pth" in vgg.weights_label
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = source[:8](x)
        feats = vgg(x)
        assert torch.allclose(feats["7"], expected)
        # '2' is a conv followed by a ReLU: the captured activation must be the pre-ReLU one
        assert torch.allclose(feats["2"], source[:3](x)) and (feats["2"] < 0).any()
    # a features-only file works too
    only = tmp_path / "features_only.pth"
    torch.save(source.state_dict(), only)
    vgg2 = VGG19Features(["7"], vgg_weights=only, use_input_norm=False, channel_order="rgb")
    with torch.no_grad():
        assert torch.allclose(vgg2(x)["7"], expected)


def test_perceptual_canonical_name_checks_hash_prefix(tmp_path):
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(_vgg19_features().state_dict(), path)  # right name, wrong bytes
    with pytest.raises(FileNotFoundError, match="vgg19-dcbb9e9d.pth.*dcbb9e9d"):
        VGG19Features(["2"], vgg_weights=path)


def test_perceptual_missing_and_lfs_pointer_name_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "vgg19.pth"
    with pytest.raises(FileNotFoundError, match=r"nowhere.vgg19\.pth.*not found"):
        PerceptualLoss(vgg_weights=missing)
    pointer = tmp_path / "pointer_vgg19.pth"
    pointer.write_bytes(LFS_POINTER_PREFIX + b"v1\noid sha256:abc\nsize 574673361\n")
    with pytest.raises(FileNotFoundError, match=r"pointer_vgg19\.pth.*Git-LFS pointer"):
        PerceptualLoss(vgg_weights=pointer)


def test_perceptual_wrong_state_dict_names_the_file(tmp_path):
    path = tmp_path / "not_vgg.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(FileNotFoundError, match=r"not_vgg\.pth.*not a VGG19 state dict"):
        VGG19Features(["2"], vgg_weights=path)
    garbage = tmp_path / "truncated.pth"
    garbage.write_bytes(b"\x80\x02 not a zip or pickle")
    with pytest.raises(FileNotFoundError, match=r"truncated\.pth.*cannot be read"):
        VGG19Features(["2"], vgg_weights=garbage)


@pytest.mark.parametrize("bad", ["37", "-1", "relu1_1", "02"])
def test_perceptual_invalid_layer_key_is_named(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        PerceptualLoss(layer_weights={"2": 0.1, bad: 1.0})


def test_perceptual_gradients_reach_input_not_vgg(ploss):
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    ploss.train()  # a trainer's .train() must not unfreeze or un-eval the loss network
    ploss(x, torch.rand(1, 3, 32, 32)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in ploss.parameters())
    assert all(p.grad is None for p in ploss.parameters())
    assert not ploss.vgg.training


# --- GAN loss ------------------------------------------------------------------------------------------------


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_vanilla_matches_hand_computed_bce():
    logits = torch.tensor([[-2.0, 0.0], [0.5, 3.0]])
    gan = GANLoss("vanilla")
    real = sum(_bce(v, 1.0) for v in logits.flatten().tolist()) / 4
    fake = sum(_bce(v, 0.0) for v in logits.flatten().tolist()) / 4
    assert gan(logits, True, is_disc=True).item() == pytest.approx(real, rel=1e-6)
    assert gan(logits, False, is_disc=True).item() == pytest.approx(fake, rel=1e-6)


def test_loss_weight_applies_to_generator_only():
    logits = torch.tensor([0.3, -1.2, 2.0])
    base = GANLoss("vanilla", loss_weight=1.0)
    weighted = GANLoss("vanilla", loss_weight=0.02)
    assert weighted(logits, True, is_disc=False).item() == pytest.approx(0.02 * base(logits, True).item())
    assert weighted(logits, True, is_disc=True).item() == pytest.approx(base(logits, True, is_disc=True).item())
    assert GANLoss("vanilla", loss_weight=0.0)(logits, True).item() == 0.0


def test_lsgan_and_label_values():
    x = torch.tensor([0.5, 2.0])
    gan = GANLoss("lsgan", real_label_val=0.9, fake_label_val=0.1)
    assert gan(x, True, is_disc=True).item() == pytest.approx(((0.5 - 0.9) ** 2 + (2.0 - 0.9) ** 2) / 2)
    assert gan(x, False, is_disc=True).item() == pytest.approx(((0.5 - 0.1) ** 2 + (2.0 - 0.1) ** 2) / 2)


def test_hinge_losses():
    x = torch.tensor([-0.5, 0.2, 1.5, 3.0])
    gan = GANLoss("hinge", loss_weight=0.5)
    assert torch.allclose(gan(x, True, is_disc=True), torch.relu(1 - x).mean())
    assert torch.allclose(gan(x, False, is_disc=True), torch.relu(1 + x).mean())
    assert torch.allclose(gan(x, True, is_disc=False), -x.mean() * 0.5)


def test_unknown_gan_type_raises():
    with pytest.raises(ValueError, match="'wgan-gp'"):
        GANLoss("wgan-gp")
