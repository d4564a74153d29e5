"""Is the eggplant visible? Figures that PSNR/SSIM do not give, on the restorer's output against the eggplant GT.

PSNR inside the region rewards a model that blurs the mosaic's block edges towards the GT's flat colours as much
as one that paints an eggplant; a whole-crop purple tint can even raise it. So the report adds, per region:

- **low-pass region PSNR** (`lowpass_*`): both frames blurred with an 8-px box (`LOWPASS_PX`) before PSNR inside
  the region: shape and colour, not block edges;
- **the eggplant's own colours** (`purple_iou`, `green_iou`): pixels inside the region classed as the sprite's
  purple body or green cap by hue and saturation (`sprite_colours`), in the GT and in the output; IoU of the two,
  pooled over every frame (sum of intersections / sum of unions). A mosaic or a tint scores near 0, an eggplant at
  the region's place and pose near 1;
- **changed outside** (`changed_outside_share`): the share of pixels OUTSIDE the region (beyond a band of
  `OUTSIDE_BAND` of the crop's side, where the mosaic's feather and the blend edge live) whose mean absolute
  difference from the GT (= the original there) exceeds `CHANGED_LEVELS` grey levels. A global tint scores
  near 1, a model that leaves the surroundings alone near 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from evaluation.restoration_metrics import psnr_from_mse

LOWPASS_PX = 8
CHANGED_LEVELS = 12.0  # mean over channels, 0-255
OUTSIDE_BAND = 0.04  # share of the crop's longer side kept clear around the region
# OpenCV hue is 0-179. The emoji's body sits at 120-180 (1 % of it wraps past 0, where skin tones are: left out),
# its cap at 30-55; the GT's colour match to the surroundings (eggplant.color_match) moves saturation more than hue.
PURPLE_HUES = (120, 180)
GREEN_HUES = (25, 75)
MIN_SATURATION = (50, 80)  # purple, green


def sprite_colours(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(purple, green) bool masks of an RGB uint8 frame: pixels of the eggplant sprite's two colours."""
    hsv = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2HSV)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    lit = v >= 30
    purple = (h >= PURPLE_HUES[0]) & (h < PURPLE_HUES[1]) & (s >= MIN_SATURATION[0]) & lit
    green = (h >= GREEN_HUES[0]) & (h < GREEN_HUES[1]) & (s >= MIN_SATURATION[1]) & lit
    return purple, green


def lowpass(frame: np.ndarray) -> np.ndarray:
    return cv2.blur(frame.astype(np.float32), (LOWPASS_PX, LOWPASS_PX))


def outside_mask(region: np.ndarray) -> np.ndarray:
    """Pixels clear of the region by OUTSIDE_BAND of the crop's longer side."""
    band = max(1, int(round(OUTSIDE_BAND * max(region.shape[:2]))))
    grown = cv2.dilate(region.astype(np.uint8), np.ones((2 * band + 1, 2 * band + 1), np.uint8))
    return grown == 0


@dataclass
class Visibility:
    """Pooled sums over frames; `metrics()` gives the report's figures."""

    lowpass_se_input: float = 0.0  # squared error sums inside the region, per channel value
    lowpass_se_output: float = 0.0
    region_values: int = 0
    purple_inter: int = 0
    purple_union: int = 0
    green_inter: int = 0
    green_union: int = 0
    purple_inter_input: int = 0  # the same for the mosaic input: what the colours score with no eggplant at all
    purple_union_input: int = 0
    green_inter_input: int = 0
    green_union_input: int = 0
    outside_changed: int = 0
    outside_pixels: int = 0

    def add(self, gt: np.ndarray, lq: np.ndarray, out: np.ndarray, mask: np.ndarray) -> None:
        """One frame's crop (RGB uint8, pad cut away) and its region mask (0/255, 2-D or 3-D)."""
        region = (mask[..., 0] if mask.ndim == 3 else mask) > 127
        if region.any():
            g = lowpass(gt)[region]
            self.lowpass_se_input += float(((lowpass(lq)[region] - g) ** 2).sum())
            self.lowpass_se_output += float(((lowpass(out)[region] - g) ** 2).sum())
            self.region_values += g.size
            reference = sprite_colours(gt)
            for suffix, frame in (("", out), ("_input", lq)):
                for ref, test, name in zip(reference, sprite_colours(frame), ("purple", "green")):
                    ref, test = ref & region, test & region
                    for part, count in (("inter", ref & test), ("union", ref | test)):
                        key = f"{name}_{part}{suffix}"
                        setattr(self, key, getattr(self, key) + int(count.sum()))
        outside = outside_mask(region)
        diff = cv2.absdiff(out, gt).astype(np.float32).mean(axis=2)
        self.outside_changed += int((diff[outside] > CHANGED_LEVELS).sum())
        self.outside_pixels += int(outside.sum())

    def metrics(self) -> dict:
        out: dict = {}
        if self.region_values:
            lin = psnr_from_mse(self.lowpass_se_input / self.region_values)
            lout = psnr_from_mse(self.lowpass_se_output / self.region_values)
            out.update(lowpass_psnr_region_input=lin, lowpass_psnr_region_output=lout, lowpass_region_gain_db=lout - lin)
        for name in ("purple", "green"):
            for suffix in ("", "_input"):
                union = getattr(self, f"{name}_union{suffix}")
                out[f"{name}_iou{suffix}"] = getattr(self, f"{name}_inter{suffix}") / union if union else None
        out["changed_outside_share"] = self.outside_changed / self.outside_pixels if self.outside_pixels else None
        return out
