"""Incremental per-clip stages: a run over a library computes only the clips whose inputs, knobs or code changed,
takes the others from the per-clip store (assets/clip_cache.py), and writes exactly what a from-scratch run writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import SAMPLE_RAW, Project, need_media

from orchestration.runner import run_stage

STAGES = ("raw_clips", "region_tracks", "eggplant_gt", "mosaic_lq", "restoration_dataset")
PER_CLIP = STAGES[1:]
OUTS = ("data/interim/region_tracks", "data/interim/eggplant_gt", "data/interim/mosaic_lq", "data/datasets/restoration")


def tree(root: Path) -> dict[str, str]:
    out = {}
    for folder in OUTS:
        for p in sorted((root / folder).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_all(project: Project, monkeypatch) -> dict[str, dict]:
    monkeypatch.chdir(project.root)
    return {name: run_stage(name, project.params()).output.metadata for name in STAGES}


def counts(meta: dict[str, dict]) -> dict[str, tuple[int, int]]:
    return {name: (meta[name]["clips_reused"], meta[name]["clips_computed"]) for name in PER_CLIP}


@pytest.mark.slow
def test_added_removed_and_retuned_clips_recompute_only_what_changed(tmp_path, monkeypatch):
    need_media()
    lib = Project(tmp_path / "library")
    lib.write_params()
    for name in ("carphone_pristine.mp4", "astronaut_zoom.mp4"):
        lib.add_sample(name)
    first = run_all(lib, monkeypatch)
    assert counts(first) == {name: (0, 2) for name in PER_CLIP}

    # A new clip: only it is computed, in every per-clip stage, and the outputs are those of a from-scratch run.
    def sides() -> dict[str, str]:
        rows = json.loads((lib.root / "data/datasets/restoration/index.json").read_text())["scenes"]
        return {row["clip_id"]: row["split"] for row in rows}

    before = sides()
    lib.add_sample("plates_pan.mp4")
    added = run_all(lib, monkeypatch)
    # restoration_dataset also re-lays-out a clip that changed sides: with two clips its split forces one to val
    # (`split_clips`: at least one group per side), which a third clip can release.
    moved = sum(before[c] != side for c, side in sides().items() if c in before)
    assert counts(added) == {**{name: (2, 1) for name in PER_CLIP[:3]}, "restoration_dataset": (2 - moved, 1 + moved)}
    scratch = Project(tmp_path / "scratch")
    scratch.write_params()
    for name in ("carphone_pristine.mp4", "astronaut_zoom.mp4", "plates_pan.mp4"):
        scratch.add_sample(name)
    run_all(scratch, monkeypatch)
    assert tree(lib.root) == tree(scratch.root)

    # A removed clip is gone from every output; nothing is computed.
    (lib.raw / "astronaut_zoom.mp4").unlink()
    removed = run_all(lib, monkeypatch)
    assert {k: v for k, v in counts(removed).items() if k != "restoration_dataset"} == {name: (2, 0) for name in PER_CLIP[:3]}
    assert sum(counts(removed)["restoration_dataset"]) == 2  # a clip whose split side moved is re-laid out
    files = tree(lib.root)
    assert not [f for f in files if "astronaut_zoom" in f]
    index = json.loads((lib.root / "data/datasets/restoration/index.json").read_text())
    assert {row["clip_id"] for row in index["scenes"]} == {"carphone_pristine.mp4", "plates_pan.mp4"}

    def interim(files):
        return {f: h for f, h in files.items() if f.startswith("data/interim") and not f.endswith("index.json")}

    assert interim(files) == {f: h for f, h in interim(tree(scratch.root)).items() if "astronaut_zoom" not in f}

    # A knob of one stage: exactly that stage's clips and those below recompute.
    lib.write_params(eggplant__fill=0.9)
    retuned = run_all(lib, monkeypatch)
    assert counts(retuned) == {"region_tracks": (2, 0), "mosaic_lq": (2, 0), "eggplant_gt": (0, 2), "restoration_dataset": (0, 2)}


def test_a_changed_clip_file_under_the_same_name_is_recomputed(project):
    project.add_sample("carphone_pristine.mp4", "clip.mp4")
    run_stage("raw_clips", project.params())
    assert run_stage("region_tracks", project.params()).output.metadata["clips_computed"] == 1
    assert run_stage("region_tracks", project.params()).output.metadata["clips_reused"] == 1
    project.add_sample("astronaut_zoom.mp4", "clip.mp4")  # new content, same clip id
    run_stage("raw_clips", project.params())
    meta = run_stage("region_tracks", project.params()).output.metadata
    assert (meta["clips_reused"], meta["clips_computed"]) == (0, 1)


def _clip_steps(home: Path) -> dict[str, list[tuple[str, float, float, int]]]:
    """Per per-clip stage: (step key, start, end, pid) of each of its one-clip steps in the latest run."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    (run, *_) = instance.get_runs(limit=1)
    spans: dict[str, dict] = {}
    for record in instance.all_logs(run.run_id):
        event = record.dagster_event
        if event is None or not event.step_key or "_clip[" not in event.step_key:
            continue
        span = spans.setdefault(event.step_key, {})
        if event.event_type_value == "STEP_START":  # emitted by the step's own process (the executor's are not)
            span["start"], span["pid"] = record.timestamp, event.pid
        elif event.event_type_value == "STEP_SUCCESS":
            span["end"] = record.timestamp
    out: dict[str, list] = {}
    for key, span in spans.items():
        out.setdefault(key.split(".")[0], []).append((key, span["start"], span["end"], span["pid"]))
    return out


@pytest.mark.slow
def test_dagster_runs_each_new_clip_as_its_own_step_side_by_side(tmp_path):
    import subprocess
    import sys

    from tests.dvc_project import dvc_env, engine_project

    need_media()
    base = Project(tmp_path / "base")
    base.write_params()
    for name in ("carphone_pristine.mp4", "astronaut_zoom.mp4"):
        base.add_sample(name)
    root = engine_project(tmp_path / "dagster", base.root)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**dvc_env(), "DAGSTER_HOME": str(home)}
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", ",".join(STAGES[:4]), "-m",
           "orchestration.definitions"]

    def materialize() -> None:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    materialize()
    first = _clip_steps(home)
    assert sorted(first) == ["eggplant_gt", "mosaic_lq", "region_tracks"]
    steps = first["region_tracks"]
    assert len(steps) == 2 and len({pid for *_, pid in steps}) == 2  # one process per clip
    (_, a0, a1, _), (_, b0, b1, _) = steps
    assert a0 < b1 and b0 < a1, f"the two clips' steps did not overlap: {steps}"  # the multiprocess executor

    # The run after a clip arrives (what the new-clips sensor requests): one step per stage, for that clip only.
    (root / "data/raw/plates_pan.mp4").write_bytes((SAMPLE_RAW / "plates_pan.mp4").read_bytes())
    materialize()
    second = _clip_steps(home)
    assert {stage: [key.split("[")[1] for key, *_ in steps] for stage, steps in second.items()} == \
        {stage: ["plates_pan_mp4_0]"] for stage in ("region_tracks", "eggplant_gt", "mosaic_lq")}
    index = json.loads((root / "data/interim/mosaic_lq/index.json").read_text())
    assert sorted(c["clip_id"] for c in index["clips"]) == ["astronaut_zoom.mp4", "carphone_pristine.mp4", "plates_pan.mp4"]
