"""Video IO over PyAV (FFmpeg): probing, decoding to display-oriented RGB frames, and atomic encoding.

Every video this project writes goes through `VideoWriter`, so codec settings live in one place and a
killed writer never leaves a playable-looking half file behind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from assets.atomic import atomic_path


class VideoError(RuntimeError):
    """A video cannot be read; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoProbe:
    fps: float
    fps_fraction: str
    frames: int
    width: int  # display width (after rotation)
    height: int
    codec: str
    pix_fmt: str
    duration_s: float
    rotation: int  # degrees clockwise that a player applies to show the frame upright
    has_audio: bool
    # What the container's header promises (its frame count, else duration x rate); None when it says nothing.
    # Below `frames` only for a partial file: `frames` is then what decodes, the rest is missing.
    frames_promised: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _clockwise_rotation(frame: av.VideoFrame) -> int:
    # PyAV reports the display matrix angle counter-clockwise; players rotate clockwise by its negative.
    ccw = int(round(getattr(frame, "rotation", 0) or 0))
    return (-ccw) % 360


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k=-(rotation // 90)))


def probe_video(path: str | Path) -> VideoProbe:
    """Open, demux every packet and decode the first frame; raise VideoError with the reason if any fails."""
    path = Path(path)
    if path.is_dir():
        raise VideoError(f"{path}: is a folder, not a video file (give one video; `aubergine validate` takes a folder)")
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if not path.is_file():
        raise VideoError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise VideoError(f"{path}: not a readable video container ({err.strerror or err})") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: contains no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise VideoError(f"{path}: frame rate is unknown")
        first = None
        packets = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                packets += 1
                if first is None:
                    for frame in packet.decode():
                        first = frame
                        break
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: stream is corrupt or truncated after {packets} packets ({err})") from None
        if first is None:
            raise VideoError(f"{path}: no frame could be decoded from {packets} packets")
        rotation = _clockwise_rotation(first)
        has_audio = bool(container.streams.audio)
        codec, pix_fmt = stream.codec_context.name, first.format.name
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        fps = float(rate)
        promised, exact = _promised_frames(container, stream, fps)
    frames = packets
    # A duration-derived promise is a rounding away from the count: only a clear shortfall makes a file partial.
    if promised is not None and packets < (promised if exact else promised * 0.98 - 1):
        # A partial file (cut off, a copy that stopped): its last packets may not decode, so count what does.
        frames = count_decodable(path)
        if frames == 0:
            raise VideoError(f"{path}: no frame decodes of the {promised} its header promises")
    return VideoProbe(
        fps=fps,
        fps_fraction=f"{rate.numerator}/{rate.denominator}",
        frames=frames,
        width=width,
        height=height,
        codec=codec,
        pix_fmt=pix_fmt,
        duration_s=frames / fps,
        rotation=rotation,
        has_audio=has_audio,
        frames_promised=promised,
    )


def _promised_frames(container, stream, fps: float) -> tuple[int | None, bool]:
    """(frames the header promises, whether it states them exactly) -- the count of the stream's index (mp4),
    else its duration (or the container's) times the rate."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames), True
    if stream.duration and stream.time_base:
        return int(round(float(stream.duration * stream.time_base) * fps)), False
    if container.duration and container.duration > 0:  # microseconds
        return int(round(container.duration / 1e6 * fps)), False
    return None, False


def count_decodable(path: str | Path) -> int:
    """Frames that decode from the start of `path` before the first decoding error (or the end)."""
    count = 0
    try:
        with av.open(str(path)) as container:
            for _ in container.decode(container.streams.video[0]):
                count += 1
    except av.error.FFmpegError:
        pass
    return count


HW_DECODERS = ("cuda", "vaapi", "qsv", "videotoolbox", "d3d11va")


def _open_for_decoding(path: Path, hw_decode: str):
    """`hw_decode`: off | auto | one of HW_DECODERS. auto = the first device FFmpeg offers and this machine
    opens, else software (said once on stderr); a named device that does not open is an error."""
    if hw_decode == "off":
        return av.open(str(path))
    from av.codec.hwaccel import HWAccel, hwdevices_available

    offered = [d for d in HW_DECODERS if d in hwdevices_available()]
    if hw_decode != "auto" and hw_decode not in offered:
        raise VideoError(f"{path}: hardware decoding on {hw_decode!r} is not offered by this FFmpeg build "
                         f"(offered: {', '.join(offered) or 'none'}); use hw_decode off or auto")
    reasons = []
    for device in offered if hw_decode == "auto" else [hw_decode]:
        try:
            # allow_software_fallback: a stream the device cannot decode (a codec it lacks) decodes on the CPU.
            return av.open(str(path), hwaccel=HWAccel(device_type=device, allow_software_fallback=True))
        except (av.error.FFmpegError, OSError) as err:
            reasons.append(f"{device}: {err}")
    if hw_decode != "auto":
        raise VideoError(f"{path}: the {hw_decode} decoding device did not open ({'; '.join(reasons)})")
    if not _SAID_SOFTWARE:
        import sys

        print(f"hw_decode auto: no hardware decoder opened ({'; '.join(reasons) or 'none offered'}); decoding on the CPU",
              file=sys.stderr)
        _SAID_SOFTWARE.append(True)
    return av.open(str(path))


_SAID_SOFTWARE: list[bool] = []


def read_frames(path: str | Path, start: int = 0, stop: int | None = None, hw_decode: str = "off") -> Iterator[np.ndarray]:
    """Yield upright RGB uint8 frames [start, stop); grayscale sources come back as 3 equal channels.
    `hw_decode` (off | auto | cuda | vaapi | ...) decodes on a device through PyAV's hwaccel, frames
    downloaded to memory (Lada's `--hw-decode`)."""
    path = Path(path)
    try:
        container = _open_for_decoding(path, hw_decode)
    except av.error.FFmpegError as err:
        raise VideoError(f"{path}: not a readable video container ({err})") from None
    with container:
        stream = container.streams.video[0]
        # One reformatter per clip (PyAV builds a new one per frame otherwise: ~40% of decode time), and a
        # private copy of each frame, since the reformatter reuses its output buffer.
        reformatter = VideoReformatter()
        index = 0
        try:
            if stop is not None and stop <= 0:
                return
            for frame in container.decode(stream):
                if index >= start:
                    rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
                    yield _upright(np.array(rgb, copy=True), _clockwise_rotation(frame))
                index += 1
                # Stop before asking for the next frame: a partial file's undecodable tail is never touched.
                if stop is not None and index >= stop:
                    break
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: decoding failed at frame {index} ({err})") from None


def prefetch(items: Iterator, size: int) -> Iterator:
    """`items` produced by a background thread at most `size` ahead of the consumer (restore's
    `--detector-queue-size`: decoding overlaps detection, memory holds at most `size` frames). An error in
    the producer is raised in the consumer; a consumer that stops early stops the producer."""
    import queue
    import threading

    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    buffer: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((done, None))
        except BaseException as err:  # handed to the consumer
            buffer.put((done, err))
        finally:
            closer = getattr(items, "close", None)  # a generator's `with` blocks (the open container) end here
            if closer is not None:
                closer()

    thread = threading.Thread(target=produce, name="decode-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, err = buffer.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def read_gray_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Yield single-channel uint8 frames (mask videos)."""
    with av.open(str(path)) as container:
        reformatter = VideoReformatter()
        for frame in container.decode(container.streams.video[0]):
            yield np.array(reformatter.reformat(frame, format="gray").to_ndarray(), copy=True)


@dataclass(frozen=True)
class EncoderSettings:
    codec: str = "libx264"
    crf: int = 15
    preset: str = "medium"
    pix_fmt: str = "yuv444p"
    threads: int = 2


# Lada writes its mask videos losslessly with FFV1 in Matroska; so do we.
MASK_ENCODER = EncoderSettings(codec="ffv1", crf=0, preset="", pix_fmt="gray", threads=1)


def _fps_fraction(fps: float | Fraction | str) -> Fraction:
    if isinstance(fps, str):
        return Fraction(fps)
    return Fraction(fps).limit_denominator(1001)


# BT.601 limited range, the matrix FFmpeg assumes when it decodes an untagged yuv444p stream.
# A 3x4 affine matrix (offset folded in) for cv2.transform, 4x faster than a numpy matmul here.
_RGB_TO_YUV = np.hstack([
    np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0,
    np.array([[16.0], [128.0], [128.0]]),
]).astype(np.float32)


def rgb_to_yuv444_frame(rgb: np.ndarray) -> av.VideoFrame:
    """An RGB frame as a yuv444p VideoFrame whose every byte, line padding included, is set by us, so
    nothing the encoder reads depends on uninitialised memory."""
    yuv = np.clip(np.rint(cv2.transform(rgb.astype(np.float32), _RGB_TO_YUV)), 0, 255).astype(np.uint8)
    height, width = rgb.shape[:2]
    frame = av.VideoFrame(width, height, "yuv444p")
    for index, plane in enumerate(frame.planes):
        padded = np.empty((height, plane.line_size), dtype=np.uint8)
        padded[:, :width] = yuv[..., index]
        padded[:, width:] = yuv[:, -1:, index]
        plane.update(padded)
    return frame


class VideoWriter:
    """Encode frames to `path` atomically: the file appears only when `close()` succeeds."""

    def __init__(self, path: str | Path, fps: float | Fraction | str, settings: EncoderSettings = EncoderSettings()):
        self.path = Path(path)
        self.fps = _fps_fraction(fps)
        self.settings = settings
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        fmt = "matroska" if self.path.suffix == ".mkv" else "mp4"
        # bitexact: no random Matroska segment UID, no muxing date; the same frames give the same bytes.
        self._container = av.open(str(self._tmp), mode="w", format=fmt, options={"fflags": "+bitexact"})
        self._stream = None
        self.frames = 0

    def _open_stream(self, height: int, width: int) -> None:
        s = self.settings
        stream = self._container.add_stream(s.codec, rate=self.fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = s.pix_fmt
        options = {"threads": str(s.threads)}
        if s.codec == "libx264":
            # mbtree off: with it, x264's lookahead gave different bytes for the same frames run to run
            # (7 distinct files in 10 runs); without it, 10 of 10 identical, for a slightly larger file.
            options.update({"crf": str(s.crf), "preset": s.preset, "x264-params": "mbtree=0"})
        elif s.codec == "ffv1":
            options.update({"level": "3"})
        elif s.codec == "h264_nvenc":
            options.update({"cq": str(s.crf)})
        options["flags"] = "+bitexact"
        stream.codec_context.options = options
        stream.codec_context.thread_count = s.threads
        self._stream = stream

    def write(self, frame: np.ndarray) -> None:
        if self._stream is None:
            self._open_stream(frame.shape[0], frame.shape[1])
        if frame.ndim == 2:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="gray")
        elif self.settings.pix_fmt == "yuv444p":
            vf = rgb_to_yuv444_frame(frame)
        else:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        try:
            if self._stream is None:
                raise VideoError(f"{self.path}: no frames were written")
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except BaseException as err:
            self._abort(err)
            raise
        self._ctx.__exit__(None, None, None)

    def _abort(self, err: BaseException) -> None:
        try:
            self._container.close()
        except Exception:
            pass
        self._ctx.__exit__(type(err), err, err.__traceback__)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self._abort(exc)


def write_video(path: str | Path, frames, fps, settings: EncoderSettings = EncoderSettings()) -> int:
    with VideoWriter(path, fps, settings) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames
