"""One decode of a clip, many scene crops out: the loop shared by `eggplant_gt` and `mosaic_lq`.

For each frame, every scene active on it gets the frame transformed for its own region (an eggplant, a
mosaic) and cut to its crop. Each output stream is a VideoWriter, so a clip that fails half-way leaves
no file behind.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from assets.lada_meta import scene_name
from assets.region_tracks import scenes_by_frame
from assets.tracks import Scene, cut_and_pad
from assets.video import EncoderSettings, VideoError, VideoWriter, read_frames

# transform(scene, offset_in_scene, frame) -> {stream suffix: full-size frame (H,W,3) or mask (H,W)}
Transform = Callable[[Scene, int, np.ndarray], dict[str, np.ndarray]]


def render_scenes(
    record: dict,
    out_dir: Path,
    transform: Transform,
    streams: dict[str, tuple[str, EncoderSettings | Callable[[Scene], EncoderSettings]]],
) -> dict[str, int]:
    """`streams` maps a stream key to (file extension, encoder settings or a per-scene factory).
    Returns frames written per scene name."""
    scenes: list[Scene] = record["scenes"]
    if not scenes:
        return {}
    active = scenes_by_frame(scenes)
    last = max(s.stop for s in scenes)
    written: dict[str, int] = {}
    with ExitStack() as stack:
        writers: dict[tuple[int, str], VideoWriter] = {}

        def writer(scene: Scene, key: str) -> VideoWriter:
            if (scene.id, key) not in writers:
                ext, settings = streams[key]
                settings = settings(scene) if callable(settings) else settings
                name = scene_name(record["clip_id"], scene.id)
                suffix = "" if key == "frames" else f"-{key}"
                w = VideoWriter(out_dir / f"{name}{suffix}{ext}", record["fps_fraction"], settings)
                writers[(scene.id, key)] = stack.enter_context(w)
            return writers[(scene.id, key)]

        index = -1
        frames = tqdm(read_frames(record["path"], 0, last), total=last, desc=record["clip_id"], unit="frame", leave=False, disable=None)
        for index, frame in enumerate(frames):
            for scene in active.get(index, ()):
                offset = index - scene.start
                for key, image in transform(scene, offset, frame).items():
                    writer(scene, key).write(cut_and_pad(image, scene.crops[offset], scene.pads[offset]))
        if index + 1 < last:
            raise VideoError(f"{record['path']}: decoded {index + 1} frames, scenes need {last}")
        for scene in scenes:
            written[scene_name(record["clip_id"], scene.id)] = writers[(scene.id, "frames")].frames
    return written
