"""`eggplant_gt`: every scene's crop with an eggplant composited into its region (the GT of the pairs)."""

from __future__ import annotations

from pathlib import Path

from assets.eggplant import EggplantCompositor, load_sprites
from assets.mosaic import scene_rng
from assets.region_tracks import full_frame_mask
from assets.scene_render import render_scenes
from assets.video import EncoderSettings


def composite_clip(record: dict, out_dir: Path, eggplant, encoder: EncoderSettings, mask_shape: str, seed: int) -> dict:
    sprites = load_sprites(eggplant.sprites, eggplant.emoji_png)
    compositors: dict[int, EggplantCompositor] = {}

    def transform(scene, offset, frame):
        if scene.id not in compositors:
            # A folder of sprites: each scene keeps one sprite, chosen reproducibly.
            pick = int(scene_rng(seed, record["clip_id"], scene.id, "sprite").integers(len(sprites)))
            compositors[scene.id] = EggplantCompositor(sprites[pick], eggplant.fill, eggplant.color_match, eggplant.edge_feather,
                                                      eggplant.fit)
        mask = full_frame_mask(scene, offset, frame.shape[:2], mask_shape)
        return {"frames": compositors[scene.id].composite(frame, scene.regions[offset], mask)}

    written = render_scenes(record, out_dir / record["clip_id"], transform, {"frames": (".mp4", encoder)})
    return {"scenes": len(written), "frames": sum(written.values())}
