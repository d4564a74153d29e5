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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_files(folder: Path) -> list[Path]:
    if not folder.exists():
        _fail(f"{folder}: no such folder")
    if not folder.is_dir():
        _fail(f"{folder}: is a file, not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        _fail(f"{folder}: no png/jpg images")
    return files


def _read_rgb(path: Path):
    from PIL import UnidentifiedImageError

    from evaluation.images import read_rgb

    try:
        return read_rgb(path)
    except (OSError, UnidentifiedImageError) as err:
        _fail(f"{path}: not a readable image ({err})")


def _images(folder: Path) -> tuple[list[str], list]:
    files = _image_files(folder)
    return [f.name for f in files], [_read_rgb(f) for f in files]


@eval_app.command("fid")
def fid_cmd(
    dir_a: Path,
    dir_b: Path,
    weights: Annotated[Optional[Path], typer.Option(help="converted FID Inception weights (make setup)")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    cache: Annotated[bool, typer.Option(help="cache per-folder statistics in data/cache/fid")] = True,
    method: Annotated[str, typer.Option(help="pytorch-fid (scipy sqrtm, the reference) | eigh (same formula, ~10x faster)")] = "pytorch-fid",
    out: OutOpt = None,
    mlflow_log: MlflowOpt = False,
) -> None:
    """FID between the images of two folders (pytorch-fid, genuine FID Inception weights)."""
    from assets.weights import WeightsError
    from evaluation.fid import DEFAULT_CACHE_DIR, FID_RELIABLE_IMAGES, FID_WEIGHTS, fid_between_dirs

    try:
        result = fid_between_dirs(dir_a, dir_b, cache_dir=DEFAULT_CACHE_DIR if cache else None,
                                  weights_path=weights or FID_WEIGHTS, batch_size=batch_size, device=device,
                                  method=method)
    except (WeightsError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    fewest = min(result["n_a"], result["n_b"])
    if fewest < FID_RELIABLE_IMAGES:
        result["warning"] = (f"only {fewest} images in the smaller folder (n_a={result['n_a']}, n_b={result['n_b']}): "
                             f"below {FID_RELIABLE_IMAGES} FID is strongly biased upwards and only comparable at "
                             "equal sample sizes")
        typer.secho(f"warning: {result['warning']}", fg=typer.colors.YELLOW, err=True)
    _emit("fid", result, out, mlflow_log)


@eval_app.command("identity")
def identity_cmd(
    orig_dir: Path,
    anon_dir: Path,
    backend: Annotated[str, typer.Option(help="dlib (offline default) | arcface (needs --pack)")] = "dlib",
    pack: Annotated[Optional[Path], typer.Option(help="insightface buffalo_l folder holding w600k_r50.onnx")] = None,
    out: OutOpt = None,
    mlflow_log: MlflowOpt = False,
) -> None:
    """Identity similarity and re-identification rate between same-named images of two folders: every face the
    backend finds in an original, compared with the same place in its anonymized image (a face that can no
    longer be embedded there is counted as vanished, not skipped)."""
    from assets.weights import WeightsError
    from evaluation.identity import ArcFaceIdentity, DlibIdentity, every_face_scores

    try:
        names_a, orig = _images(orig_dir)
        names_b, anon = _images(anon_dir)
        if names_a != names_b:
            _fail(f"{orig_dir} and {anon_dir} must hold the same image names; differing: "
                  f"{sorted(set(names_a) ^ set(names_b))[:5]}")
        if backend == "arcface":
            if pack is None:
                _fail("--backend arcface needs --pack DIR (insightface's buffalo_l folder with w600k_r50.onnx)")
            model = ArcFaceIdentity(pack)
        elif backend == "dlib":
            model = DlibIdentity()
        else:
            _fail(f"--backend {backend!r}: allowed are dlib, arcface")
        result = every_face_scores(orig, anon, model)
    except (WeightsError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    per_face = [{**row, "image": names_a[row["image"]]} for row in result.pop("per_face")]
    metrics = dict(result)
    typer.secho(f"{result['faces']} face(s) in {result['images']} original image(s) ({result['images_without_faces']} "
                f"without a face): {result['compared']} compared, {result['vanished']} vanished, "
                f"{result['reidentified']} re-identified by {result['backend']}", err=True)
    shown = min(6, len(orig))
    grids = [("Original / anonymized", {"original": orig[:shown], "anonymized": anon[:shown]})]
    _emit("identity", metrics, out, mlflow_log, tables={"Per face": per_face}, grids=grids)


@eval_app.command("ocr")
def ocr_cmd(
    path: Path,
    expected: Annotated[Optional[list[str]], typer.Option("--expected", help="expected plate text, once per plate")] = None,
    box: Annotated[Optional[list[str]], typer.Option("--box", help="plate box x0,y0,x1,y1 (repeat per plate)")] = None,
    original: Annotated[bool, typer.Option(help="score as anonymization: rate at which the ORIGINAL text is still read")] = False,
    out: OutOpt = None,
    mlflow_log: MlflowOpt = False,
) -> None:
    """Read plates with EasyOCR (offline English weights); with --expected, score exact and character accuracy."""
    from assets.weights import WeightsError
    from evaluation.ocr import PlateReader, match_reads, normalize_plate, original_text_rate, plate_accuracy

    if not path.exists():
        _fail(f"{path}: no such image file or folder")
    files = [path] if path.is_file() else _image_files(path)
    try:
        boxes = [tuple(float(v) for v in b.split(",")) for b in (box or [])]
    except ValueError:
        _fail(f"--box must be x0,y0,x1,y1 numbers, got {box}")
    if any(len(b) != 4 for b in boxes):
        _fail(f"--box must be x0,y0,x1,y1, got {box}")
    try:
        reader = PlateReader()
        reads = []
        for file in files:
            image = _read_rgb(file)
            if boxes:
                reads += [{"file": file.name, "box": list(b), "text": reader.read_plate(image, b)} for b in boxes]
            else:
                reads += [{"file": file.name, "text": normalize_plate(r.text), "confidence": r.confidence,
                           "box": [round(v, 1) for v in r.box]} for r in reader.read(image)]
    except (WeightsError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    metrics: dict = {"backend": reader.name, "reads": len(reads)}
    if expected:
        # Without --box, reads and expected plates are paired by the best text match; a plate nothing was
        # read for scores as the empty string (accuracy 0), which is a result, not an error.
        texts = [r["text"] for r in reads] if boxes else match_reads([r["text"] for r in reads], expected)
        if original:
            metrics["original_text_rate"] = original_text_rate(texts, expected)
        else:
            metrics.update({f"plate_{k}": v for k, v in plate_accuracy(texts, expected).items()})
    typer.echo(json.dumps({"reads": reads}, indent=1), err=True)
    _emit("ocr", metrics, out, mlflow_log, tables={"Reads": reads})
