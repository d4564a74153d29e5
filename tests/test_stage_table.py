"""One stage table, two engines: dvc.yaml and the Dagster graph come from orchestration/stages.py, and a
DVC reproduction and a Dagster materialization write byte-identical files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc_project import DVC_BIN, dvc_env, engine_project, need_dvc

from orchestration import dvc
from orchestration.stages import STAGES, topological

ROOT = Path(__file__).resolve().parents[1]
LINEAGE = [
    "raw_clips", "synthetic_scenes", "region_tracks", "eggplant_gt", "mosaic_lq", "restoration_dataset",
    "stage1_checkpoint", "stage2_checkpoint", "restoration_report",
    "mosaic_coco", "mosaic_detector_checkpoint", "mosaic_detection_report",
    "unified_coco", "detector_checkpoint", "detection_report", "lora_checkpoint", "anonymization_report",
    "promoted_models",
]


def test_committed_dvc_yaml_matches_the_stage_table():
    assert (ROOT / "dvc.yaml").read_text() == dvc.render(), "dvc.yaml drifted: run `./aubergine dvc-yaml`"


def test_dvc_yaml_names_real_params_and_files():
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert list(doc["stages"]) == LINEAGE
    for name, entry in doc["stages"].items():
        assert entry["cmd"].endswith(f"aubergine stage {name} --orchestrator dvc")
        for key in entry["params"]:
            node = params
            for part in key.split("."):  # DVC tracks dotted keys (restoration.stage1) too
                assert isinstance(node, dict) and part in node, f"{name}: params key {key!r} is not in params.yaml"
                node = node[part]
        for dep in entry["deps"]:
            if dep.endswith(".py"):
                assert (ROOT / dep).is_file(), f"{name}: code dep {dep} does not exist"
        assert all(o.startswith("data/") for o in entry["outs"])


def test_outputs_never_overlap():
    outs = [o for st in STAGES for o in (*st.outs, *st.metrics)]
    for a in outs:
        for b in outs:
            assert a == b or not (b + "/").startswith(a + "/"), (a, b)
    assert len(outs) == len(set(outs))


def test_dagster_graph_is_the_stage_table():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {st.name for st in STAGES}
    for st in STAGES:
        node = graph.get(__import__("dagster").AssetKey(st.name))
        assert {p.to_user_string() for p in node.parent_keys} == set(st.upstream)
        assert node.group_name == st.group
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert ("raw_clips", "raw_clips_manifest_expectations") in checks
    assert ("restoration_dataset", "restoration_dataset_expectations") in checks
    assert ("unified_coco", "unified_coco_expectations") in checks
    assert [s.name for s in topological()] == LINEAGE


def _tree_hashes(root: Path) -> dict[str, str]:
    out = {}
    for sub in ("data/interim", "data/datasets", "data/reports", "data/metrics"):
        for path in sorted((root / sub).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
@pytest.mark.dvc
def test_dvc_repro_and_dagster_materialize_write_identical_files(project, tmp_path):
    need_dvc()
    project.add_sample("carphone_pristine.mp4")
    project.write_params(mlflow__enabled=False)
    env = dvc_env()

    dvc_root = engine_project(tmp_path / "dvc", project.root)
    subprocess.run([str(DVC_BIN), "init", "--no-scm", "-q"], cwd=dvc_root, env=env, check=True)
    # The data lineage is compared byte for byte; training stages record wall-clock timings, so they are not.
    first = subprocess.run([str(DVC_BIN), "repro", "restoration_dataset"], cwd=dvc_root, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    again = subprocess.run([str(DVC_BIN), "repro", "restoration_dataset"], cwd=dvc_root, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "Data and pipelines are up to date" in again.stdout, again.stdout

    dag_root = engine_project(tmp_path / "dagster", project.root)
    env_dag = {**env, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    (tmp_path / "dagster_home").mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "--select", "*restoration_dataset", "-m", "orchestration.definitions"],
        cwd=dag_root, env=env_dag, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    dvc_files, dag_files = _tree_hashes(dvc_root), _tree_hashes(dag_root)
    assert any("crop_unscaled_mosaic" in f for f in dvc_files), sorted(dvc_files)
    assert dvc_files == dag_files
