"""The promotion gate: per registered model, move the `champion` alias to the `challenger` only when the
challenger's evaluation run beats the champion's by the rules in params.yaml (`promotion.models`).

The rules compare metrics of the evaluation runs, i.e. the runs that registered each version (the report
stages log their metrics there). Those are compared as they are only when both runs measured the same data
(their `eval.data_hash` tags agree); otherwise the champion is re-scored on the challenger's data first
(orchestration/rescoring.py), or, where it cannot be, the comparison is refused and the reason says why. A
model with no champion yet is promoted when it meets the absolute floors.
Every decision — inputs, outcome, reasons — is written as model-version tags, as tags and a `decisions.json`
artifact of the gate's own MLflow run, and as Dagster metadata of the `promoted_models` asset.

`decide` is a pure function of two metric dicts; `gate_model` reads and writes the registry.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from orchestration.config import ModelGate
from orchestration.tracking import EVAL_DATA_TAG

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
    # The champion's metrics recomputed on the challenger's data (None: its own run's were comparable).
    champion_rescored: dict[str, float] | None = None

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


def _run(client, run_id: str | None) -> tuple[dict[str, float], str | None]:
    """(metrics, eval.data_hash tag) of an evaluation run."""
    if not run_id:
        return {}, None
    run = client.get_run(run_id)
    return dict(run.data.metrics), run.data.tags.get(EVAL_DATA_TAG)


def _champion_metrics(name: str, champion, champion_metrics: dict, champion_hash: str | None,
                      challenger_hash: str | None, rescorer) -> tuple[dict | None, dict | None, str | None]:
    """(metrics to compare with, re-scored metrics or None, refusal reason or None)."""
    if challenger_hash is not None and challenger_hash == champion_hash:
        return champion_metrics, None, None
    v = champion.version
    measured = f"champion v{v} was measured on {champion_hash or 'untagged data'}, the challenger on " \
               f"{challenger_hash or 'untagged data'}"
    if rescorer is None:
        return None, None, f"{measured}, and there is no evaluation to re-score {name} with: comparison refused"
    current = rescorer.data_hash()
    if challenger_hash != current:
        return None, None, (f"{measured}, and the project's evaluation data is now {current}: re-run the "
                            f"challenger's report before promoting; comparison refused")
    try:
        rescored = rescorer.rescore(f"models:/{name}/{v}")
    except Exception as err:  # a version whose artifacts no longer load: say so, never compare unequal numbers
        return None, None, f"{measured}, and re-scoring champion v{v} failed ({type(err).__name__}: {err}): comparison refused"
    return rescored, rescored, f"{measured}: champion v{v} re-scored on the challenger's data"


def gate_model(client, name: str, gate: ModelGate, rescorer=None) -> Decision:
    """Decide for one registered model, move the alias on a pass and tag the challenger version.
    `rescorer` (orchestration.rescoring.Rescorer) re-scores the champion when the two evaluation runs
    measured different data; without one such a comparison is refused."""
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
    challenger_metrics, challenger_hash = _run(client, challenger.run_id)
    theirs, rescored, note = None, None, None
    if champion is not None:
        champion_metrics, champion_hash = _run(client, champion.run_id)
        theirs, rescored, note = _champion_metrics(name, champion, champion_metrics, champion_hash, challenger_hash,
                                                   rescorer)
        if theirs is None:  # refused: unequal data and no fair re-score
            decision = Decision(name, REJECTED, champion_after=champion_v, reasons=[note], **base)
            _record(client, decision)
            return decision
    passed, checks = decide(gate, challenger_metrics, theirs)
    failed = [c.reason for c in checks if not c.passed]
    if passed:
        reasons = [c.reason for c in checks] or ["no rules configured"]
        if champion is None:
            reasons.insert(0, "first model: promoted on its floors alone")
        decision = Decision(name, PROMOTED, champion_after=challenger_v, reasons=reasons, checks=checks, **base)
    else:
        decision = Decision(name, REJECTED, champion_after=champion_v, reasons=failed, checks=checks, **base)
    if note:
        decision.reasons.insert(0, note)
    decision.champion_rescored = rescored
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
