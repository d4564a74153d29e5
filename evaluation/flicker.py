"""Flicker of an anonymized video: how much a replaced region changes from one frame to the next, against how
much the same region changed in the original.

For every track present on two consecutive frames, inside its region on the later frame (a face's inscribed
ellipse, a plate's box): the mean absolute difference of the output frames, and the same of the input
frames. The ratio of the two means (pooled over all such pairs) is the flicker ratio: about 1 = the
replacement moves as much as the person or plate did; well above 1 = it flickers (a new face every frame);
below 1 = steadier than the original (a static patch, as blur or fill of a still region give).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _inside(kind: str, box, shape) -> tuple[slice, slice, np.ndarray] | None:
    """The region's bounding slices and, within them, the pixels the anonymization methods may change
    (`inference.anonymize_methods.region_mask`, evaluated on the box's bounds only); None when empty."""
    from inference.anonymize_methods import region_mask

    x, y, w, h = (float(v) for v in box)
    H, W = shape[:2]
    x0, y0, x1, y1 = max(0, int(np.floor(x))), max(0, int(np.floor(y))), min(W, int(np.ceil(x + w))), min(H, int(np.ceil(y + h)))
    if x1 <= x0 or y1 <= y0:
        return None
    mask = region_mask(kind, (x - x0, y - y0, w, h), (y1 - y0, x1 - x0))
    return (slice(y0, y1), slice(x0, x1), mask) if mask.any() else None


def _change(current: np.ndarray, previous: np.ndarray, inside: tuple[slice, slice, np.ndarray]) -> float:
    ys, xs, mask = inside
    diff = np.abs(current[ys, xs].astype(np.int16) - previous[ys, xs].astype(np.int16))
    return float(diff[mask].mean())


def region_change(current: np.ndarray, previous: np.ndarray, kind: str, box) -> float | None:
    """Mean absolute difference (0-255 scale) of two frames inside one region; None when the region is empty."""
    inside = _inside(kind, box, current.shape)
    return None if inside is None else _change(current, previous, inside)


@dataclass
class FlickerMeter:
    """Fed frame by frame while a video is anonymized; `summary()` gives the means and their ratio."""

    output_change: float = 0.0
    original_change: float = 0.0
    pairs: int = 0

    def __post_init__(self) -> None:
        self._previous_tracks: set[int] = set()

    def add(self, frame_in: np.ndarray, frame_out: np.ndarray, previous_in: np.ndarray | None,
            previous_out: np.ndarray | None, tracked: list[tuple[int, object]]) -> None:
        """`tracked`: (track id, region with `kind` and COCO `box`) present on this frame."""
        if previous_in is not None and previous_out is not None:
            for track, region in tracked:
                if track not in self._previous_tracks:
                    continue
                inside = _inside(region.kind, region.box, frame_in.shape)  # one mask for both differences
                if inside is None:
                    continue
                self.output_change += _change(frame_out, previous_out, inside)
                self.original_change += _change(frame_in, previous_in, inside)
                self.pairs += 1
        self._previous_tracks = {track for track, _ in tracked}

    def summary(self) -> dict:
        if not self.pairs:
            return {"pairs": 0, "output_change": None, "original_change": None, "ratio": None}
        out, orig = self.output_change / self.pairs, self.original_change / self.pairs
        return {"pairs": self.pairs, "output_change": round(out, 4), "original_change": round(orig, 4),
                "ratio": round(out / orig, 4) if orig > 0 else None}
