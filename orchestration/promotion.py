"""The promotion gate: per registered model, move the `champion` alias to the `challenger` only when the
challenger's evaluation run beats the champion's by the rules in params.yaml (`promotion.models`).

The rules compare metrics of the evaluation runs, i.e. the runs that registered each version (the report
stages log their metrics there). A model with no champion yet is promoted when it meets the absolute floors.
Every decision — inputs, outcome, reasons — is written as model-version tags, as tags and a `decisions.json`
artifact of the gate's own MLflow run, and as Dagster metadata of the `promoted_models` asset.

`decide` is a pure function of two metric dicts; `gate_model` reads and writes the registry.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from orchestration.config import ModelGate

CHAMPION = "champion"
CHALLENGER = "challenger"

PROMOTED = "promoted"
REJECTED = "rejected"
ALREADY_CHAMPION = "already_champion"
NO_CHALLENGER = "no_challenger"


@dataclass
class RuleCheck:
    kind: str  # "compare" | "floor"
    metric: str
    challenger: float | None
    reference: float | None  # the champion's value (compare) or the bound (floor)
    passed: bool
    reason: str


@dataclass
class Decision:
    model: str
    outcome: str
    challenger_version: int | None
    champion_before: int | None
    champion_after: int | None
    reasons: list[str]
    checks: list[RuleCheck] = field(default_factory=list)
    challenger_run_id: str | None = None
    champion_run_id: str | None = None
    decided_at: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _value(metrics: dict[str, float], metric: str) -> float | None:
    value = metrics.get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def decide(gate: ModelGate, challenger: dict[str, float], champion: dict[str, float] | None) -> tuple[bool, list[RuleCheck]]:
    """Apply the floors, then (when there is a champion) the comparisons. Pass = every check passes."""
    checks: list[RuleCheck] = []
    for floor in gate.floors:
        value = _value(challenger, floor.metric)
        if value is None:
            checks.append(RuleCheck("floor", floor.metric, None, floor.min if floor.min is not None else floor.max, False,
                                    f"{floor.metric}: missing from the challenger's evaluation run"))
            continue
        if floor.min is not None and value < floor.min:
            checks.append(RuleCheck("floor", floor.metric, value, floor.min, False, f"{floor.metric} = {value:.4g} is below the floor {floor.min:.4g}"))
        elif floor.max is not None and value > floor.max:
            checks.append(RuleCheck("floor", floor.metric, value, floor.max, False, f"{floor.metric} = {value:.4g} is above the ceiling {floor.max:.4g}"))
        else:
            bound = floor.min if floor.min is not None else floor.max
            checks.append(RuleCheck("floor", floor.metric, value, bound, True, f"{floor.metric} = {value:.4g} meets the floor"))
    if champion is not None:
        for rule in gate.compare:
            ours, theirs = _value(challenger, rule.metric), _value(champion, rule.metric)
            if ours is None or theirs is None:
                who = "challenger" if ours is None else "champion"
                checks.append(RuleCheck("compare", rule.metric, ours, theirs, False,
                                        f"{rule.metric}: missing from the {who}'s evaluation run"))
                continue
            gain = ours - theirs if rule.better == "higher" else theirs - ours
            passed = gain >= rule.margin - rule.tolerance
            if rule.tolerance:
                relation = "within" if passed else "beyond"
                how = f"{relation} the tolerance {rule.tolerance:g} of it (gain {gain:+.4g})"
            else:
                how = f"{'beats' if passed else 'does not beat'} it by the margin {rule.margin:g} (gain {gain:+.4g})"
            checks.append(RuleCheck("compare", rule.metric, ours, theirs, passed,
                                    f"{rule.metric}: {ours:.4g} vs champion {theirs:.4g} ({rule.better} is better): {how}"))
    return all(c.passed for c in checks), checks


def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such alias (or no such model): both mean "none yet"
        return None


def _run_metrics(client, run_id: str | None) -> dict[str, float]:
    if not run_id:
        return {}
    return dict(client.get_run(run_id).data.metrics)


def gate_model(client, name: str, gate: ModelGate) -> Decision:
    """Decide for one registered model, move the alias on a pass and tag the challenger version."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    challenger = _alias_version(client, name, CHALLENGER)
    champion = _alias_version(client, name, CHAMPION)
    champion_v = int(champion.version) if champion is not None else None
    if challenger is None:
        return Decision(name, NO_CHALLENGER, None, champion_v, champion_v,
                        [f"{name} has no version aliased {CHALLENGER!r} (is the model registered?)"], decided_at=now)
    challenger_v = int(challenger.version)
    base = dict(challenger_version=challenger_v, champion_before=champion_v, challenger_run_id=challenger.run_id,
                champion_run_id=champion.run_id if champion is not None else None, decided_at=now)
    if champion_v == challenger_v:
        return Decision(name, ALREADY_CHAMPION, champion_after=champion_v,
                        reasons=[f"version {challenger_v} is already the champion"], **base)
    passed, checks = decide(gate, _run_metrics(client, challenger.run_id),
                            _run_metrics(client, champion.run_id) if champion is not None else None)
    failed = [c.reason for c in checks if not c.passed]
    if passed:
        reasons = [c.reason for c in checks] or ["no rules configured"]
        if champion is None:
            reasons.insert(0, "first model: promoted on its floors alone")
        decision = Decision(name, PROMOTED, champion_after=challenger_v, reasons=reasons, checks=checks, **base)
    else:
        decision = Decision(name, REJECTED, champion_after=champion_v, reasons=failed, checks=checks, **base)
    _record(client, decision)
    return decision


def _record(client, decision: Decision) -> None:
    name, version = decision.model, str(decision.challenger_version)
    if decision.outcome == PROMOTED:
        client.set_registered_model_alias(name, CHAMPION, version)
    tags = {
        "promotion.outcome": decision.outcome,
        "promotion.decided_at": decision.decided_at,
        "promotion.compared_with": str(decision.champion_before) if decision.champion_before else "none",
        # MLflow caps tag values (5000 chars); reasons are short, but keep it safe
        "promotion.reasons": " | ".join(decision.reasons)[:4000],
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def decisions_markdown(decisions: list[Decision]) -> str:
    rows = ["| model | outcome | challenger | champion before → after | reasons |", "|---|---|---|---|---|"]
    for d in decisions:
        before = f"v{d.champion_before}" if d.champion_before else "none"
        after = f"v{d.champion_after}" if d.champion_after else "none"
        challenger = f"v{d.challenger_version}" if d.challenger_version else "none"
        reasons = "<br>".join(r.replace("|", "/") for r in d.reasons)
        rows.append(f"| {d.model} | **{d.outcome}** | {challenger} | {before} → {after} | {reasons} |")
    return "\n".join(rows)
