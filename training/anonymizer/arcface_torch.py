"""ArcFace as a differentiable torch module, for the identity-suppression loss when an insightface pack is set.

`anonymization.arcface_pack` names a folder holding insightface's `w600k_r50.onnx` (buffalo_l pack; its own
non-commercial licence, never bundled). The ONNX graph is converted to torch with onnx2torch, so gradients flow
from the embedding into the generator; `evaluation.identity.ArcFaceIdentity` keeps running the same file with
onnxruntime as the evaluation backend, and `check_against_onnxruntime` holds the two to each other on the same
chips before training starts. The same interface as the dlib port (`face_embedder.DlibResNet`): `embed`
takes (N, 3, chip_size, chip_size) RGB in [0, 1], `similarity` is ArcFace's own metric, cosine.

Chips are the square around each face box resized to 112 px (`face_embedder.box_chips`), not insightface's
5-landmark alignment: the loss needs one differentiable crop of generated pixels, and the landmarks of a face
being replaced are not what the generator should be aligned to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from assets.weights import WeightsError, verify_weights
from evaluation.identity import ARCFACE_FILE, ARCFACE_SHA256, ARCFACE_SIZE

AGREEMENT_TOL = 1e-3  # max |torch - onnxruntime| per embedding component allowed before training starts


class ArcFaceConversionError(WeightsError):
    """The ONNX file cannot be converted, or the converted module disagrees with onnxruntime; names the file."""


class ArcFaceTorch(nn.Module):
    chip_size = ARCFACE_SIZE

    def __init__(self, graph: nn.Module, name: str):
        super().__init__()
        self.graph = graph
        self.name = name
        # The device anchor other embedders expose (validation reads `input_mean.device`).
        self.register_buffer("input_mean", torch.full((1, 3, 1, 1), 127.5))

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        """(N, 3, 112, 112) RGB in [0, 1] -> (N, D), insightface's input scaling (x - 127.5) / 127.5."""
        if chips.ndim != 4 or chips.shape[1] != 3 or tuple(chips.shape[2:]) != (self.chip_size, self.chip_size):
            raise ValueError(f"expected (N, 3, {self.chip_size}, {self.chip_size}) RGB chips, got {tuple(chips.shape)}")
        x = (chips.to(self.input_mean.dtype) * 255.0 - self.input_mean) / 127.5
        return self.graph(x).flatten(1)

    @staticmethod
    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(a, b, dim=1)


def load_arcface_embedder(pack_dir: str | Path, model_file: str = ARCFACE_FILE, sha256: str | None = ARCFACE_SHA256,
                          device: str | torch.device = "cpu", check: bool = True) -> ArcFaceTorch:
    """The pack's ArcFace converted with onnx2torch, frozen, checked against onnxruntime (see the module doc)."""
    from onnx2torch import convert

    pack_dir = Path(pack_dir)
    how = (f"put {model_file} from insightface's buffalo_l pack (non-commercial research licence) into {pack_dir}, "
           "or set anonymization.arcface_pack: null to use the dlib port")
    path = verify_weights(pack_dir / model_file, sha256, how)
    try:
        graph = convert(str(path))
    except Exception as err:  # noqa: BLE001 -- any converter failure is one clear error naming the file
        raise ArcFaceConversionError(f"{path}: onnx2torch cannot convert it ({type(err).__name__}: {err})") from None
    model = ArcFaceTorch(graph.eval().requires_grad_(False), f"arcface-{Path(model_file).stem}-torch").to(device)
    if check:
        check_against_onnxruntime(model, path)
    return model


@torch.no_grad()
def check_against_onnxruntime(model: ArcFaceTorch, onnx_path: Path, n: int = 2, seed: int = 0) -> float:
    """Largest |difference| between the converted module and onnxruntime on `n` seeded chips; raises above
    AGREEMENT_TOL. Returns the difference."""
    import onnxruntime as ort

    chips = torch.from_numpy(np.random.default_rng(seed).random((n, 3, model.chip_size, model.chip_size),
                                                               dtype=np.float32))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    blob = ((chips.numpy() * 255.0 - 127.5) / 127.5).astype(np.float32)
    fixed_one = session.get_inputs()[0].shape[0] == 1
    expected = np.concatenate([session.run(None, {name: blob[i:i + 1]})[0] for i in range(n)] if fixed_one
                              else [session.run(None, {name: blob})[0]]).reshape(n, -1)
    got = model.embed(chips.to(model.input_mean.device)).cpu().numpy()
    diff = float(np.abs(got - expected).max())
    if not diff <= AGREEMENT_TOL:
        raise ArcFaceConversionError(f"{onnx_path}: converted module differs from onnxruntime by {diff:.2e} "
                                     f"(> {AGREEMENT_TOL}); the conversion is not trustworthy")
    return diff
