"""What a new user meets in the first ten minutes: the README's commands in a fresh shell, and the CLI's
answers to the usual mistakes (issue 11)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from orchestration.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _fresh_shell_env(home: Path) -> dict[str, str]:
    """What a new login shell has: no venv activated, no ~/.local/bin, none of this session's variables."""
    return {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def _readme_block(marker: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = re.search(rf"<!-- {marker}:.*?-->\s*```bash\n(.*?)```\s*<!-- /{marker} -->", text, re.S)
    assert body, f"README.md lost its <!-- {marker} --> block"
    return [line.split("  #")[0].strip() for line in body.group(1).splitlines() if line.strip()]


def _checkout_copy(dest: Path) -> Path:
    """The tracked files of this checkout (as they are now, edits included) plus what `make setup` leaves:
    the two environments (linked, never written) and the sample clips."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    (dest / "tools/dvc/.venv").symlink_to(ROOT / "tools/dvc/.venv")
    (dest / "data/raw").mkdir(parents=True)
    shutil.copy2(ROOT / "data/raw/carphone_pristine.mp4", dest / "data/raw/carphone_pristine.mp4")
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)  # DVC wants an SCM, as a clone has
    return dest


@pytest.mark.dvc
def test_readme_commands_work_in_a_fresh_shell_after_setup(tmp_path):
    if not (ROOT / "tools/dvc/.venv/bin/dvc").is_file() or not (ROOT / "data/raw/carphone_pristine.mp4").is_file():
        pytest.fail("run `make setup` first (make test does)")
    env = _fresh_shell_env(Path.home())
    # The set-up command itself, from a bare PATH: up to date here, so it must finish without uv on the PATH.
    setup = subprocess.run(["make", "setup"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]

    lines = _readme_block("fresh-shell")
    assert any(line.startswith("./aubergine") for line in lines) and any(" repro " in f" {line} " for line in lines)
    work = _checkout_copy(tmp_path / "clone")
    for line in lines:
        done = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"`{line}` failed in a fresh shell ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    manifest = json.loads((work / "data/interim/raw_clips/manifest.json").read_text())
    assert [c["clip_id"] for c in manifest["clips"]] == ["carphone_pristine.mp4"]
    lock = (work / "dvc.lock").read_text()
    assert "./aubergine stage raw_clips --orchestrator dvc" in lock


def test_launcher_without_an_environment_says_to_run_setup(tmp_path):
    shutil.copy2(ROOT / "aubergine", tmp_path / "aubergine")
    done = subprocess.run([str(tmp_path / "aubergine"), "params", "check"], env=_fresh_shell_env(tmp_path),
                          capture_output=True, text=True)
    assert done.returncode == 127 and "make setup" in done.stderr


def test_stage_help_lists_every_stage():
    from orchestration.stages import STAGES

    result = runner.invoke(app, ["stage", "--help"], terminal_width=200)
    assert result.exit_code == 0
    flat = " ".join(result.output.split())
    for st in STAGES:
        assert st.name in flat, st.name


def test_restore_help_says_size_must_match_the_model():
    result = runner.invoke(app, ["restore", "--help"], terminal_width=200)
    flat = " ".join(result.output.replace("│", " ").split())
    assert "must match" in flat and "input_size" in flat


# --- 2. OCR that reads nothing -------------------------------------------------------------------------------

def test_eval_ocr_reading_nothing_is_accuracy_zero_not_a_crash(tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 360, 3), 128, np.uint8)).save(blank)
    result = runner.invoke(app, ["eval", "ocr", str(blank), "--expected", "AB 123"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout[result.stdout.index("{"):])
    assert metrics["reads"] == 0
    assert metrics["plate_exact"] == 0.0 and metrics["plate_char_accuracy"] == 0.0 and metrics["plate_n"] == 1
    original = runner.invoke(app, ["eval", "ocr", str(blank), "--expected", "AB 123", "--original"])
    assert original.exit_code == 0 and json.loads(original.stdout[original.stdout.index("{"):])["original_text_rate"] == 0.0


def test_reads_are_paired_with_plates_by_best_match():
    from evaluation.ocr import match_reads

    assert match_reads([], ["AB123", "XY9"]) == ["", ""]
    assert match_reads(["XY9", "AB12", "noise"], ["AB123", "XY9"]) == ["AB12", "XY9"]
    assert match_reads(["AB123"], ["XY9", "AB123"]) == ["", "AB123"]


# --- 3. the model's input size travels with its file ----------------------------------------------------------

def _tiny_generator_file(path: Path, input_size: int | None) -> Path:
    import torch

    from training.basicvsrpp import BasicVSRPlusPlusNet
    from training.checkpoints import export_lada

    torch.manual_seed(0)
    return export_lada(BasicVSRPlusPlusNet(8, 1), path, meta={"input_size": input_size} if input_size else None)


def test_restorer_defaults_to_the_recorded_input_size(tmp_path):
    from training.restorer import Restorer

    ours = _tiny_generator_file(tmp_path / "ours.pth", 128)
    lada_like = _tiny_generator_file(tmp_path / "lada.pth", None)
    assert Restorer.from_checkpoint(ours, device="cpu").size == 128
    assert Restorer.from_checkpoint(lada_like, device="cpu").size == 256
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Restorer.from_checkpoint(ours, size=256, device="cpu").size == 256
    assert any("trained at 128 px" in str(w.message) for w in caught)


def test_export_and_stage2_conversion_keep_the_input_size(tmp_path):
    import torch

    from training.checkpoints import convert_stage1_to_stage2, input_size_of, read_checkpoint

    src = _tiny_generator_file(tmp_path / "s1.pth", 96)
    result = runner.invoke(app, ["export", str(src), "-o", str(tmp_path / "out.pth")])
    assert result.exit_code == 0, result.output
    assert input_size_of(read_checkpoint(tmp_path / "out.pth")["meta"]) == 96
    assert convert_stage1_to_stage2(src, tmp_path / "s2.pth")["input_size"] == 96
    assert torch.load(tmp_path / "s2.pth", weights_only=True)["meta"]["input_size"] == 96


def test_training_records_its_input_size(tmp_path):
    """The loop's own checkpoints say what size they were trained at (checked in the file it writes)."""
    src = (ROOT / "training/loop.py").read_text()
    assert '"input_size": s.lq_size' in src  # cheap guard; the track test checks a real trained file


# --- 4. messages that say what is wrong with what was typed ---------------------------------------------------

def test_a_folder_given_as_a_video_says_so(tmp_path):
    from assets.video import VideoError, probe_video

    with pytest.raises(VideoError, match="is a folder, not a video file"):
        probe_video(tmp_path)
    with pytest.raises(VideoError, match="no such file"):
        probe_video(tmp_path / "missing.mp4")


def test_restore_with_a_missing_checkpoint_points_at_a_trained_generator(tmp_path):
    from conftest import synthetic_frames, write_clip

    clip = write_clip(tmp_path / "in.mp4", synthetic_frames(4, 64, 64))
    result = runner.invoke(app, ["restore", str(clip), "-o", str(tmp_path / "out.mp4"), "--checkpoint",
                                 str(tmp_path / "nope.pth")])
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "nope.pth" in flat and "--checkpoint" in flat and "stage2/generator.pth" in flat
    assert "restoration.stage1.load_from" not in flat


def test_restore_given_a_folder_as_input_says_so(tmp_path):
    ckpt = _tiny_generator_file(tmp_path / "g.pth", 64)
    result = runner.invoke(app, ["restore", str(tmp_path), "-o", str(tmp_path / "out.mp4"), "--checkpoint", str(ckpt)])
    assert result.exit_code == 2 and "is a folder, not a video file" in " ".join(result.output.split())


def test_eval_ocr_with_a_missing_path_says_no_such_file(tmp_path):
    result = runner.invoke(app, ["eval", "ocr", str(tmp_path / "plate.png")])
    assert result.exit_code == 2
    assert "no such image file or folder" in " ".join(result.output.split())


# --- 5. a failed asset check names what failed ----------------------------------------------------------------

def test_coverage_check_names_the_clips_without_regions(project):
    import dagster as dg

    from conftest import synthetic_frames, write_clip
    from orchestration.definitions import ASSETS, AubergineParams, region_tracks_coverage

    project.add_sample("carphone_pristine.mp4")
    write_clip(project.raw / "empty_gradient.mp4", synthetic_frames(12, 96, 128))
    wanted = [a for a in ASSETS if a.key.to_user_string() in ("raw_clips", "region_tracks")]
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([*wanted, region_tracks_coverage], instance=instance,
                            resources={"params": AubergineParams(path=str(project.root / "params.yaml"))})
    assert result.success
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed and "empty_gradient" in (evaluation.description or "")
    assert "carphone_pristine" not in (evaluation.description or "")
    logged = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("region_tracks_coverage" in m and "empty_gradient" in m for m in logged), logged[-10:]


def test_coverage_problems_summary_lists_failures_with_reasons():
    from orchestration.definitions import coverage_problems

    clips = [{"clip_id": "a", "status": "ok", "scenes": 2}, {"clip_id": "b", "status": "ok", "scenes": 0},
             {"clip_id": "c", "status": "failed", "error": "decode error at frame 3"}]
    failed, empty, line = coverage_problems(clips)
    assert failed == ["c"] and empty == ["b"]
    assert "c (decode error at frame 3)" in line and "without any region" in line and "b" in line


# --- 7. a run's speed is the whole run's average --------------------------------------------------------------

def test_training_summary_reports_the_run_average_and_the_last_window(tmp_path):
    from training.loop import TrainResult, summary

    result = TrainResult(checkpoint=tmp_path / "x.pth", iterations=30, resumed_from=10,
                         history=[{"iteration": 30, "loss_pix": 0.1, "iters_per_s": 1.86, "peak_memory_mb": 1.0}],
                         seconds=160.0, trainable_params=1, frozen_params=1, device="cpu", labels={})
    out = summary(result)
    assert out["iters_per_s"] == pytest.approx(20 / 160.0)
    assert out["iters_per_s_last_window"] == 1.86
    nothing = summary(TrainResult(tmp_path / "x.pth", 30, 30, [], 0.01, 1, 1, "cpu", {}))
    assert math.isnan(nothing["iters_per_s"])


# --- 8. DVC code deps derived from the imports -----------------------------------------------------------------

def test_dvc_yaml_lists_every_module_a_stage_imports():
    import yaml

    from orchestration.code_deps import code_files
    from orchestration.stages import COMMON_CODE, STAGES

    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for st in STAGES:
        deps = set(doc["stages"][st.name]["deps"])
        assert set(code_files(st.run)) | set(COMMON_CODE) <= deps, st.name
    # Deferred imports (inside functions) are the ones a hand-kept list forgot.
    assert "training/detector.py" in doc["stages"]["region_tracks"]["deps"]  # trained detector as region finder
    assert "training/perceptual.py" in doc["stages"]["stage2_checkpoint"]["deps"]
    assert "inference/restore_video.py" in doc["stages"]["restoration_report"]["deps"]
    # ... and a stage does not depend on the bodies of the others that share its module.
    assert "assets/eggplant.py" not in doc["stages"]["raw_clips"]["deps"]
    assert "training/detector_loop.py" not in doc["stages"]["unified_coco"]["deps"]


def test_the_project_has_no_import_circle():
    from orchestration.code_deps import import_cycles

    assert import_cycles() == []


@pytest.mark.parametrize("stage", ["raw_clips", "promoted_models"])
def test_modules_a_stage_really_loads_are_among_its_derived_deps(project, stage):
    """Run the stage in a fresh interpreter and compare the project modules it loaded beyond those that
    importing the runner loads anyway."""
    project.add_sample("carphone_pristine.mp4")
    script = (
        "import sys, json\n"
        "from orchestration.runner import run_stage\n"
        "from orchestration.code_deps import module_path\n"
        "before = set(sys.modules)\n"
        f"run_stage({stage!r})\n"
        "print(json.dumps(sorted(str(module_path(m)) for m in set(sys.modules) - before if module_path(m))))\n"
    )
    if stage == "promoted_models":
        project.write_params(mlflow__enabled=False)
    done = subprocess.run([sys.executable, "-c", script], cwd=project.root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    from orchestration.code_deps import code_files
    from orchestration.stages import COMMON_CODE, stage as lookup

    assert loaded <= set(code_files(lookup(stage).run)) | set(COMMON_CODE), loaded - set(code_files(lookup(stage).run))
