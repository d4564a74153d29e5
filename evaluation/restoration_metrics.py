"""PSNR and SSIM (scikit-image) for restored frames, over whole frames and inside region masks.

Conventions (all functions):
- Frames are uint8, HxWx3 RGB (HxW grayscale also accepted); data_range is 255.
- PSNR is capped at `PSNR_CAP` = 100 dB. Identical inputs (MSE 0) report exactly 100.0 rather than inf,
  so every value is a finite JSON number. 100 dB is an MSE of 6.5e-6, below anything a real 8-bit
  difference on a frame of under ~3 Mpx can produce, so the cap only ever means "identical".
- SSIM is skimage's `structural_similarity` with its defaults (7x7 uniform window, K1=.01, K2=.03),
  averaged over channels. Whole-frame SSIM is skimage's number, which leaves out a 3-pixel border (half
  the window).
- Region metrics use a mask (HxW, nonzero = inside). PSNR inside is computed from the MSE over the masked
  pixels only (all channels). SSIM inside is the mean of the full SSIM map over the masked pixels, with
  the same 3-pixel border left out as skimage does for the whole frame, so a full mask gives exactly the
  whole-frame SSIM; a mask lying wholly in that border falls back to all its pixels. The SSIM map is
  computed on the whole frame, so the window near the mask edge sees a little context from outside it.
  No mask, or an empty one, gives None (JSON null) for the region metrics.
- Videos: `video_metrics` reports both averages. `psnr` is the mean of per-frame PSNR (each capped), the
  number most papers quote; `psnr_pooled` is the PSNR of the MSE pooled over all frames (pixel-weighted),
  which one bad frame cannot hide behind many identical ones. SSIM is always the mean of per-frame SSIM.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

PSNR_CAP = 100.0
DATA_RANGE = 255.0
SSIM_WIN = 7
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".mkv", ".mov", ".avi", ".webm")


class FrameMismatchError(ValueError):
    """Two inputs that should be compared frame by frame do not line up; the message says where."""


def psnr_from_mse(mse: float) -> float:
    """10*log10(255^2 / mse), capped at PSNR_CAP (MSE 0 -> PSNR_CAP)."""
    if mse <= 0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(DATA_RANGE**2 / mse))


def _check_frame(frame, name: str) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise TypeError(f"{name}: expected uint8 pixels (data_range 255), got {frame.dtype}")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3)):
        raise FrameMismatchError(f"{name}: expected an HxWx3 RGB or HxW gray frame, got shape {frame.shape}")
    if min(frame.shape[:2]) < SSIM_WIN:
        raise FrameMismatchError(f"{name}: frame {frame.shape[:2]} is smaller than the {SSIM_WIN}x{SSIM_WIN} SSIM window")
    return frame


def _check_mask(mask, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.shape != tuple(shape[:2]):
        raise FrameMismatchError(f"{name}: shape {mask.shape} does not match the frames' {tuple(shape[:2])}")
    return mask.astype(bool)


def _frame_stats(reference, test, mask=None, where: str = "") -> dict:
    """Per-frame numbers plus the sums needed to pool MSE across frames."""
    label = f"{where}: " if where else ""
    reference = _check_frame(reference, f"{label}reference")
    test = _check_frame(test, f"{label}test")
    if reference.shape != test.shape:
        raise FrameMismatchError(f"{label}reference shape {reference.shape} != test shape {test.shape}")
    channels = reference.shape[2] if reference.ndim == 3 else 1
    mse = float(mean_squared_error(reference, test))
    psnr = PSNR_CAP if mse == 0 else min(PSNR_CAP, float(peak_signal_noise_ratio(reference, test, data_range=DATA_RANGE)))
    kwargs = {"data_range": DATA_RANGE, "win_size": SSIM_WIN, "full": True}
    if reference.ndim == 3:
        kwargs["channel_axis"] = -1
    ssim, ssim_map = structural_similarity(reference, test, **kwargs)
    out = {"psnr": psnr, "ssim": float(ssim), "psnr_region": None, "ssim_region": None,
           "_sq": mse * reference.size, "_n": reference.size, "_sq_region": 0.0, "_n_region": 0}
    if mask is None:
        return out
    inside = _check_mask(mask, reference.shape, f"{label}mask")
    count = int(inside.sum())
    if count == 0:
        return out
    ref_px, test_px = reference[inside], test[inside]  # (count, C) or (count,)
    mse_region = float(mean_squared_error(ref_px, test_px))
    out["psnr_region"] = (PSNR_CAP if mse_region == 0 else
                          min(PSNR_CAP, float(peak_signal_noise_ratio(ref_px, test_px, data_range=DATA_RANGE))))
    pad = (SSIM_WIN - 1) // 2
    interior = np.zeros_like(inside)
    interior[pad:inside.shape[0] - pad, pad:inside.shape[1] - pad] = True
    use = inside & interior
    if not use.any():
        use = inside
    out["ssim_region"] = float(np.mean(ssim_map[use], dtype=np.float64))
    out["_sq_region"] = mse_region * count * channels
    out["_n_region"] = count * channels
    return out


def psnr_ssim(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """{"psnr", "ssim", "psnr_region", "ssim_region"} for one uint8 frame pair (see the module docstring)."""
    stats = _frame_stats(reference, test, mask)
    return {k: v for k, v in stats.items() if not k.startswith("_")}


_END = object()


def _pairs(ref_frames: Iterable, test_frames: Iterable, masks: Iterable | None, where: str) -> Iterator[tuple]:
    refs, tests = iter(ref_frames), iter(test_frames)
    mask_iter = iter(masks) if masks is not None else None
    index = 0
    while True:
        ref, test = next(refs, _END), next(tests, _END)
        if ref is _END or test is _END:
            if ref is not test:
                longer, shorter = ("reference", "test") if test is _END else ("test", "reference")
                raise FrameMismatchError(f"{where}{shorter} ran out of frames at frame {index} while {longer} has more")
            if mask_iter is not None and next(mask_iter, _END) is not _END:
                raise FrameMismatchError(f"{where}more masks than frames ({index} frames)")
            return
        mask = None
        if mask_iter is not None:
            mask = next(mask_iter, _END)
            if mask is _END:
                raise FrameMismatchError(f"{where}masks ran out at frame {index}")
        yield index, ref, test, mask
        index += 1


class _Accumulator:
    def __init__(self) -> None:
        self.frames = 0
        self.region_frames = 0
        self.psnr = self.ssim = self.psnr_region = self.ssim_region = 0.0
        self.sq = self.n = self.sq_region = self.n_region = 0.0

    def add(self, stats: dict) -> None:
        self.frames += 1
        self.psnr += stats["psnr"]
        self.ssim += stats["ssim"]
        self.sq += stats["_sq"]
        self.n += stats["_n"]
        if stats["psnr_region"] is not None:
            self.region_frames += 1
            self.psnr_region += stats["psnr_region"]
            self.ssim_region += stats["ssim_region"]
            self.sq_region += stats["_sq_region"]
            self.n_region += stats["_n_region"]

    def merge(self, other: "_Accumulator") -> None:
        for key in ("frames", "region_frames", "psnr", "ssim", "psnr_region", "ssim_region", "sq", "n", "sq_region", "n_region"):
            setattr(self, key, getattr(self, key) + getattr(other, key))

    def result(self) -> dict:
        if self.frames == 0:
            raise FrameMismatchError("no frames to compare")
        r = self.region_frames
        return {
            "frames": self.frames,
            "psnr": self.psnr / self.frames,
            "psnr_pooled": psnr_from_mse(self.sq / self.n),
            "ssim": self.ssim / self.frames,
            "region_frames": r,
            "psnr_region": self.psnr_region / r if r else None,
            "psnr_region_pooled": psnr_from_mse(self.sq_region / self.n_region) if r else None,
            "ssim_region": self.ssim_region / r if r else None,
        }


def _accumulate(ref_frames, test_frames, masks, where: str = "", stride: int = 1) -> _Accumulator:
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    acc = _Accumulator()
    for index, ref, test, mask in _pairs(ref_frames, test_frames, masks, where):
        if index % stride == 0:
            acc.add(_frame_stats(ref, test, mask, where=f"{where}frame {index}"))
    return acc


def video_metrics(
    ref_frames: Iterable[np.ndarray],
    test_frames: Iterable[np.ndarray],
    masks: Iterable[np.ndarray | None] | None = None,
    *,
    stride: int = 1,
) -> dict:
    """Frame-by-frame comparison of two equally long frame sequences (lists or generators, streamed).

    Returns {"frames", "psnr" (mean of per-frame PSNR), "psnr_pooled" (PSNR of the pooled MSE), "ssim"
    (mean per-frame), "region_frames" (frames with a non-empty mask), "psnr_region", "psnr_region_pooled",
    "ssim_region"} (region values averaged over region_frames; None without masks). `masks` is one mask
    (or None) per frame. `stride` > 1 scores every stride-th frame (all frames are still checked to exist).
    """
    return _accumulate(ref_frames, test_frames, masks, stride=stride).result()


# ------------------------------------------------------------------------------------------ folders


def _media_files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS}


def _read_rgb(path: Path) -> Iterator[np.ndarray]:
    if path.suffix.lower() in VIDEO_EXTS:
        from assets.video import read_frames

        yield from read_frames(path)
    else:
        from PIL import Image

        with Image.open(path) as image:
            yield np.asarray(image.convert("RGB"))


def _read_mask(path: Path) -> Iterator[np.ndarray]:
    if path.suffix.lower() in VIDEO_EXTS:
        from assets.video import read_gray_frames

        for frame in read_gray_frames(path):
            yield frame > 127
    else:
        from PIL import Image

        with Image.open(path) as image:
            yield np.asarray(image.convert("L")) > 127


def _match(name: str, candidates: dict[str, Path]) -> Path | None:
    """Same file name, else the one file with the same stem (clip.mp4 <-> clip.mkv)."""
    if name in candidates:
        return candidates[name]
    stem = Path(name).stem
    same_stem = [p for p in candidates.values() if p.stem == stem]
    return same_stem[0] if len(same_stem) == 1 else None


def dir_metrics(
    dir_a: str | Path,
    dir_b: str | Path,
    *,
    mask_dir: str | Path | None = None,
    strict: bool = True,
    stride: int = 1,
) -> dict:
    """Compare every image/video in `dir_a` (reference) with its namesake in `dir_b` (test).

    Files pair by name, or by stem when the extension differs (a.mp4 <-> a.mkv, a.png <-> a.jpg).
    Images are read with PIL (converted to RGB), videos with assets.video.read_frames. Optional
    `mask_dir` holds masks paired by stem (gray images or mask videos, > 127 = inside).
    With `strict` (default) a file without a counterpart is an error; otherwise it is listed.

    Returns {"summary": flat dict (files, frames, region_frames, and video_metrics' keys pooled over all
    frames of all files, each frame weighing the same), "per_file": [{"name", "frames", ...}] for report
    tables, "missing_in_b": [...], "extra_in_b": [...]}.
    """
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    for folder in (dir_a, dir_b) + ((Path(mask_dir),) if mask_dir is not None else ()):
        if not folder.is_dir():
            raise FileNotFoundError(f"not a folder: {folder}")
    files_a, files_b = _media_files(dir_a), _media_files(dir_b)
    masks = _media_files(Path(mask_dir)) if mask_dir is not None else {}
    pairs, missing = [], []
    for name, path_a in files_a.items():
        path_b = _match(name, files_b)
        if path_b is None:
            missing.append(name)
        else:
            pairs.append((name, path_a, path_b))
    used_b = {p[2].name for p in pairs}
    extra = [name for name in files_b if name not in used_b]
    if strict and (missing or extra):
        parts = []
        if missing:
            parts.append(f"in {dir_a} but not {dir_b}: {', '.join(missing)}")
        if extra:
            parts.append(f"in {dir_b} but not {dir_a}: {', '.join(extra)}")
        raise FrameMismatchError("unpaired files (" + "; ".join(parts) + ")")
    if not pairs:
        raise FrameMismatchError(f"no image or video files to compare in {dir_a} and {dir_b}")

    total = _Accumulator()
    per_file = []
    for name, path_a, path_b in pairs:
        mask_path = _match(name, masks) if mask_dir is not None else None
        if mask_dir is not None and mask_path is None:
            raise FrameMismatchError(f"{name}: no mask with stem {Path(name).stem!r} in {mask_dir}")
        acc = _accumulate(_read_rgb(path_a), _read_rgb(path_b), _read_mask(mask_path) if mask_path else None,
                          where=f"{name}: ", stride=stride)
        total.merge(acc)
        per_file.append({"name": name, **acc.result()})
    summary = {"files": len(pairs), **total.result()}
    return {"summary": summary, "per_file": per_file, "missing_in_b": missing, "extra_in_b": extra}
