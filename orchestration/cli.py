"""`aubergine`: the user-facing command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from typer.core import TyperCommand

from orchestration.eval_cli import eval_app

app = typer.Typer(help="aubergine: train and ship privacy-replacement models.", no_args_is_help=True, add_completion=False)
params_app = typer.Typer(help="Inspect and validate params.yaml.", no_args_is_help=True)
tracking_app = typer.Typer(help="MLflow tracking store.", no_args_is_help=True)
dataset_app = typer.Typer(help="Restoration datasets (Lada version-2 layout).", no_args_is_help=True)
app.add_typer(params_app, name="params")
app.add_typer(tracking_app, name="tracking")
app.add_typer(dataset_app, name="dataset")
app.add_typer(eval_app, name="eval")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file")]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _load(path: Path, profile: str | None = None):
    from orchestration.config import ConfigError, load_params

    try:
        return load_params(path, {"profile": profile} if profile else None)
    except ConfigError as err:
        _fail(str(err))


def _known_errors():
    from assets.eggplant import SpriteError
    from assets.lada_meta import DatasetFormatError
    from assets.raw_clips import RawFolderError
    from assets.weights import WeightsError
    from orchestration.stage_io import StageInputError
    from orchestration.tracking import RegistryUnreachableError
    from training.checkpoints import CheckpointError
    from training.data import DatasetTooShortError
    from training.anonymizer.generator import GeneratorConfigError
    from orchestration.project_lock import ProjectLockedError

    return (ProjectLockedError, StageInputError, RawFolderError, WeightsError, SpriteError, DatasetFormatError, CheckpointError,
            DatasetTooShortError, RegistryUnreachableError, GeneratorConfigError)


class _StageCommand(TyperCommand):
    """`aubergine stage --help` lists the stages; the table is imported only when help is asked for, since
    importing every stage module costs a second that other commands need not pay."""

    def format_help(self, ctx, formatter):
        from orchestration.stages import topological

        self.epilog = "Stages, in lineage order: " + ", ".join(st.name for st in topological()) + "."
        return super().format_help(ctx, formatter)


@app.command("stage", cls=_StageCommand)
def stage_cmd(
    names: Annotated[list[str], typer.Argument(help="stage names, run in the order given")],
    params: ParamsOpt = Path("params.yaml"),
    orchestrator: Annotated[str, typer.Option(help="recorded on the MLflow run: cli, dvc or dagster")] = "cli",
) -> None:
    """Run stages of the lineage (what `dvc repro` and Dagster call)."""
    from orchestration.runner import run_stage
    from orchestration.stages import BY_NAME

    for name in names:
        if name not in BY_NAME:
            _fail(f"unknown stage {name!r}; stages: {', '.join(BY_NAME)}")
    from orchestration import project_lock

    p = _load(params)
    try:
        # Several stages in one command are one run: no other engine writes data/ between them.
        with project_lock.held(project_lock.owner_for(orchestrator, None), names[0], timeout_s=p.lock.timeout_s,
                               poll_s=p.lock.poll_s):
            for name in names:
                report = run_stage(name, p, orchestrator=orchestrator)
                summary = {k: v for k, v in report.output.metadata.items() if not isinstance(v, str) or len(v) < 200}
                typer.echo(json.dumps({"stage": name, "seconds": round(report.seconds, 2),
                                       "mlflow_run_id": report.mlflow_run_id, **summary}))
    except _known_errors() as err:
        _fail(str(err))


@app.command("lineage")
def lineage_cmd(params: ParamsOpt = Path("params.yaml")) -> None:
    """Run every stage of the data lineage in order, without an orchestrator.

    Each stage gets its own process, as under DVC and Dagster, so all three engines run a stage the same
    way: a fresh interpreter, no state carried over from the stage before."""
    import subprocess

    from orchestration.stages import topological

    _load(params)
    for st in topological():
        cmd = [sys.executable, "-m", "orchestration.cli", "stage", st.name, "--params", str(params)]
        if subprocess.run(cmd).returncode != 0:
            _fail(f"stage {st.name} failed")


@app.command("lock")
def lock_cmd(
    break_: Annotated[bool, typer.Option("--break", help="remove the lock record whoever holds it (a holder on "
                                         "another host sharing data/, or after a machine was lost)")] = False,
) -> None:
    """Who holds the project lock that every stage run takes (Dagster, dvc repro, aubergine stage)."""
    from orchestration import project_lock

    if break_:
        record = project_lock.break_lock()
        typer.echo(f"removed: {project_lock.describe(record)}" if record else "no lock record")
        return
    record, held = project_lock.status()
    if record is None:
        typer.echo("free: no run holds the project lock")
    else:
        typer.echo(("held by " if held else "free (stale record of a finished run): ") + project_lock.describe(record))


@app.command("cache")
def cache_cmd(
    prune: Annotated[bool, typer.Option("--prune", help="remove least recently used entries down to cache.max_gb")] = False,
    max_gb: Annotated[Optional[float], typer.Option(help="with --prune: this size instead of cache.max_gb")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove every entry (the next run recomputes every clip)")] = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """The per-clip store (data/cache/clips) that lets a run compute only new or changed clips: size per stage,
    and eviction. Removing entries never changes an output, only what the next run recomputes."""
    from assets import clip_cache

    if clear or prune:
        limit = 0 if clear else int((max_gb if max_gb is not None else _load(params).cache.max_gb) * 2**30)
        removed, freed = clip_cache.prune(limit)
        typer.echo(f"removed {removed} entries ({freed / 2**20:.1f} MiB)")
    rows = clip_cache.usage()
    for stage, row in sorted(rows.items()):
        typer.echo(f"{stage:22s} {row['entries']:6d} entries {row['bytes'] / 2**20:10.1f} MiB")
    typer.echo(f"{'total':22s} {sum(r['entries'] for r in rows.values()):6d} entries "
               f"{sum(r['bytes'] for r in rows.values()) / 2**20:10.1f} MiB  ({clip_cache.CACHE_ROOT})")


@app.command("dvc-yaml")
def dvc_yaml_cmd(check: Annotated[bool, typer.Option(help="fail if dvc.yaml differs from the stage table")] = False) -> None:
    """Generate dvc.yaml from the stage table."""
    from orchestration import dvc

    if check:
        if not dvc.DVC_YAML.is_file() or dvc.DVC_YAML.read_text() != dvc.render():
            _fail("dvc.yaml is out of date with orchestration/stages.py; run `aubergine dvc-yaml`")
        typer.echo("dvc.yaml is up to date")
        return
    typer.echo("dvc.yaml written" if dvc.write() else "dvc.yaml unchanged")


@params_app.command("check")
def params_check(params: ParamsOpt = Path("params.yaml"), profile: Optional[str] = None) -> None:
    """Validate params.yaml (and a profile) and say which recipe is active."""
    p = _load(params, profile)
    typer.echo(f"{params}: valid (profile: {p.profile})")


@params_app.command("show")
def params_show(params: ParamsOpt = Path("params.yaml"), profile: Optional[str] = None) -> None:
    """Print the resolved parameters: the body with the active profile's overlay applied."""
    p = _load(params, profile)
    typer.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False))


@tracking_app.command("init")
def tracking_init(params: ParamsOpt = Path("params.yaml")) -> None:
    """Create the MLflow store once (parallel first writers would race on the SQLite migration)."""
    from orchestration.tracking import init_store

    typer.echo(f"tracking store ready: {init_store(_load(params))}")


@dataset_app.command("inspect")
def dataset_inspect(root: Path, split: Annotated[str, typer.Option()] = "train") -> None:
    """Read a restoration dataset (ours or Lada's) with the reader and print one line per scene."""
    from assets.lada_meta import RestorationDataset

    try:
        dataset = RestorationDataset(root, split)
    except _known_errors() as err:
        _fail(str(err))
    for item in dataset:
        m = item.meta
        typer.echo(json.dumps({"meta": item.meta_path.name, "frames": m["frames_count"], "scene_shape": m["scene_shape"],
                               "orig_shape": m["orig_shape"], "mosaic": m["mosaic"]}))
    typer.echo(f"{len(dataset)} scenes in {root}/{split}", err=True)


def _load_or_defaults(path: Path):
    """params.yaml when it exists; outside a checkout (the default path missing) the schema's defaults."""
    from orchestration.config import Params

    if path == Path("params.yaml") and not path.is_file():
        return Params()
    return _load(path)


def _inference_errors():
    from assets.video import VideoError
    from assets.weights import WeightsError
    from inference.media import EncoderUnavailable
    from inference.restore_video import RestoreError
    from training.checkpoints import CheckpointError

    return (VideoError, WeightsError, CheckpointError, EncoderUnavailable, RestoreError)


@app.command("validate")
def validate_cmd(
    clips_dir: Annotated[Path, typer.Argument(help="folder of mosaic clips (any size)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder: <clip>.mp4 + validate.json")],
    checkpoint: Annotated[Path, typer.Option(help="restoration checkpoint (Lada/mmagic or ours)")],
    size: Annotated[Optional[int], typer.Option(
        min=64, help="model input side in px; must match the size the model was trained at "
        "(default: the input_size recorded in the checkpoint — 128 for the embedded model — else 256, Lada's)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N (default: restore.device)")] = None,
    max_frames: Annotated[int, typer.Option(help="frames per forward pass")] = 30,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Restore every clip of a folder whole (no detection), same frame count, fps and size; writes validate.json.
    Exits non-zero only when every clip failed."""
    from inference.validate import validate_clips

    p = _load_or_defaults(params)
    try:
        report = validate_clips(clips_dir, out, checkpoint, p, size=size, device=device, max_frames=max_frames)
    except (*_inference_errors(), ValueError) as err:
        _fail(str(err))
    for name, record in report["clips"].items():
        if record["status"] != "ok":
            typer.secho(f"failed: {record['input']}: {record['error']}", fg=typer.colors.YELLOW, err=True)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "clips"} | {"report": str(out / "validate.json")}))
    if report["ok"] == 0:
        raise typer.Exit(1)


@app.command("restore")
def restore_cmd(
    input: Annotated[Path, typer.Argument(help="video to restore")],
    output: Annotated[Path, typer.Option("--output", "-o", help="restored video (written atomically)")],
    checkpoint: Annotated[Path, typer.Option(help="restoration checkpoint (Lada/mmagic or ours)")],
    max_clip_length: Annotated[Optional[int], typer.Option(help="frames per restored clip (default: restore.max_clip_length)")] = None,
    codec: Annotated[Optional[str], typer.Option(help="libx264 | libx265 | h264_nvenc | hevc_nvenc (default: restore.codec)")] = None,
    regions: Annotated[Optional[str], typer.Option(help="detect (faces/plates, mosaicked as in training) | mosaic (already pixelated)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N (default: restore.device)")] = None,
    size: Annotated[Optional[int], typer.Option(
        min=64, help="model input side in px; must match the size the model was trained at "
        "(default: the input_size recorded in the checkpoint — 128 for the embedded model — else 256, Lada's)")] = None,
    score_threshold: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="per-detection score threshold of the face detector and the trained detector "
        "(default: detection.face_score_threshold / detector_score_threshold)")] = None,
    min_track_score: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="drop tracks whose mean detection score is lower (default: tracking.min_track_score; "
        "with --regions mosaic, mosaic_detector.min_track_score)")] = None,
    min_track_detections: Annotated[Optional[int], typer.Option(
        min=1, help="drop tracks detected on fewer frames (default: tracking.min_track_detections)")] = None,
    mosaic_detector: Annotated[Optional[str], typer.Option(
        help="with --regions mosaic: auto (the trained detector where its report measured it beating the grid, "
        "else the grid) | model (the trained mosaic detector) | grid (the heuristic) (default: restore.mosaic_detector)")] = None,
    mosaic_detection_model_path: Annotated[Optional[Path], typer.Option(
        help="mosaic detector weights (default: restore.mosaic_detector_model)")] = None,
    mosaic_detection_batch_size: Annotated[Optional[int], typer.Option(
        min=1, help="frames per detector call (default: restore.detection_batch_size)")] = None,
    detector_queue_size: Annotated[Optional[int], typer.Option(
        min=1, help="frames decoded ahead of detection (default: restore.detector_queue_size)")] = None,
    hw_decode: Annotated[Optional[str], typer.Option(
        help="off | auto | cuda | vaapi | qsv | videotoolbox | d3d11va: decode on a device through PyAV "
        "(default: restore.hw_decode)")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Restore a whole video: find regions, track them, restore each clip, blend back, encode, keep the audio."""
    from pydantic import ValidationError

    from inference.restore_video import restore_video
    from orchestration.config import RestoreParams

    p = _load_or_defaults(params)
    if score_threshold is not None:
        p = p.model_copy(update={
            "detection": p.detection.model_copy(
                update={"face_score_threshold": score_threshold, "detector_score_threshold": score_threshold}),
            "mosaic_detector": p.mosaic_detector.model_copy(update={"score_threshold": score_threshold})})
    restore_flags = {k: v for k, v in (
        ("mosaic_detector", mosaic_detector), ("detection_batch_size", mosaic_detection_batch_size),
        ("detector_queue_size", detector_queue_size), ("hw_decode", hw_decode),
        ("mosaic_detector_model", str(mosaic_detection_model_path) if mosaic_detection_model_path else None)) if v is not None}
    if restore_flags:
        try:  # validated like params.yaml, so a wrong name is the same clear error
            checked = RestoreParams.model_validate({**p.restore.model_dump(), **restore_flags})
        except ValidationError as err:
            _fail("; ".join(f"restore.{e['loc'][0]} = {e.get('input')!r}: {e['msg']}" for e in err.errors()))
        p = p.model_copy(update={"restore": checked})
    track_rules = {k: v for k, v in (("min_track_score", min_track_score), ("min_track_detections", min_track_detections))
                   if v is not None}
    if track_rules:
        p = p.model_copy(update={"tracking": p.tracking.model_copy(update=track_rules)})
    if min_track_score is not None:  # --regions mosaic reads its own rule
        p = p.model_copy(update={"mosaic_detector": p.mosaic_detector.model_copy(update={"min_track_score": min_track_score})})
    try:
        summary = restore_video(input, output, checkpoint, p, max_clip_length=max_clip_length, codec=codec,
                                regions=regions, device=device, size=size)
    except (*_inference_errors(), ValueError) as err:
        _fail(str(err))
    if summary.get("copied"):
        typer.secho(summary["message"], fg=typer.colors.YELLOW, err=True)
    dropped = {k: v for k, v in (summary.get("tracks_dropped") or {}).items() if v}
    if dropped:
        typer.secho("dropped as false positives: " + ", ".join(f"{v} track(s) {k.replace('_', ' ')}" for k, v in dropped.items()),
                    fg=typer.colors.YELLOW, err=True)
    typer.echo(json.dumps(summary))


@app.command("anonymize")
def anonymize_cmd(
    input: Annotated[Path, typer.Argument(help="an image, a folder of images or a video")],
    output: Annotated[Path, typer.Option("--output", "-o", help="image / folder / video to write (atomically); "
                                         "<output>.coco.json beside it lists what was anonymized")],
    method: Annotated[Optional[str], typer.Option(help="lora | blur | pixelate | fill (default: anonymize.method)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N (default: anonymize.device)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="regions per UNet call (default: anonymize.batch_size)")] = None,
    lora: Annotated[Optional[Path], typer.Option(help="LoRA folder (default: anonymize.lora_dir)")] = None,
    base: Annotated[Optional[Path], typer.Option(help="SD2 inpainting base folder (default: the one train.json names)")] = None,
    detector: Annotated[Optional[Path], typer.Option(help="a trained face/plate detector (data/models/detector/detector.pth) "
                                                   "instead of the detection section's detectors")] = None,
    report: Annotated[bool, typer.Option("--report", help="write <output>.report.json (summary + flicker measure)")] = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Anonymize faces and plates: detect, track through a video (one replacement per track), inpaint each
    region, blend back, encode with the input's fps, size, frame count and audio."""
    from assets.atomic import write_json
    from inference.anonymize_media import anonymize_path
    from inference.anonymize_methods import AnonymizeError

    p = _load_or_defaults(params)
    try:
        summary = anonymize_path(input, output, p, method=method, device=device, batch_size=batch_size,
                                 lora_dir=lora, base_dir=base, detector=detector)
    except (*_inference_errors(), AnonymizeError, ValueError) as err:
        _fail(str(err))
    if not summary.get("regions", summary.get("tracks")):
        typer.secho(summary["message"], fg=typer.colors.YELLOW, err=True)
    for failed in summary.get("failed", []):
        typer.secho(f"failed: {failed['file']}: {failed['error']}", fg=typer.colors.YELLOW, err=True)
    if report:
        summary["report"] = str(output.with_name(output.name + ".report.json"))
        write_json(summary["report"], summary)
    typer.echo(json.dumps(summary))


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="a training checkpoint (latest.pth), a published generator.pth or any Lada/mmagic file")],
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the Lada-loadable file")],
    ema: Annotated[bool, typer.Option(help="take generator_ema when the file has one")] = True,
) -> None:
    """Write a file Lada's CLI loads: `generator.` and `generator_ema.` keys under `state_dict`, no
    optimiser or RNG state."""
    import json as _json

    from assets.weights import WeightsError
    from training.checkpoints import LADA_DEFAULT_SIZE, CheckpointError, export_lada, lada_config_path, load_generator

    try:
        model, info = load_generator(checkpoint, prefer_ema=ema)
        carried = {k: info["meta"][k] for k in ("input_size",) if k in info["meta"]}
        export_lada(model, output, meta={"exported_from": str(checkpoint), "source_part": info["part"], **carried})
    except (WeightsError, CheckpointError) as err:
        _fail(str(err))
    config = lada_config_path(output)
    if (info["mid_channels"], info["num_blocks"]) != LADA_DEFAULT_SIZE:
        typer.secho(
            f"WARNING: {output} is BasicVSR++ mid_channels={info['mid_channels']}, num_blocks={info['num_blocks']}, not "
            f"Lada's default {LADA_DEFAULT_SIZE[0]}/{LADA_DEFAULT_SIZE[1]}. Lada loads weights non-strictly: without "
            f"--mosaic-restoration-config-path {config} it builds the default size and leaves most tensors random.",
            fg=typer.colors.YELLOW, err=True)
    typer.echo(_json.dumps({"output": str(output), "lada_config": str(config), "mid_channels": info["mid_channels"],
                            "num_blocks": info["num_blocks"], "weights": info["part"],
                            "lada_cli": f"lada-cli --mosaic-restoration-model-path {output} "
                                        f"--mosaic-restoration-config-path {config} --input IN.mp4 --output OUT.mp4"}))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
