"""`mosaic_lq`: every scene's crop with a Lada-style mosaic of the ORIGINAL region (the LQ of the pairs),
the block-aligned mosaic mask, and the block sizes and mosaic parameters the Lada metadata records."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from assets.atomic import write_json
from assets.lada_meta import scene_name
from assets.mosaic import (
    DegradeSpec, MosaicSpec, apply_mosaic, block_size_v1, block_size_v2, block_size_v3, degrade_frame,
    sample_degrade, sample_spec, scene_rng,
)
from assets.region_tracks import full_frame_mask
from assets.scene_render import render_scenes
from assets.tracks import Scene
from assets.video import MASK_ENCODER, EncoderSettings


def scene_block_sizes(scene: Scene, shape: tuple[int, int], mask_shape: str) -> dict[str, float]:
    """Block sizes of the scene's representative frame: the one whose region has the median area."""
    areas = [(r[2] - r[0]) * (r[3] - r[1]) for r in scene.regions]
    rep = int(np.argsort(areas)[len(areas) // 2])
    mask = full_frame_mask(scene, rep, shape, mask_shape)
    x0, y0, x1, y1 = scene.regions[rep]
    return {
        "mosaic_size_v3": float(block_size_v3(shape)),
        "mosaic_size_v2": block_size_v2(max(x1 - x0, y1 - y0), shape),
        "mosaic_size_v1_normal": block_size_v1(float((mask > 0).sum()), shape),
        "mosaic_size_v1_bounding": block_size_v1(0.0, shape, bounding_area=float((x1 - x0) * (y1 - y0))),
    }


def region_change(original: np.ndarray, lq: np.ndarray, mask: np.ndarray, region) -> tuple[float, int]:
    """(sum over the region's pixels of the mean |LQ - original| of their channels, number of pixels): how much the
    mosaic shows. On a smooth region (a grey cartoon body) the blocks barely differ from what they cover, and the
    eggplant GT there cannot be learned from the LQ (`dataset.min_mosaic_change`)."""
    h, w = mask.shape[:2]
    # The region's box, one pixel wider: a drawn ellipse may reach a pixel past it.
    x0, y0, x1, y1 = (int(v) for v in region)
    x0, y0, x1, y1 = max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)
    inside = mask[y0:y1, x0:x1] > 127
    count = int(inside.sum())
    if not count:
        return 0.0, 0
    diff = cv2.absdiff(original[y0:y1, x0:x1], lq[y0:y1, x0:x1])
    return float(diff[inside].sum()) / diff.shape[2], count


def scene_specs(record: dict, mosaic, mask_shape: str, seed: int) -> tuple[dict, dict, dict]:
    """Per scene id: the seeded mosaic spec, degradation (or None) and block sizes of the clip's scenes; the
    mosaic detector's data (`assets.mosaic_coco`) draws the very same mosaics over whole frames."""
    shape = (record["height"], record["width"])
    specs: dict[int, MosaicSpec] = {}
    degrades: dict[int, DegradeSpec | None] = {}
    blocks: dict[int, dict] = {}
    for scene in record["scenes"]:
        rng = scene_rng(seed, record["clip_id"], scene.id, "mosaic")
        blocks[scene.id] = scene_block_sizes(scene, shape, mask_shape)
        specs[scene.id] = sample_spec(rng, blocks[scene.id]["mosaic_size_v1_normal"], mosaic)
        degrades[scene.id] = sample_degrade(rng, mosaic.degrade) if mosaic.degrade.enabled else None
    return specs, degrades, blocks


def mosaic_clip(record: dict, out_dir: Path, mosaic, encoder: EncoderSettings, mask_shape: str, seed: int) -> dict:
    shape = (record["height"], record["width"])
    specs, degrades, blocks = scene_specs(record, mosaic, mask_shape, seed)
    noise_rngs = {scene.id: scene_rng(seed, record["clip_id"], scene.id, "noise") for scene in record["scenes"]}
    change = {scene.id: [0.0, 0] for scene in record["scenes"]}  # sum of |LQ - original| inside the region, pixels

    def transform(scene, offset, frame):
        mask = full_frame_mask(scene, offset, shape, mask_shape)
        lq, lq_mask = apply_mosaic(frame, mask, specs[scene.id])
        if degrades[scene.id] is not None:
            lq = degrade_frame(lq, degrades[scene.id], noise_rngs[scene.id])
        total, count = region_change(frame, lq, mask, scene.regions[offset])
        change[scene.id][0] += total
        change[scene.id][1] += count
        return {"frames": lq, "mask": lq_mask}

    def lq_encoder(scene):
        spec = degrades[scene.id]
        return encoder if spec is None else replace(encoder, crf=spec.crf)

    clip_dir = out_dir / record["clip_id"]
    written = render_scenes(record, clip_dir, transform, {"frames": (".mp4", lq_encoder), "mask": (".mkv", MASK_ENCODER)})
    params = {
        scene_name(record["clip_id"], s.id): {
            "mosaic": specs[s.id].lada_dict(),
            "base_mosaic_block_size": blocks[s.id],
            "degrade": None if degrades[s.id] is None else vars(degrades[s.id]),
            "visible_change": round(change[s.id][0] / max(1, change[s.id][1]), 3),
        }
        for s in record["scenes"]
    }
    write_json(clip_dir / "mosaic_params.json", params)
    return {"scenes": len(written), "frames": sum(written.values())}
