"""Apply a trained BasicVSR++ to a clip of any size: the one inference path for validation, whole-video
restoration, reports and training sample grids."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.basicvsrpp import BasicVSRPlusPlusNet
from training.geometry import fit_frames, to_frames, to_tensor, unfit_frames


INFERENCE_HOW_TO_GET = (
    "pass --checkpoint a trained generator: data/models/restoration/stage2/generator.pth (or stage1/) after "
    "`make demo`, or Lada's lada_mosaic_restoration_model_generic_v1.2.pth"
)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for, but this machine has no CUDA device; use --device cpu")
    return torch.device(device)


@dataclass
class Restorer:
    model: BasicVSRPlusPlusNet
    size: int = 256
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    max_frames: int = 30  # frames per forward pass; longer clips are cut (Lada's inference does the same)
    fp16: bool = False  # half precision on CUDA only

    def __post_init__(self):
        self.model = self.model.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, size: int | None = None, device: str = "auto", sha256: str | None = None,
                        max_frames: int = 30, fp16: bool = False) -> "Restorer":
        """`size` None: the input side recorded in the file (`input_size`), else Lada's 256."""
        from training.checkpoints import input_size_of, load_generator

        model, info = load_generator(path, sha256, how_to_get=INFERENCE_HOW_TO_GET)
        trained = info["meta"].get("input_size")
        if size and trained and int(trained) != size:
            warnings.warn(f"{path}: trained at {trained} px, run at {size} px; results degrade off the trained size",
                          stacklevel=2)
        dev = pick_device(device)
        return cls(model, size or input_size_of(info["meta"]), dev, max_frames, fp16 and dev.type == "cuda")

    @torch.inference_mode()
    def restore_square(self, squares: np.ndarray) -> np.ndarray:
        """(t, size, size, 3) RGB uint8 → the same, restored."""
        out = []
        for start in range(0, len(squares), self.max_frames):
            chunk = squares[start : start + self.max_frames]
            n = len(chunk)
            if n < 2:  # the network needs two frames for its flow: repeat the single frame
                chunk = np.concatenate([chunk, chunk])
            x = to_tensor(chunk).unsqueeze(0).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
                y = self.model(x)[0]
            out.append(to_frames(y)[:n])
        return np.concatenate(out)

    def restore(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Frames of one clip (same size, RGB uint8) → restored frames of the same size."""
        if not frames:
            return []
        squares, fit = fit_frames(frames, self.size)
        return unfit_frames(self.restore_square(squares), fit)
