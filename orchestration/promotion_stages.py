"""The `promoted_models` stage: run the promotion gate over every model named in `promotion.models`."""

from __future__ import annotations

from pathlib import Path

from assets.atomic import atomic_dir, write_json
from orchestration import tracking
from orchestration.config import Params
from orchestration.stage_io import StageOutput, fingerprint
from orchestration.promotion import Decision, decisions_markdown, gate_model
from orchestration.rescoring import rescorer_for

PROMOTION_REPORT = Path("data/reports/promotion")


def run_promoted_models(params: Params) -> StageOutput:
    if params.mlflow.enabled:
        registry = tracking.client(params)
        decisions = [gate_model(registry, name, gate, rescorer_for(params, name))
                     for name, gate in params.promotion.models.items()]
    else:
        decisions = [Decision(name, "skipped", None, None, None, ["mlflow.enabled is false: there is no registry to promote in"])
                     for name in params.promotion.models]
    table = decisions_markdown(decisions)
    with atomic_dir(PROMOTION_REPORT) as tmp:
        write_json(tmp / "decisions.json", {"decisions": [d.as_dict() for d in decisions]})
        (tmp / "decisions.md").write_text("# Promotion decisions\n\n" + table + "\n")
    tags = {}
    metadata: dict = {}
    for d in decisions:
        tags[f"promotion.{d.model}.outcome"] = d.outcome
        tags[f"promotion.{d.model}.champion"] = str(d.champion_after or "none")
        metadata[f"{d.model}.outcome"] = d.outcome
        metadata[f"{d.model}.challenger_version"] = d.challenger_version or 0
        metadata[f"{d.model}.champion_version"] = d.champion_after or 0
    tracking.set_tags(tags)
    return StageOutput(
        metadata={**metadata, "promoted": sum(d.outcome == "promoted" for d in decisions)},
        files=[PROMOTION_REPORT / "decisions.json", PROMOTION_REPORT / "decisions.md"],
        input_hash=fingerprint(*[(d.model, d.challenger_version, d.champion_before) for d in decisions]),
        markdown={"decisions": table},
    )
