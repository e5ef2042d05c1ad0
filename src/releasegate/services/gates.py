"""Judging the gate into a stage from stored state: gather facts with a few queries, call the pure judge.

``gather_facts`` reads evidence rows, incidents, approvals and the hourly request aggregates
(``RequestBucket``; request events are never scanned, and bucket rows are summed by the database,
flag counts included). ``policy.gates.judge_gate`` decides.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from releasegate.detectors.settings import sample_rates
from releasegate.errors import NotFound
from releasegate.plan.schema import EvalCriterion, FlagRateCriterion, Plan, Stage, criterion_spec
from releasegate.policy.gates import (
    ApprovalFact,
    EvalFact,
    FindingFact,
    GateFacts,
    IncidentFact,
    TrafficFact,
    judge_gate,
    traffic_windows,
)
from releasegate.policy.rollout import SERVING_STATES
from releasegate.policy.verdict import Verdict
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.plans import current_plan
from releasegate.store.evidence import (
    Approval,
    EvalResultRecord,
    FindingRecord,
    Incident,
    PromotionRequest,
)
from releasegate.store.models import Rollout, Transition
from releasegate.store.requests import RequestBucket


def floor_hour(t: datetime) -> datetime:
    """The start of the hourly request bucket holding ``t``."""
    return t.replace(minute=0, second=0, microsecond=0)


def traffic_fact(session: Session, model: str, version: str, stage: str | None, since: datetime, *,
                 deployer_id: str | None = None, detectors: Iterable[str] | None = None) -> TrafficFact:
    """Request aggregates of ``version`` in ``stage`` over whole hourly buckets from ``since`` (rounded down).

    ``flagged`` holds the counts of ``detectors``, summed by the database in the same query; with
    ``detectors=None`` every detector's count is read (one row per bucket: for small windows only).
    """
    b = RequestBucket
    start = floor_hour(since)
    where = [b.model == model, b.version == version, b.bucket_start >= start, b.deployer_id != ""]
    if stage is not None:
        where.append(b.stage == stage)
    if deployer_id is not None:
        where.append(b.deployer_id == deployer_id)
    wanted = sorted(set(detectors)) if detectors is not None else []
    sums = [func.coalesce(func.sum(b.flagged[d].as_integer()), 0) for d in wanted]
    row = session.execute(
        select(func.coalesce(func.sum(b.requests), 0), func.count(distinct(b.deployer_id)).filter(b.requests > 0), *sums)
        .where(*where)
    ).one()
    requests, deployers = row[0], row[1]
    flagged: dict[str, int] = {d: int(n) for d, n in zip(wanted, row[2:], strict=True) if n}
    if detectors is None:
        for (counts,) in session.execute(select(b.flagged).where(*where, b.flagged.is_not(None))):
            for detector, n in (counts or {}).items():
                flagged[detector] = flagged.get(detector, 0) + int(n)
    ref = f"request_buckets:{model}:{version}:{stage or '*'}:{start.isoformat()}.."
    return TrafficFact(since=since, requests=int(requests), deployers=int(deployers), flagged=flagged, refs=(ref,))


def _flag_detectors(stage: Stage) -> set[str]:
    return {spec.detector for spec in map(criterion_spec, stage.gate) if isinstance(spec, FlagRateCriterion)}


def _eval_versions(stage: Stage, version: str) -> set[str]:
    out: set[str] = set()
    for c in stage.gate:
        spec = criterion_spec(c)
        if isinstance(spec, EvalCriterion):
            out.add(version if spec.version == "this" else spec.version)
    return out


def approvals_valid_since(session: Session, rollout: Rollout) -> datetime | None:
    """Approvals given before the version's latest halt or rollback no longer count."""
    return session.scalar(select(func.max(Transition.at)).where(
        Transition.rollout_id == rollout.id, Transition.action.in_(("halt", "rollback"))))


def gather_facts(session: Session, plan: Plan, rollout: Rollout, target_stage: int, *, now: datetime,
                 requested_by: str | None = None) -> GateFacts:
    """Every fact the gate into ``target_stage`` needs, read with a handful of aggregate queries."""
    stage = plan.stages[target_stage]
    model, version = rollout.model_name, rollout.version
    kinds = {type(criterion_spec(c)).__name__ for c in stage.gate}
    evals: list[EvalFact] = []
    versions = _eval_versions(stage, version)
    if versions:
        for r in session.scalars(select(EvalResultRecord).where(
                EvalResultRecord.model_name == model, EvalResultRecord.version.in_(versions))):
            evals.append(EvalFact(
                ref=f"eval_result:{r.id}", import_ref=r.import_id, version=r.version, suite=r.suite, task=r.task,
                metric=r.metric, value=r.value, stderr=r.stderr, measured_at=r.completed_at or r.imported_at,
                source=f"{r.source_name} (sha256 {r.source_sha256[:12]})",
            ))
    findings: list[FindingFact] = []
    if "FindingsCriterion" in kinds:
        findings = [FindingFact(ref=f"finding:{f.id}", severity=f.severity, status=f.status, title=f.title)
                    for f in session.scalars(select(FindingRecord).where(
                        FindingRecord.model_name == model, FindingRecord.version == version))]
    incidents: list[IncidentFact] = []
    if "IncidentsCriterion" in kinds:
        incidents = [incident_fact(i) for i in session.scalars(select(Incident).where(
            Incident.model_name == model, Incident.version == version))]
    detectors = _flag_detectors(stage)  # summed in SQL: a gate never reads bucket rows one by one
    traffic = [traffic_fact(session, model, version, rollout.stage_name, since, detectors=detectors)
               for since in sorted(traffic_windows(stage, rollout.stage_entered_at, now))]
    approvals: list[ApprovalFact] = []
    requesters: set[str] = {requested_by.lower()} if requested_by else set()
    if "ApprovalsCriterion" in kinds:
        approvals = [ApprovalFact(ref=f"approval:{a.id}", email=a.approver_email, at=a.at, name=a.approver_name)
                     for a in session.scalars(select(Approval).where(
                         Approval.model_name == model, Approval.version == version, Approval.stage == stage.name))]
        requesters |= {r.lower() for r in session.scalars(select(PromotionRequest.requested_by).where(
            PromotionRequest.model_name == model, PromotionRequest.version == version,
            PromotionRequest.stage == stage.name))}
    return GateFacts(
        version=version, now=now, current_stage=rollout.stage_name, stage_entered_at=rollout.stage_entered_at,
        requested_by=frozenset(requesters), roles={k: tuple(v) for k, v in plan.roles.items()},
        evals=tuple(evals), findings=tuple(findings), incidents=tuple(incidents), traffic=tuple(traffic),
        approvals=tuple(approvals), approvals_valid_since=approvals_valid_since(session, rollout) if approvals else None,
        detector_samples=sample_rates(plan.detectors),
    )


def incident_fact(i: Incident) -> IncidentFact:
    return IncidentFact(ref=f"incident:{i.id}", severity=i.severity, status=i.status, created_at=i.created_at,
                        title=i.title, deployer_id=i.deployer_id)


def evaluate_gate(session: Session, plan: Plan, rollout: Rollout, target_stage: int, *, now: datetime,
                  requested_by: str | None = None) -> Verdict:
    """The verdict on entering ``target_stage`` for ``rollout`` at ``now``."""
    facts = gather_facts(session, plan, rollout, target_stage, now=now, requested_by=requested_by)
    return judge_gate(plan.stages[target_stage], facts)


def next_stage(plan: Plan, rollout: Rollout) -> int | None:
    """The stage a promotion would enter, or None in the last stage (or once decommissioned)."""
    if rollout.state == "decommissioned":
        return None
    nxt = 0 if rollout.stage_index is None else rollout.stage_index + 1
    return nxt if nxt < len(plan.stages) else None


def check_rows(session: Session, plan: Plan, rollouts: Iterable[Rollout], now: datetime) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in rollouts:
        nxt = next_stage(plan, r)
        row: dict[str, Any] = {"model": r.model_name, "version": r.version, "state": r.state, "stage": r.stage_name,
                               "next_stage": plan.stages[nxt].name if nxt is not None else None, "verdict": None}
        if nxt is not None:
            row["verdict"] = evaluate_gate(session, plan, r, nxt, now=now).to_dict()
        out.append(row)
    return out


def check(ctx: ServiceContext, actor: Actor, model: str, version: str | None = None) -> list[dict[str, Any]]:
    """The verdict on the next stage of each serving version of ``model`` (or of ``version``, whatever its state)."""
    actor.require("release_manager", "reviewer", "auditor", action="check gates")
    now = ctx.clock.now()
    with ctx.db.read() as session:
        plan = current_plan(session, model)
        q = select(Rollout).where(Rollout.model_name == model).order_by(Rollout.version)
        if version is not None:
            q = q.where(Rollout.version == version)
        rows = list(session.scalars(q))
        if version is not None and not rows:
            raise NotFound(f"model {model!r} has no version {version!r}", code="version_not_found")
        if version is None:
            rows = [r for r in rows if r.state in SERVING_STATES]
        return check_rows(session, plan, rows, now)

