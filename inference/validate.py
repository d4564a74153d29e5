"""Offline validation (`aubergine validate CLIPS_DIR -o OUT_DIR --checkpoint PATH`): every clip of a folder of
mosaic clips, of any size, restored whole (no detection) and written beside a `validate.json` report.

Each clip's frames go through the Restorer (scaled/padded to the model's square input, and back), so the
output has the clip's own frame count, fps and size. One clip failing (corrupt file, decode error) is
recorded with its reason and the others still run.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from assets.atomic import write_json
from assets.video import probe_video, read_frames
from inference.media import OutputWriter, check_encoder, output_settings
from inference.restore_video import RestoreError, _params, bar_disabled, load_restorer

DEFAULT_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


def list_clips(clips_dir: Path, extensions=DEFAULT_EXTENSIONS) -> list[Path]:
    exts = {e.lower() for e in extensions}
    return sorted(p for p in clips_dir.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))


def _output_names(clips: list[Path]) -> dict[Path, str]:
    stems = [c.stem for c in clips]
    return {c: (c.stem if stems.count(c.stem) == 1 else c.name.replace(".", "_")) + ".mp4" for c in clips}


def validate_clip(clip: Path, dest: Path, restorer, settings_for, progress: bool | None = None) -> dict:
    """Restore one whole clip into `dest`; returns its record (raises on any failure)."""
    probe = probe_video(clip)
    settings = settings_for(probe.height, probe.width)
    chunk: list = []
    with OutputWriter(dest, probe.fps_fraction, settings) as writer:
        frames = tqdm(read_frames(clip, stop=probe.frames), total=probe.frames, desc=f"validate {clip.name}", unit="frame", leave=False,
                      disable=bar_disabled(progress))
        for frame in frames:
            chunk.append(frame)
            if len(chunk) == restorer.max_frames:
                for out in restorer.restore(chunk):
                    writer.write(out)
                chunk = []
        if chunk:
            for out in restorer.restore(chunk):
                writer.write(out)
    return {"frames": writer.frames, "fps": probe.fps, "fps_fraction": probe.fps_fraction,
            "size": [probe.width, probe.height], "input_frames": probe.frames}


def validate_clips(
    clips_dir: str | Path,
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    params=None,
    *,
    restorer=None,
    size: int | None = None,
    device: str | None = None,
    max_frames: int = 30,
    progress: bool | None = None,
) -> dict:
    """Restore every clip in `clips_dir` into `out_dir/<name>.mp4` and write `out_dir/validate.json`.
    Returns the report: per clip frames, fps, size, seconds, status ("ok" | "error") and error."""
    started = time.perf_counter()
    params = _params(params)
    rp = params.restore
    clips_dir, out_dir = Path(clips_dir), Path(out_dir)
    if not clips_dir.is_dir():
        raise RestoreError(f"{clips_dir}: not a folder of clips")
    if out_dir.resolve() == clips_dir.resolve():
        raise RestoreError(f"{out_dir}: the output folder must differ from the clips folder")
    clips = list_clips(clips_dir, params.data.extensions)
    if not clips:
        raise RestoreError(f"{clips_dir}: no clips ({', '.join(params.data.extensions)})")
    check_encoder(rp.codec)
    if restorer is None:
        if checkpoint is None:
            raise RestoreError("no checkpoint given (and no restorer)")
        restorer = load_restorer(checkpoint, size, device or rp.device, max_frames, rp.fp16)
    out_dir.mkdir(parents=True, exist_ok=True)

    def settings_for(height: int, width: int):
        return output_settings(rp.codec, rp.crf, rp.preset, height, width)

    records: dict[str, dict] = {}
    names = _output_names(clips)
    bar = tqdm(clips, desc="validate", unit="clip", disable=bar_disabled(progress))
    for clip in bar:
        clip_started = time.perf_counter()
        dest = out_dir / names[clip]
        record: dict = {"input": str(clip), "output": str(dest)}
        try:
            record.update(validate_clip(clip, dest, restorer, settings_for, progress))
            record["status"] = "ok"
        except Exception as err:  # per-clip isolation: any failure is this clip's, reported with its reason
            record.update({"status": "error", "error": f"{type(err).__name__}: {err}", "output": None})
            tqdm.write(f"validate: {clip}: {err}")
        record["seconds"] = round(time.perf_counter() - clip_started, 3)
        records[clip.name] = record
    ok = sum(r["status"] == "ok" for r in records.values())
    report = {
        "clips_dir": str(clips_dir), "output_dir": str(out_dir), "checkpoint": str(checkpoint) if checkpoint else None,
        "size": restorer.size, "device": str(restorer.device), "codec": rp.codec, "crf": rp.crf, "preset": rp.preset,
        "clips": records, "ok": ok, "failed": len(records) - ok, "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(out_dir / "validate.json", report)
    return report
