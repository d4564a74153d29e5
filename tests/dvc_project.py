"""The one way the tests build a throwaway DVC project: a project folder (conftest's `project` fixture) with
its sample clips and params.yaml, the code linked from this checkout, and this checkout's dvc.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DVC_BIN = ROOT / "tools/dvc/.venv/bin/dvc"
CODE = ("assets", "orchestration", "training", "evaluation", "inference")


def need_dvc() -> None:
    if not DVC_BIN.is_file():
        pytest.fail(f"{DVC_BIN} missing: the DVC tool environment is installed by `make setup`")


def dvc_env(**extra: str) -> dict[str, str]:
    # PYTHONPATH: the stage commands run `python -m orchestration.cli` from the linked code.
    # An MLFLOW_TRACKING_URI exported by an earlier test's MLflow client would send the stages' runs to that
    # test's store; the throwaway project's params.yaml names its own.
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**inherited, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1", **extra}


def engine_project(base: Path, project_root: Path) -> Path:
    """A project folder holding the sample clips, the code (linked) and this checkout's dvc.yaml."""
    base.mkdir()
    shutil.copytree(project_root / "data", base / "data", symlinks=True)
    shutil.copy(project_root / "params.yaml", base / "params.yaml")
    for code in CODE:
        (base / code).symlink_to(ROOT / code)
    # The committed dvc.yaml and launcher as they are: `./aubergine` finds this checkout's environment
    # through the link below and runs the linked code.
    shutil.copy(ROOT / "dvc.yaml", base / "dvc.yaml")
    shutil.copy2(ROOT / "aubergine", base / "aubergine")
    (base / ".venv").symlink_to(Path(sys.prefix))
    return base


def dvc(root: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(DVC_BIN), *args], cwd=root, env=env or dvc_env(), capture_output=True, text=True)
    if check:
        assert out.returncode == 0, f"dvc {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, f"git {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def git_dvc_project(base: Path, project_root: Path) -> Path:
    """engine_project() under Git with one commit: `dvc exp` needs a baseline commit to hang experiments on."""
    root = engine_project(base, project_root)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "tests@aubergine.invalid")
    git(root, "config", "user.name", "aubergine tests")
    # The MLflow store is per checkout, never versioned; DVC adds its own outs to .gitignore files.
    (root / ".gitignore").write_text("/mlruns.db\n/mlartifacts/\n/dvc_plots/\n/.venv\n")
    dvc(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "baseline")
    return root
