"""Throughput of the data synthesis against the floor every video pipeline pays.

    python bench/synthesis.py [--clips a.mp4 b.mp4] [--params params.yaml] [--repeat N] [--out DIR]

Two measurements, in ONE process, interleaved clip by clip (and the order flipped every other clip and
repeat) so that a noisy shared machine hurts both alike:

* floor      decode every frame of the clip (`assets.video.read_frames`) and encode it again, full frame,
             with the lineage's own encoder settings (`orchestration.lineage.encoder(params)`) through
             `assets.video.write_video`. No pipeline that reads and writes video can be faster.
* synthesis  the real per-clip stage bodies, as `orchestration.lineage` calls them: `track_clip`
             (decode + detection + association + scenes + mask videos), then `composite_clip`
             (eggplant GT) and `mosaic_clip` (mosaic LQ), each on the record `load_clip_tracks` reads back.

Both rates are *source frames of the clip* per second, so their ratio is the ratio of wall times.

The IO layer is wrapped (never edited) to split every part into decode / detection / RGB->YUV / encode /
the rest; the wrappers add a perf_counter pair per call. `--profile FILE` adds one untimed cProfile pass
over the synthesis (wrappers removed) and prints the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------------------
# Timing wrappers around the IO layer (monkeypatched in this process only; project code is not changed).


class Meter:
    """Seconds and counts per bucket, taken (and reset) after each measured part."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, bucket: str, seconds: float, count: int = 0) -> None:
        self.seconds[bucket] += seconds
        if count:
            self.counts[bucket] += count

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        out = dict(self.seconds), dict(self.counts)
        self.seconds.clear()
        self.counts.clear()
        return out


METER = Meter()
_PATCHES: list[tuple[object, str, object]] = []


def _patch(owner, name: str, replacement) -> None:
    _PATCHES.append((owner, name, getattr(owner, name)))
    setattr(owner, name, replacement)


def unpatch() -> None:
    while _PATCHES:
        owner, name, original = _PATCHES.pop()
        setattr(owner, name, original)


def install_meters() -> None:
    import assets.region_tracks as region_tracks
    import assets.scene_render as scene_render
    import assets.video as video

    perf = time.perf_counter
    original_read = video.read_frames

    def timed_read_frames(*args, **kwargs):
        inner = original_read(*args, **kwargs)
        try:
            while True:
                t = perf()
                try:
                    frame = next(inner)
                except StopIteration:
                    METER.add("decode", perf() - t)
                    return
                METER.add("decode", perf() - t, 1)
                yield frame
        finally:
            t = perf()
            inner.close()
            METER.add("decode", perf() - t)

    original_yuv = video.rgb_to_yuv444_frame

    def timed_yuv(rgb):
        t = perf()
        try:
            return original_yuv(rgb)
        finally:
            METER.add("yuv", perf() - t, 1)

    cls = video.VideoWriter
    original_init, original_write, original_close = cls.__init__, cls.write, cls.close

    def timed_init(self, *args, **kwargs):
        t = perf()
        try:
            original_init(self, *args, **kwargs)
        finally:
            METER.add(f"enc:{self.settings.codec}" if hasattr(self, "settings") else "enc:?", perf() - t)

    def timed_write(self, frame):
        t = perf()
        try:
            original_write(self, frame)
        finally:
            codec = self.settings.codec
            METER.add(f"enc:{codec}", perf() - t, 1)
            METER.add(f"px:{codec}", 0.0, int(frame.shape[0]) * int(frame.shape[1]))

    def timed_close(self):
        t = perf()
        try:
            original_close(self)
        finally:
            METER.add(f"enc:{self.settings.codec}", perf() - t)

    original_build = region_tracks.build_detector

    class Timed:
        """A detector whose calls are metered; its other attributes (`kinds`) are the wrapped one's."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, frame, index):
            t0 = perf()
            try:
                return self.inner(frame, index)
            finally:
                METER.add("detect", perf() - t0, 1)

    def timed_build_detector(*args, **kwargs):
        t = perf()
        detector = original_build(*args, **kwargs)
        METER.add("detector_init", perf() - t)

        if not detector.reads_sidecar:
            # Each detector timed inside its CombinedDetector, which stays what track_clip gets: the sparse path
            # schedules detectors by their kinds and runs one kind on a crop (assets/sparse_detection.py).
            detector.detectors = [Timed(d) for d in detector.detectors]
        return detector

    _patch(video, "read_frames", timed_read_frames)
    _patch(region_tracks, "read_frames", timed_read_frames)
    _patch(scene_render, "read_frames", timed_read_frames)
    _patch(video, "rgb_to_yuv444_frame", timed_yuv)
    _patch(cls, "__init__", timed_init)
    _patch(cls, "write", timed_write)
    _patch(cls, "close", timed_close)
    _patch(region_tracks, "build_detector", timed_build_detector)


# ---------------------------------------------------------------------------------------------------------
# The two measured jobs.


def run_floor(clip: dict, out_dir: Path, settings) -> dict:
    import assets.video as video  # looked up at call time: the metered read_frames when installed

    t = time.perf_counter()
    n = video.write_video(out_dir / "floor" / f"{clip['clip_id']}.mp4", video.read_frames(clip["path"]), clip["fps_fraction"], settings)
    total = time.perf_counter() - t
    seconds, counts = METER.take()
    if n != clip["frames"]:
        print(f"  ! floor {clip['clip_id']}: encoded {n} of {clip['frames']} frames", file=sys.stderr)
    return {"floor": {"total": total, "seconds": seconds, "counts": counts}}


def run_synthesis(clip: dict, out_dir: Path, params, settings) -> dict:
    from assets.eggplant_gt import composite_clip
    from assets.mosaic_lq import mosaic_clip
    from assets.region_tracks import load_clip_tracks, track_clip

    tracks_dir, mask_shape = out_dir / "region_tracks", params.tracking.mask_shape
    parts: dict = {}

    t = time.perf_counter()
    summary = track_clip(clip, tracks_dir, params.detection, params.tracking)
    parts["tracking"] = {"total": time.perf_counter() - t}
    parts["tracking"]["seconds"], parts["tracking"]["counts"] = METER.take()

    # The lineage renders only clips with scenes, each stage reading the record itself (`_render_stage`).
    for name, fn, sect, folder in (
        ("eggplant", composite_clip, params.eggplant, "eggplant_gt"),
        ("mosaic", mosaic_clip, params.mosaic, "mosaic_lq"),
    ):
        t = time.perf_counter()
        if summary["scenes"]:
            record = load_clip_tracks(tracks_dir, clip["clip_id"])
            fn(record, out_dir / folder, sect, settings, mask_shape, params.seed)
        parts[name] = {"total": time.perf_counter() - t}
        parts[name]["seconds"], parts[name]["counts"] = METER.take()
    parts["summary"] = summary
    return parts


# ---------------------------------------------------------------------------------------------------------
# Reporting.

PARTS = ("tracking", "eggplant", "mosaic")


def _fmt_fps(frames: float, seconds: float) -> str:
    return f"{frames / seconds:7.1f}" if seconds > 0 else "    n/a"


def machine_info(settings) -> list[str]:
    import av
    import numpy as np

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"machine: {cpu}; {os.cpu_count()} logical cores ({usable} usable); load avg {load}",
        f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__} "
        f"(cv2 threads {cv2.getNumThreads()}), PyAV {av.__version__} (FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})",
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; encoder: {settings.codec} crf {settings.crf} "
        f"preset {settings.preset} {settings.pix_fmt} threads {settings.threads}",
    ]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def report(clips: list[dict], results: dict, repeat: int, settings, started_load: str) -> None:
    # results[clip_id] = list (one per repeat) of {"floor": part, "tracking": part, ..., "summary": {...}}
    print()
    print("=" * 118)
    print("aubergine synthesis benchmark: tracking + eggplant + mosaic + writing  vs  decode -> encode floor")
    for line in machine_info(settings):
        print(line)
    print(f"load avg at start: {started_load}; repeats: {repeat} (times below are means over repeats)")
    print("=" * 118)
    header = (
        f"{'clip':<22}{'size':>10}{'frames':>7} |{'floor s':>8}{'fps':>8} |{'track s':>8}{'egg s':>7}{'mosaic s':>9}"
        f"{'synth s':>8}{'fps':>8} |{'ratio':>6} |{'scenes':>7}{'scene fr':>9}"
    )
    print(header)
    print("-" * len(header))
    tot = defaultdict(float)
    for clip in clips:
        runs = results[clip["clip_id"]]
        floor = _mean([r["floor"]["total"] for r in runs])
        part = {p: _mean([r[p]["total"] for r in runs]) for p in PARTS}
        synth = sum(part.values())
        summary = runs[0]["summary"]
        frames = clip["frames"]
        tot["frames"] += frames
        tot["floor"] += floor
        tot["synth"] += synth
        tot["scenes"] += summary["scenes"]
        tot["scene_frames"] += summary["scene_frames"]
        for p in PARTS:
            tot[p] += part[p]
        print(
            f"{clip['clip_id'][:22]:<22}{clip['width']:>5}x{clip['height']:<4}{frames:>7} |{floor:8.2f}{_fmt_fps(frames, floor):>8} |"
            f"{part['tracking']:8.2f}{part['eggplant']:7.2f}{part['mosaic']:9.2f}{synth:8.2f}{_fmt_fps(frames, synth):>8} |"
            f"{synth / floor:5.2f}x |{summary['scenes']:>7}{summary['scene_frames']:>9}"
        )
    print("-" * len(header))
    print(
        f"{'TOTAL':<22}{'':>10}{int(tot['frames']):>7} |{tot['floor']:8.2f}{_fmt_fps(tot['frames'], tot['floor']):>8} |"
        f"{tot['tracking']:8.2f}{tot['eggplant']:7.2f}{tot['mosaic']:9.2f}{tot['synth']:8.2f}{_fmt_fps(tot['frames'], tot['synth']):>8} |"
        f"{tot['synth'] / tot['floor']:5.2f}x |{int(tot['scenes']):>7}{int(tot['scene_frames']):>9}"
    )

    # Where the time goes: all clips, mean per repeat.
    print()
    print("where the time goes (seconds, all clips, mean per repeat; 'other' = part total minus the measured columns)")
    cols = ("decode", "detect", "det.init", "rgb->yuv", "x264", "ffv1 mask", "other", "total")
    print(f"{'part':<12}" + "".join(f"{c:>10}" for c in cols) + f"{'x264 Mpx':>10}{'decoded':>9}")
    grand = defaultdict(float)
    for part in ("floor", *PARTS, "synthesis"):
        if part == "synthesis":
            row = {k: grand[k] for k in cols}
            px, decoded = grand["px"], grand["decoded"]
        else:
            sec = defaultdict(float)
            cnt = defaultdict(float)
            total = 0.0
            for clip in clips:
                for r in results[clip["clip_id"]]:
                    total += r[part]["total"] / repeat
                    for k, v in r[part]["seconds"].items():
                        sec[k] += v / repeat
                    for k, v in r[part]["counts"].items():
                        cnt[k] += v / repeat
            x264 = sec["enc:libx264"] - sec["yuv"]
            row = {
                "decode": sec["decode"], "detect": sec["detect"], "det.init": sec["detector_init"], "rgb->yuv": sec["yuv"],
                "x264": x264, "ffv1 mask": sec["enc:ffv1"], "total": total,
            }
            other_codecs = sum(v for k, v in sec.items() if k.startswith("enc:") and k not in ("enc:libx264", "enc:ffv1"))
            row["other"] = total - sum(row[k] for k in cols if k not in ("other", "total")) - other_codecs
            px, decoded = cnt["px:libx264"], cnt["decode"]
            if part != "floor":
                for k in cols:
                    grand[k] += row[k]
                grand["px"] += px
                grand["decoded"] += decoded
        print(f"{part:<12}" + "".join(f"{row[k]:10.2f}" for k in cols) + f"{px / 1e6:10.1f}{int(decoded):>9}")
    print("  decode = read_frames (PyAV decode + rgb24 + copy); detect = detector calls; det.init = build_detector;")
    print("  rgb->yuv = assets.video.rgb_to_yuv444_frame; x264/ffv1 = VideoWriter open+write+close minus rgb->yuv;")
    print("  other = tracking: association, scenes, mask drawing, JSON; eggplant/mosaic: transform + crop/pad + set-up.")

    # The headline.
    print()
    ratios = []
    for i in range(repeat):
        f = sum(results[c["clip_id"]][i]["floor"]["total"] for c in clips)
        s = sum(results[c["clip_id"]][i][p]["total"] for c in clips for p in PARTS)
        ratios.append(s / f)
    print(f"floor (decode->encode):        {_fmt_fps(tot['frames'], tot['floor']).strip()} frames/s  ({tot['floor']:.2f} s for {int(tot['frames'])} frames)")
    print(f"synthesis (track+egg+mosaic):  {_fmt_fps(tot['frames'], tot['synth']).strip()} frames/s  ({tot['synth']:.2f} s)")
    detect = grand["detect"] + grand["det.init"]
    print(f"detection alone (faces+plates): {detect:.2f} s = {detect / tot['synth']:.0%} of the synthesis, "
          f"{detect / tot['floor']:.2f}x the whole floor")
    no_detect = tot["synth"] - detect
    print(f"synthesis without detection:   {_fmt_fps(tot['frames'], no_detect).strip()} frames/s  ({no_detect:.2f} s; "
          f"{no_detect / tot['floor']:.2f}x the floor)")
    spread = f" (per repeat: {', '.join(f'{r:.2f}x' for r in ratios)}; median {statistics.median(ratios):.2f}x)" if repeat > 1 else ""
    verdict = "meets" if tot["synth"] / tot["floor"] <= 1.5 else "misses"
    print(f"synthesis / decode->encode floor: {tot['synth'] / tot['floor']:.2f}x{spread}  -- target <= 1.5x: {verdict}")


def recall(clips: list[dict], params, out: Path) -> None:
    """What the configured detection path (every n-th frame, boxes carried by flow) loses against detection on
    every frame: scene recall and IoU of the regions (what the lineage renders) and of the per-frame boxes."""
    import json

    from assets.region_tracks import track_clip
    from assets.sparse_detection import every_frame, on_every_frame
    from assets.track_recall import compare, summarize

    d = params.detection
    if on_every_frame(d):
        print("\nrecall: detection runs on every frame (detection.every_n_frames = 1): nothing to compare")
        return
    reference = params.model_copy(update={"detection": every_frame(d)})
    rows, looked = [], [0, 0, 0]
    for clip in clips:
        track_clip(clip, out / "recall-reference", reference.detection, params.tracking)
        track_clip(clip, out / "recall-fast", params.detection, params.tracking)
        ref = json.loads((out / "recall-reference" / f"{clip['clip_id']}.json").read_text())
        fast = json.loads((out / "recall-fast" / f"{clip['clip_id']}.json").read_text())
        rows.append(compare(ref, fast))
        one = summarize(rows[-1:])
        looked[0] += fast.get("frames_detected", 0)
        looked[1] += fast.get("local_detections", 0)
        looked[2] += ref.get("frames_detected", 0)
        print(f"  recall {clip['clip_id']:<24} scenes {rows[-1]['scenes_found']}/{rows[-1]['scenes']}  region IoU "
              f"{one['mean_region_iou']:.3f}  box IoU {one['mean_box_iou']:.3f} ({rows[-1]['boxes']} boxes)  "
              f"whole-frame detector runs {fast.get('frames_detected', '?')} of {ref.get('frames_detected', '?')} + "
              f"{fast.get('local_detections', '?')} crops")
    total = summarize(rows)
    plates = d.plate_every_n_frames or d.every_n_frames
    print(f"recall against detection on every frame (detection every {d.every_n_frames} frames, plates every {plates}, "
          f"between: {d.between}): "
          f"scenes {total['scene_recall']:.1%} of {total['scenes']} (aim >= 98%), mean region IoU "
          f"{total['mean_region_iou']:.3f}, mean box IoU {total['mean_box_iou']:.3f} over {total['boxes']} boxes (aim >= 0.9); "
          f"whole-frame detector runs {looked[0]} of {looked[2]} (every frame), {looked[1]} crops")


# ---------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", nargs="+", type=Path, help="clips to measure (default: every data/raw/*.mp4)")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--repeat", type=int, default=1, help="measure every clip N times (default 1)")
    ap.add_argument("--out", type=Path, help="folder for the outputs (default: a temporary folder, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the default temporary folder")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up on the smallest clip")
    ap.add_argument("--profile", type=Path, metavar="FILE", help="after timing, one cProfile pass over the synthesis; stats to FILE")
    ap.add_argument("--top", type=int, default=15, help="functions shown from the profile (default 15)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    # Same as orchestration/runner.py: the stages run with one OpenCV thread.
    cv2.setNumThreads(1)
    clips_arg = [p.resolve() for p in args.clips] if args.clips else None
    params_path = args.params.resolve()
    out_arg = args.out.resolve() if args.out else None
    profile_path = args.profile.resolve() if args.profile else None
    os.chdir(REPO)  # params hold repo-relative paths (models, sprites)

    from assets.raw_clips import probe_clip
    from orchestration.config import load_params
    from orchestration.lineage import encoder

    params = load_params(params_path)
    settings = encoder(params)
    raw_dir = Path(params.data.raw_dir).resolve()
    paths = clips_arg or sorted(raw_dir.glob("*.mp4"))
    if not paths:
        raise SystemExit(f"no clips: {raw_dir}/*.mp4 is empty; pass --clips")
    clips = []
    for path in paths:
        base = raw_dir if path.is_relative_to(raw_dir) else path.parent
        clip = probe_clip(path, base, params.data)
        if clip["status"] != "ok":
            print(f"skipping {path}: {clip['reason']}", file=sys.stderr)
            continue
        clips.append(clip)
    if not clips:
        raise SystemExit("no usable clips")

    out = out_arg or Path(tempfile.mkdtemp(prefix="aubergine-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(clips)} clips, {sum(c['frames'] for c in clips)} frames; outputs under {out}")
    started_load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"

    install_meters()
    try:
        if not args.no_warmup:
            smallest = min(clips, key=lambda c: c["width"] * c["height"] * c["frames"])
            t = time.perf_counter()
            run_floor(smallest, out / "warmup", settings)
            run_synthesis(smallest, out / "warmup", params, settings)
            print(f"warm-up on {smallest['clip_id']}: {time.perf_counter() - t:.2f} s (not counted)")

        results: dict[str, list[dict]] = {c["clip_id"]: [] for c in clips}
        for rep in range(args.repeat):
            rep_dir = out / f"rep{rep}"
            for i, clip in enumerate(clips):
                floor_first = (rep + i) % 2 == 0
                order = ("floor", "synthesis") if floor_first else ("synthesis", "floor")
                run: dict = {}
                for job in order:
                    if job == "floor":
                        run.update(run_floor(clip, rep_dir, settings))
                    else:
                        run.update(run_synthesis(clip, rep_dir, params, settings))
                results[clip["clip_id"]].append(run)
                synth = sum(run[p]["total"] for p in PARTS)
                parts = " / ".join(f"{p} {run[p]['total']:.2f}" for p in PARTS)
                print(
                    f"[{rep + 1}/{args.repeat}] {clip['clip_id']:<24} floor {run['floor']['total']:6.2f} s  "
                    f"synthesis {synth:6.2f} s ({parts})  "
                    f"{synth / run['floor']['total']:.2f}x  [{' then '.join(order)}]",
                    flush=True,
                )
    finally:
        unpatch()

    report(clips, results, args.repeat, settings, started_load)

    recall(clips, params, out)

    if profile_path:
        print()
        print(f"cProfile: one more synthesis pass over every clip (untimed above; wrappers removed) -> {profile_path}")
        profiler = cProfile.Profile()
        profiler.enable()
        for clip in clips:
            run_synthesis(clip, out / "profile", params, settings)
        profiler.disable()
        profiler.dump_stats(str(profile_path))
        for key in ("cumulative", "tottime"):
            buf = io.StringIO()
            pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(key).print_stats(args.top)
            text = buf.getvalue()
            print(f"--- top {args.top} by {key} ---")
            print(text[text.find("   ncalls"):].rstrip())

    if out_arg is None and not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
