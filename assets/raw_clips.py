"""`raw_clips`: probe every file in the raw folder; quarantine what cannot be used, with the reason.

A bad file never stops the batch: it becomes a manifest row with `status: quarantined` and a reason. A partial
file (cut off: fewer frames decode than its header promises) is kept with the frames that decode when they are
at least `data.min_complete_fraction` of the promise; its row's `frames` and `frames_promised` say how many, and
every later stage reads only those `frames` (the undecodable tail is never touched).
"""

from __future__ import annotations

from pathlib import Path

from assets.video import VideoError, probe_video
from assets.weights import sha256_file

PROBE_FIELDS = ("fps", "fps_fraction", "frames", "width", "height", "codec", "pix_fmt", "duration_s", "rotation", "has_audio",
                "frames_promised")


class RawFolderError(FileNotFoundError):
    pass


def clip_id(path: Path, raw_dir: Path) -> str:
    """Stable id: the path under the raw folder, with '/' made safe for file names."""
    return path.relative_to(raw_dir).as_posix().replace("/", "__")


def range_problems(probe, params) -> list[str]:
    problems = []
    if not params.min_frames <= probe.frames <= params.max_frames:
        problems.append(f"{probe.frames} frames outside [{params.min_frames}, {params.max_frames}]")
    if not params.min_fps <= probe.fps <= params.max_fps:
        problems.append(f"{probe.fps:.3f} fps outside [{params.min_fps}, {params.max_fps}]")
    for side, value in (("width", probe.width), ("height", probe.height)):
        if not params.min_side <= value <= params.max_side:
            problems.append(f"{side} {value} outside [{params.min_side}, {params.max_side}]")
    if probe.duration_s > params.max_duration_s:
        problems.append(f"duration {probe.duration_s:.1f}s above {params.max_duration_s}s")
    if is_partial(probe.frames, probe.frames_promised):
        fraction = probe.frames / probe.frames_promised
        if fraction < params.min_complete_fraction:
            problems.append(f"partial file: {probe.frames} of the {probe.frames_promised} frames its header promises "
                            f"decode ({fraction:.0%}), below data.min_complete_fraction={params.min_complete_fraction}")
    return problems


def is_partial(frames: int | None, promised: int | None) -> bool:
    """A clip whose decodable frames fall short of what its header promises (`probe_video` counts both)."""
    return bool(frames is not None and promised and frames < promised)


def probe_clip(path: Path, raw_dir: Path, params) -> dict:
    row = {"clip_id": clip_id(path, raw_dir), "path": path.as_posix(), "status": "ok", "reason": None, "sha256": None}
    row.update({f: None for f in PROBE_FIELDS})
    try:
        row["sha256"] = sha256_file(path)
        probe = probe_video(path)
    except (VideoError, OSError) as err:
        row.update(status="quarantined", reason=str(err))
        return row
    row.update({f: getattr(probe, f) for f in PROBE_FIELDS})
    if problems := range_problems(probe, params):
        row.update(status="quarantined", reason=f"{path}: " + "; ".join(problems))
    return row


def list_clips(raw_dir: Path, extensions) -> list[Path]:
    if not raw_dir.is_dir():
        raise RawFolderError(
            f"{raw_dir}: raw clips folder does not exist; run `make setup` to provision the sample media "
            f"or point data.raw_dir in params.yaml at your clips"
        )
    exts = {e.lower() for e in extensions}
    return sorted(p for p in raw_dir.rglob("*") if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))


def build_manifest(params, progress=None) -> dict:
    raw_dir = Path(params.raw_dir)
    paths = list_clips(raw_dir, params.extensions)
    iterator = progress(paths, desc="raw_clips", unit="clip") if progress else paths
    clips = [probe_clip(p, raw_dir, params) for p in iterator]
    return {
        "raw_dir": raw_dir.as_posix(),
        "clips": clips,
        "counts": {
            "total": len(clips),
            "ok": sum(c["status"] == "ok" for c in clips),
            "quarantined": sum(c["status"] == "quarantined" for c in clips),
            # kept with the frames that decode; their rows say how many of the promised ones that is
            "partial": sum(c["status"] == "ok" and is_partial(c["frames"], c["frames_promised"]) for c in clips),
        },
    }


def ok_clips(manifest: dict) -> list[dict]:
    return [c for c in manifest["clips"] if c["status"] == "ok"]
