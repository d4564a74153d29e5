"""The records every face/plate source converts into, before `unified_coco` assembles them into one COCO set.

A converter reads one source (WIDER FACE txt, PP4AV YOLO txt, a COCO JSON, region_tracks frames, synthetic
plates) and returns a `Conversion`: the good images with their boxes, and one `Problem` per rejected line or
entry naming the file and where in it, so one bad line never loses the rest of the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Stable category ids: a contract with every COCO file, detector and report made here.
CATEGORIES = ({"id": 1, "name": "face", "supercategory": "privacy"}, {"id": 2, "name": "plate", "supercategory": "privacy"})
CATEGORY_IDS = {c["name"]: c["id"] for c in CATEGORIES}


@dataclass(frozen=True)
class Box:
    category: str  # "face" | "plate"
    x: float  # top-left, pixels
    y: float
    w: float
    h: float
    text: str | None = None  # plate text when known (synthetic plates), for OCR evaluation
    extra: dict = field(default_factory=dict, hash=False, compare=False)  # source attributes (WIDER blur, occlusion…)

    @property
    def xywh(self) -> list[float]:
        return [self.x, self.y, self.w, self.h]


@dataclass
class ImageRecord:
    path: Path  # absolute or cwd-relative path of the image file
    width: int
    height: int
    boxes: list[Box]
    source: str  # "wider_face" | "pp4av" | "coco:<name>" | "clip_frames" | "synthetic_plates"
    group: str  # images of one group always land in the same split (a clip, an original photo, an event)
    origin: str  # where it came from, for messages: "<file>:<line>" or "<file>#<entry>"
    split: str | None = None  # set by a source that splits by its own rule (synthetic faces: by person)


@dataclass(frozen=True)
class Problem:
    file: str
    where: str  # "line 12", "annotation id 7", "image id 3"
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {self.reason}"


@dataclass
class Conversion:
    images: list[ImageRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def extend(self, other: "Conversion") -> "Conversion":
        self.images.extend(other.images)
        self.problems.extend(other.problems)
        return self
