"""dvc.yaml, generated from the stage table (never edited by hand; a test fails when it drifts)."""

from __future__ import annotations

from pathlib import Path

import yaml

from orchestration.code_deps import code_files
from orchestration.stages import COMMON_CODE, COMMON_PARAMS, STAGES, Stage, topological

DVC_YAML = Path("dvc.yaml")
HEADER = (
    "# Generated from the stage table in orchestration/stages.py by `aubergine dvc-yaml`. Do not edit:\n"
    "# change the table and regenerate; tests/test_stage_table.py fails when this file drifts.\n"
)
# `./aubergine` runs the locked environment that `make setup` made, whatever is on the PATH (a fresh shell
# has no uv); DVC lives in its own tool environment (its antlr4 pin conflicts with Dagster's), so it only
# ever shells out to this.
COMMAND = "./aubergine stage {name} --orchestrator dvc"


def stage_entry(st: Stage) -> dict:
    by_name = {s.name: s for s in STAGES}
    metrics = set(st.metrics)
    deps = [*st.extra_deps]
    for upstream in st.upstream:
        deps.extend(by_name[upstream].outs)
    deps.extend(sorted(set(COMMON_CODE) | set(code_files(st.run))))
    entry: dict = {
        "desc": st.description,
        "cmd": COMMAND.format(name=st.name),
        "deps": deps,
        "params": [*COMMON_PARAMS, *st.params],
        "outs": [o for o in st.outs if o not in metrics],
    }
    if metrics:
        entry["metrics"] = [{m: {"cache": False}} for m in st.metrics]
    return entry


def plot_entries() -> list[dict]:
    """Top-level `plots:` of dvc.yaml, one named plot per training stage.

    A plot id with `y: {file: [fields]}` (rather than the file as the id) keeps every loss of a stage on
    one chart and gives `dvc plots show <id>` a stable name that does not change if the out folder moves.
    """
    entries = []
    for st in topological():
        for index, (path, x, ys) in enumerate(st.plots):
            plot_id = st.name if len(st.plots) == 1 else f"{st.name}_{index}"
            entries.append({plot_id: {
                "title": f"{st.name}: training curves",
                "template": "linear",
                "x": x,
                "y": {path: list(ys)},
                "x_label": x,
                "y_label": "loss" if all(y.startswith("loss") for y in ys) else "value",
            }})
    return entries


def render() -> str:
    doc: dict = {"stages": {st.name: stage_entry(st) for st in topological()}}
    if plots := plot_entries():
        doc["plots"] = plots
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=110)


def write(path: Path = DVC_YAML) -> bool:
    """Write dvc.yaml; returns True when it changed."""
    text = render()
    if path.is_file() and path.read_text() == text:
        return False
    path.write_text(text)
    return True
