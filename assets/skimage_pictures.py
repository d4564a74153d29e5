"""scikit-image's bundled sample pictures that the lineage never uses: what the set-up pretraining of the
embedded stand-ins (the inpainting base and the detector base) draws backgrounds, textures and text from.

Public domain / CC0 (skimage/data/README). The astronaut is left out: it is rendered into a lineage clip.
"""

from __future__ import annotations

import numpy as np

GENERIC_IMAGES = ("rocket", "coffee", "chelsea", "camera", "coins", "text", "page", "brick", "grass", "gravel")


def generic_images() -> list[np.ndarray]:
    """The GENERIC_IMAGES as RGB uint8 arrays (grey ones repeated to 3 channels), in that order."""
    import skimage.data

    out = []
    for name in GENERIC_IMAGES:
        image = np.asarray(getattr(skimage.data, name)())
        out.append(np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3])
    return out
