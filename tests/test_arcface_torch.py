"""ArcFace through onnx2torch (training/anonymizer/arcface_torch.py), checked against onnxruntime.

insightface's w600k_r50.onnx cannot be had offline (non-commercial licence, never bundled), so the graph here is
a small network of the layer kinds that ResNet-ArcFace uses (conv, batch norm, PReLU, residual add, flatten,
linear, batch-norm-1d output), exported to ONNX by torch's TorchScript exporter the way insightface's models
were, with its input name and shape. What is tested is the conversion path, the onnxruntime check and the
errors; the real file goes through the same code when `anonymization.arcface_pack` names its folder."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from assets.weights import WeightsError
from training.anonymizer.arcface_torch import ArcFaceConversionError, check_against_onnxruntime, load_arcface_embedder


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.PReLU(c),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


def _arcface_like(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16), _Block(16),
        nn.Conv2d(16, 32, 3, 2, 1, bias=False), _Block(32), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(32 * 16, 512), nn.BatchNorm1d(512),
    )
    for m in model.modules():  # non-trivial running statistics, as a trained network has
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("buffalo_l")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_arcface_like(), (torch.rand(1, 3, 112, 112),), str(folder / "w600k_r50.onnx"),
                          dynamo=False, input_names=["input.1"], output_names=["embedding"], opset_version=13)
    return folder


def test_converted_module_agrees_with_onnxruntime_and_passes_gradients(pack):
    model = load_arcface_embedder(pack, sha256=None)  # checks against onnxruntime itself
    assert check_against_onnxruntime(model, pack / "w600k_r50.onnx", n=3, seed=5) < 1e-4
    chips = torch.rand(2, 3, 112, 112, requires_grad=True)
    emb = model.embed(chips)
    assert emb.shape == (2, 512)
    emb.sum().backward()
    assert chips.grad is not None and float(chips.grad.abs().sum()) > 0
    assert all(not p.requires_grad for p in model.parameters())  # frozen: only the generator learns
    same = model.similarity(emb.detach(), emb.detach())
    assert torch.allclose(same, torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="112"):
        model.embed(torch.rand(1, 3, 150, 150))


def test_a_wrong_checksum_an_lfs_pointer_and_a_broken_file_are_named(pack, tmp_path):
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_arcface_embedder(pack)  # the real file's sha256 is expected by default
    (tmp_path / "w600k_r50.onnx").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    with pytest.raises(WeightsError, match="Git-LFS pointer"):
        load_arcface_embedder(tmp_path, sha256=None)
    (tmp_path / "w600k_r50.onnx").write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(ArcFaceConversionError, match="w600k_r50.onnx: onnx2torch cannot convert"):
        load_arcface_embedder(tmp_path, sha256=None)
    with pytest.raises(WeightsError, match="not found"):
        load_arcface_embedder(tmp_path / "nowhere", sha256=None)


def test_the_loop_uses_arcface_when_a_pack_is_set(pack, tmp_path):
    """One generator step of the joint loop with the converted ArcFace as the identity embedder."""
    from tests import test_anonymizer_loop as loop_tests
    from tests.test_anonymizer_loop import settings
    from training.anonymizer.joint_loop import train_anonymizer

    class Factory:  # the loop tests' module fixture builds its tiny COCO set and base here
        def mktemp(self, name: str) -> Path:
            (tmp_path / name).mkdir()
            return tmp_path / name

    w = loop_tests.world.__wrapped__(Factory())
    s = settings(w, tmp_path / "run", id_suppress_weight=1.0, arcface_pack=pack, arcface_sha256=None, max_steps=1,
                 num_val_samples=0, save_every_steps=1, discriminator_enabled=False, adv_weight=0.0)
    result = train_anonymizer(s)
    assert "arcface" in result.labels["embedder"]
    assert result.history[0]["id_suppress"] >= 0
