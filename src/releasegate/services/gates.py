"""Judging the gate into a stage from stored state. The evidence-backed criteria plug in here."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from releasegate.plan.schema import Plan, criterion_kind, criterion_spec, format_duration
from releasegate.policy.verdict import CriterionResult, Verdict
from releasegate.store.models import Rollout


def evaluate_gate(session: Session, plan: Plan, rollout: Rollout, target_stage: int, *, now: datetime, requested_by: str | None = None) -> Verdict:
    """The verdict on entering ``target_stage`` for ``rollout`` at ``now``."""
    stage = plan.stages[target_stage]
    results: list[CriterionResult] = []
    for criterion in stage.gate:
        kind = criterion_kind(criterion)
        spec = criterion_spec(criterion)
        if kind == "time_in_stage":
            if rollout.stage_entered_at is None:
                results.append(CriterionResult(kind, "fail", "the version has not entered any stage yet"))
                continue
            spent = now - rollout.stage_entered_at
            outcome = "pass" if spent >= spec.min else "fail"
            results.append(CriterionResult(
                kind, outcome,
                f"{format_duration(spent) if spent.total_seconds() >= 60 else 'under a minute'} in stage "
                f"{rollout.stage_name!r}; {format_duration(spec.min)} required",
                numbers={"seconds_in_stage": int(spent.total_seconds()), "required_seconds": int(spec.min.total_seconds())},
            ))
        else:
            results.append(CriterionResult(kind, "inconclusive", f"no {kind} evidence is recorded yet, so this cannot pass"))
    return Verdict(stage=stage.name, results=tuple(results))
