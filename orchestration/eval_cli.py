"""`aubergine eval …`: the evaluation backends outside the pipeline. Every command prints its result as JSON;
`--out DIR` also writes the report (metrics.json + HTML), and `--mlflow` logs it as a run in the
`aubergine-evaluation` experiment."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

eval_app = typer.Typer(help="Evaluate outside the pipeline (FID, identity, OCR, mAP, PSNR/SSIM); prints JSON.",
                       no_args_is_help=True)

OutOpt = Annotated[Optional[Path], typer.Option("--out", help="write metrics.json + report.html here")]
MlflowOpt = Annotated[bool, typer.Option("--mlflow", help="log the result as an MLflow run (aubergine-evaluation)")]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _emit(name: str, metrics: dict, out: Optional[Path], mlflow_log: bool, **report) -> None:
    """Print the metrics; optionally write the report and log it."""
    typer.echo(json.dumps(metrics, indent=1, sort_keys=True, default=str))
    if out is None and not mlflow_log:
        return
    from evaluation.report import write_report

    target = out or Path(tempfile.mkdtemp(prefix=f"aubergine-eval-{name}-"))
    write_report(target, title=report.pop("title", f"aubergine eval {name}"), metrics=metrics, **report)
    if out is not None:
        typer.echo(f"report: {target / 'report.html'}", err=True)
    if mlflow_log:
        import mlflow

        from orchestration.config import load_params
        from orchestration.tracking import _mlflow, experiment_id, git_commit, log_report

        params = load_params("params.yaml")
        _mlflow(params)
        tags = {"aubergine.stage": f"eval-{name}", "aubergine.orchestrator": "cli", "git.commit": git_commit()}
        with mlflow.start_run(experiment_id=experiment_id(params, "evaluation"), run_name=f"eval-{name}", tags=tags) as run:
            log_report(run, target)
            typer.echo(f"mlflow run: {run.info.run_id}", err=True)


@eval_app.command("map")
def map_cmd(
    gt: Path,
    detections: Path,
    backend: Annotated[str, typer.Option(help="pycocotools | faster-coco-eval")] = "pycocotools",
    out: OutOpt = None,
    mlflow_log: MlflowOpt = False,
) -> None:
    """COCO mAP (AP, AP50, AP75, per category) of DETECTIONS.json against GT.json."""
    from evaluation.detection_map import DetectionInputError, evaluate
    from evaluation.report import pr_curve_figure

    try:
        result = evaluate(gt, detections, backend=backend)
    except (DetectionInputError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    metrics = dict(result.metrics)
    summary = metrics.pop("summary", "")
    figures = {}
    if out is not None or mlflow_log:
        png = Path(tempfile.mkdtemp(prefix="aubergine-pr-")) / "pr.png"
        figures["PR curves (IoU 0.5)"] = pr_curve_figure(result.curves, png)
    _emit("map", metrics, out, mlflow_log, figures=figures, notes=[summary] if summary else [])


@eval_app.command("psnr")
def psnr_cmd(
    dir_a: Path,
    dir_b: Path,
    masks: Annotated[Optional[Path], typer.Option(help="folder of masks (same names) for region metrics")] = None,
    stride: Annotated[int, typer.Option(min=1, help="use every Nth video frame")] = 1,
    strict: Annotated[bool, typer.Option(help="fail when a file has no partner")] = True,
    out: OutOpt = None,
    mlflow_log: MlflowOpt = False,
) -> None:
    """PSNR/SSIM (whole frame, and inside masks) between files of the same name in two folders."""
    from assets.video import VideoError
    from evaluation.restoration_metrics import FrameMismatchError, dir_metrics

    try:
        result = dir_metrics(dir_a, dir_b, mask_dir=masks, strict=strict, stride=stride)
    except (FrameMismatchError, VideoError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    _emit("psnr", result["summary"], out, mlflow_log, tables={"Per file": result["per_file"]})
