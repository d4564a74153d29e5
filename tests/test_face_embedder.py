"""The PyTorch port of dlib's face-recognition ResNet against dlib itself, on real faces, offline.

Chips: dlib's own 150x150 aligned chips (HOG detector + 5-point shape predictor + get_face_chip, padding 0.25 --
what DlibIdentity's compute_face_descriptor(image, shape) uses internally) of skimage's astronaut, matplotlib's
Grace Hopper and frames 0 / 40 of data/raw/carphone_pristine.mp4 (x3 upscaled), plus skimage's lfw_subset faces
resized to 150x150 (unaligned grey faces: more real inputs for the numeric comparison, not for identity).

Tolerance: on 33 chips (these plus more carphone frames and lfw faces) the port's descriptors differ from
dlib's by at most 3.7e-7 (mean 7e-8; descriptors have norm ~1.4) and pairwise distances by at most 4.8e-7,
i.e. float32 rounding from a different summation order in 29 conv layers. We allow 1e-5: ~25x headroom for
other CPUs / BLAS kernels, and still ~3 orders of magnitude below anything that could move a decision at the
0.6 threshold in practice.

The differentiable chip extraction (extract_face_chips) is held to dlib's get_face_chip / full
compute_face_descriptor(image, shape) path with the looser, measured bounds noted at its assertions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from assets.weights import WeightsError
from evaluation.identity import DLIB_DISTANCE_THRESHOLD, DLIB_RESNET_FILE, DLIB_SHAPE5_FILE
from training.anonymizer.face_embedder import (
    CHIP_SIZE, DESCRIPTOR_DIM, DlibFormatError, DlibResNet, default_dat_path, extract_face_chips,
    load_dlib_embedder, parse_dlib_resnet,
)

from tests.test_eval_identity import carphone_frames

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR_TOL = 1e-5


@pytest.fixture(scope="module")
def dlib_models():
    import dlib

    models = default_dat_path().parent
    return (dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(models / DLIB_SHAPE5_FILE)),
            dlib.face_recognition_model_v1(str(models / DLIB_RESNET_FILE)))


@pytest.fixture(scope="module")
def chips(dlib_models) -> dict[str, np.ndarray]:
    """name -> (150, 150, 3) uint8 RGB chip."""
    import cv2
    import matplotlib
    import skimage.data
    from PIL import Image

    dlib, detector, shape, _ = dlib_models

    def best_chip(image):
        rects, scores, _ = detector.run(image, 0, 0.0)
        assert len(rects), "no face found"
        face = shape(image, rects[int(np.argmax(scores))])
        return dlib.get_face_chip(image, face, size=CHIP_SIZE, padding=0.25)

    hopper_jpg = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    hopper = np.asarray(Image.open(hopper_jpg).convert("RGB"))
    frame0, frame40 = carphone_frames((0, 40))
    out = {"astronaut": best_chip(skimage.data.astronaut()), "hopper": best_chip(hopper),
           "carphone0": best_chip(frame0), "carphone40": best_chip(frame40)}
    for j, face in enumerate(skimage.data.lfw_subset()[:6]):  # the first 100 of lfw_subset are faces
        grey = cv2.resize((face * 255).round().astype(np.uint8), (CHIP_SIZE, CHIP_SIZE), interpolation=cv2.INTER_CUBIC)
        out[f"lfw{j}"] = np.repeat(grey[..., None], 3, axis=2)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def model() -> DlibResNet:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_dlib_embedder()


def _as_tensor(chips: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255.0


def _pairwise(d: np.ndarray) -> np.ndarray:
    return np.linalg.norm(d[:, None] - d[None], axis=-1)


def test_descriptors_match_dlib(model, chips, dlib_models):
    net = dlib_models[3]
    names = list(chips)
    ref = np.array([net.compute_face_descriptor(chips[k]) for k in names])
    with torch.no_grad():
        ours = model.embed(_as_tensor([chips[k] for k in names])).double().numpy()
    assert ours.shape == (len(names), DESCRIPTOR_DIM)
    assert np.abs(ours - ref).max() < DESCRIPTOR_TOL  # measured 3.7e-7

    iu = np.triu_indices(len(names), 1)
    d_ref, d_ours = _pairwise(ref)[iu], _pairwise(ours)[iu]
    assert np.abs(d_ref - d_ours).max() < 2 * DESCRIPTOR_TOL  # measured 4.8e-7
    np.testing.assert_array_equal(d_ours < DLIB_DISTANCE_THRESHOLD, d_ref < DLIB_DISTANCE_THRESHOLD)

    # and the port is a working face recogniser, not just a numeric copy
    dist = dict(zip(((names[i], names[j]) for i, j in zip(*iu)), d_ours))
    assert dist["carphone0", "carphone40"] < DLIB_DISTANCE_THRESHOLD
    assert dist["astronaut", "carphone0"] > DLIB_DISTANCE_THRESHOLD
    assert dist["astronaut", "hopper"] > DLIB_DISTANCE_THRESHOLD


def test_gradients_flow_to_the_input_only(model, chips):
    target = model.embed(_as_tensor([chips["carphone0"]])).detach()
    x = _as_tensor([chips["astronaut"], chips["hopper"]]).requires_grad_(True)
    loss = -(model.embed(x) - target).norm(dim=1).sum()  # identity suppression: push away from the target
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_gradient_matches_finite_differences(chips):
    # float64 so a tiny step is accurate. The step must be tiny: the net is piecewise linear (relu, max-pool), and
    # at eps=1e-5 enough units flip sign along a random direction to shift the quotient by ~1%; at 1e-7 none do,
    # so rtol=1e-4 leaves ample room for an unlucky kink while catching any real error in the backward path.
    model = load_dlib_embedder().double()
    target = model.embed(_as_tensor([chips["carphone0"]]).double()).detach()
    # Dithered: a uint8 chip has exact ties (its black border, flat patches) where max-pool and relu are not
    # differentiable and autograd's subgradient differs from the two-sided quotient (0.25% on the raw chip).
    # A generator's continuous output has no such ties; dithered, the two agree to ~2e-9 relative (measured).
    chip = _as_tensor([chips["astronaut"]]).double()
    noise = torch.rand(chip.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5
    x = (chip + noise / 255.0).requires_grad_(True)

    def f(inp):
        return (model.embed(inp) - target).pow(2).sum()

    f(x).backward()
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-7
    with torch.no_grad():
        numeric = (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
    analytic = (x.grad * direction).sum()
    assert torch.isclose(analytic, numeric, rtol=1e-4), (float(analytic), float(numeric))


def test_rejects_non_chip_input(model):
    with pytest.raises(ValueError, match="150"):
        model.embed(torch.zeros(1, 3, 112, 112))


def test_missing_wrong_and_corrupt_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        parse_dlib_resnet(tmp_path / DLIB_RESNET_FILE)
    copy = tmp_path / "copy.dat"
    shutil.copyfile(default_dat_path(), copy)
    with copy.open("r+b") as fh:
        fh.truncate(copy.stat().st_size // 2)
    with pytest.raises(WeightsError, match="checksum"):
        parse_dlib_resnet(copy)
    with pytest.raises(DlibFormatError, match="truncated"):
        parse_dlib_resnet(copy, sha256=None)
    other = tmp_path / "shape5.dat"  # a real dlib file, but not this network
    shutil.copyfile(default_dat_path().parent / DLIB_SHAPE5_FILE, other)
    with pytest.raises(DlibFormatError):
        parse_dlib_resnet(other, sha256=None)


@pytest.mark.parametrize("upscale", [1, 3])
def test_differentiable_chips_follow_dlib(model, dlib_models, upscale):
    import cv2
    import skimage.data

    dlib, detector, shape, net = dlib_models
    image = skimage.data.astronaut()
    if upscale > 1:  # face rect ~360 px: dlib goes through its image pyramid
        image = cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    rects, scores, _ = detector.run(image, 0, 0.0)
    face = shape(image, rects[int(np.argmax(scores))])
    details = dlib.get_face_chip_details(face, CHIP_SIZE, 0.25)
    ref_chip = dlib.get_face_chip(image, face, size=CHIP_SIZE, padding=0.25)

    img = (torch.from_numpy(image).permute(2, 0, 1).double() / 255.0).requires_grad_(True)
    chip = extract_face_chips(img, [details])
    assert chip.shape == (1, 3, CHIP_SIZE, CHIP_SIZE)
    ours = chip[0].detach().permute(1, 2, 0).numpy() * 255.0
    if upscale == 1:
        # dlib truncates to uint8: floor() reproduces its chip but for values within rounding of an integer
        off = np.abs(np.floor(ours + 1e-9) - ref_chip)
        assert off.max() <= 1 and (off > 0).mean() < 1e-3  # measured 0 to 1 pixel of 67,500
    else:
        assert np.abs(ours - ref_chip).mean() < 2.0  # measured 1.0 grey levels

    descriptor = model.embed(chip.float())
    ref = np.asarray(net.compute_face_descriptor(image, face))
    gap = float(np.linalg.norm(descriptor[0].detach().double().numpy() - ref))
    assert gap < (0.01 if upscale == 1 else 0.03)  # measured 0.005 and 0.014

    descriptor.norm().backward()
    assert img.grad is not None and torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
