"""Encoding for user-facing outputs: which encoders work on this machine, per-codec quality options, and
carrying the input's audio over into the restored video."""

from __future__ import annotations

import functools
import heapq
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av

from assets.atomic import atomic_path
from assets.video import EncoderSettings, VideoWriter

# The encoders `restore.codec` may name; nvenc ones need an NVIDIA GPU and driver at run time.
VIDEO_ENCODERS = ("libx264", "libx265", "h264_nvenc", "hevc_nvenc")
NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p4", "medium": "p5", "slow": "p6"}


class EncoderUnavailable(ValueError):
    """The asked-for encoder is not built into this FFmpeg, or cannot be opened on this machine."""


@functools.lru_cache(maxsize=None)
def _opens(codec: str) -> str | None:
    """None when a 256x256 encoder of `codec` opens here, else the reason."""
    if codec not in av.codecs_available:
        return "not built into this FFmpeg"
    try:
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 25)
        if codec == "libx265":
            ctx.options = {"x265-params": "log-level=none"}
        ctx.open()
    except Exception as err:  # av.error.* for a missing GPU/driver, ValueError for odd builds
        return f"cannot be opened ({err})"
    return None


def working_encoders() -> list[str]:
    return [c for c in VIDEO_ENCODERS if _opens(c) is None]


def check_encoder(codec: str) -> None:
    """Raise EncoderUnavailable naming the codec and what does work here."""
    if codec not in VIDEO_ENCODERS:
        raise EncoderUnavailable(f"codec {codec!r} is not supported; choose one of {', '.join(VIDEO_ENCODERS)} "
                                 f"(working here: {', '.join(working_encoders()) or 'none'})")
    reason = _opens(codec)
    if reason is None:
        return
    hint = (" (NVENC needs an NVIDIA GPU with video-encode hardware and its driver's encode library; "
            "data-centre GPUs such as the A100 and H100 have none)") if "nvenc" in codec else ""
    raise EncoderUnavailable(
        f"codec {codec!r} is not available on this machine: {reason}{hint}; "
        f"encoders that work here: {', '.join(working_encoders()) or 'none'} (PyAV {av.__version__})"
    )


def output_settings(codec: str, crf: int, preset: str, height: int, width: int) -> EncoderSettings:
    """4:2:0 (what every player plays) when the frame size allows it, else 4:4:4."""
    pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
    return EncoderSettings(codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt, threads=min(os.cpu_count() or 1, 16))


class OutputWriter(VideoWriter):
    """`assets.video.VideoWriter` plus quality options for the encoders it does not tune itself."""

    def _open_stream(self, height: int, width: int) -> None:
        super()._open_stream(height, width)
        s = self.settings
        extra: dict[str, str] = {}
        if s.codec == "libx265":
            extra = {"crf": str(s.crf), "preset": s.preset, "x265-params": "log-level=error"}
        elif s.codec in ("h264_nvenc", "hevc_nvenc"):
            extra = {"rc": "vbr", "cq": str(s.crf), "preset": NVENC_PRESETS.get(s.preset, "p5")}
        if extra:
            options = dict(self._stream.codec_context.options)
            options.update(extra)
            self._stream.codec_context.options = options


OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")  # containers that hold H.264/HEVC with any audio we carry over


def container_format(path: Path) -> str:
    return {".mkv": "matroska", ".mov": "mov"}.get(path.suffix.lower(), "mp4")


def _packets(container, stream):
    for packet in container.demux(stream):
        if packet.dts is None or packet.size == 0:
            continue
        yield packet


def _interleaved(*iterators):
    def keyed(it, order):
        for packet in it:
            yield float(packet.dts * packet.time_base), order, packet

    return (item[2] for item in heapq.merge(*(keyed(it, i) for i, it in enumerate(iterators)), key=lambda t: t[:2]))


def _mux(video_path: Path, audio_path: Path, dest: Path, transcode: bool) -> None:
    with av.open(str(video_path)) as vin, av.open(str(audio_path)) as ain, atomic_path(dest) as tmp:
        with av.open(str(tmp), mode="w", format=container_format(dest)) as out:
            vstream = vin.streams.video[0]
            vout = out.add_stream_from_template(vstream)
            streams = {}
            audio_iters = []
            for astream in ain.streams.audio:
                if transcode:
                    rate = astream.codec_context.sample_rate or 48000
                    channels = astream.codec_context.channels
                    layout = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(channels, "stereo")
                    aout = out.add_stream("aac", rate=rate, layout=layout, format="fltp")
                    streams[astream.index] = aout
                else:
                    streams[astream.index] = out.add_stream_from_template(astream)
                audio_iters.append(_packets(ain, astream))
            for packet in _interleaved(_packets(vin, vstream), *audio_iters):
                if packet.stream.type == "video":
                    packet.stream = vout
                    out.mux(packet)
                elif not transcode:
                    packet.stream = streams[packet.stream.index]
                    out.mux(packet)
                else:
                    aout = streams[packet.stream.index]
                    for frame in packet.decode():
                        frame.pts = None  # the encoder numbers its own samples
                        out.mux(aout.encode(frame))
            if transcode:
                for aout in streams.values():
                    out.mux(aout.encode(None))


def mux_audio(video_path: Path, audio_source: Path, dest: Path) -> str | None:
    """Write `dest` = the video stream of `video_path` + every audio stream of `audio_source`, copied as they
    are when the container takes them, else re-encoded to AAC. Returns "copied", "aac" or None (no audio)."""
    with av.open(str(audio_source)) as src:
        has_audio = bool(src.streams.audio)
    if not has_audio:
        with atomic_path(dest) as tmp:
            shutil.copyfile(video_path, tmp)
        return None
    try:
        _mux(video_path, audio_source, dest, transcode=False)
        return "copied"
    except (av.error.FFmpegError, ValueError, TypeError):
        _mux(video_path, audio_source, dest, transcode=True)
        return "aac"
