"""Gathering a release report from the store: what happened to a model, when, why, and on what evidence.

``build_report`` reads everything in one read transaction and returns a plain ``ReleaseReport``
that the HTML and Markdown renderers turn into documents; it never writes.

Audience sizes per stage are approximations: releasegate does not keep the history of who was
admitted when under which plan revision, so a segment's size counts today's deployers that had
been admitted by the end of the segment and that the stage's audience admits. The report says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from releasegate.audit.chain import verify_chain
from releasegate.errors import NotFound
from releasegate.plan.schema import Audience, Plan, criterion_kind, criterion_spec
from releasegate.policy.audience import DeployerView, admitted
from releasegate.services import audit
from releasegate.services.context import Actor, ServiceContext
from releasegate.store.evidence import Approval, EvalResultRecord, FindingRecord, Incident
from releasegate.store.models import (
    Application,
    AuditEntry,
    Deployer,
    PlanRevision,
    Rollout,
    Transition,
)

AUDIENCE_NOTE = (
    "Audience sizes are approximate: releasegate does not keep a history of admissions, so each segment "
    "counts today's deployers that had been admitted by the segment's end and that the stage's audience admits "
    "(including its cap and waitlist share). Suspended or removed deployers are not counted; a halted version serves nobody."
)
DRAWN_STATES = ("active", "paused", "halted")


@dataclass(frozen=True)
class StageInfo:
    index: int
    name: str
    channels: list[str]
    audience: str
    gate: list[str]
    halt_on: list[str]


@dataclass(frozen=True)
class RevisionRow:
    revision: int
    content_hash: str
    created_at: datetime
    created_by: str
    forced_reason: str | None


@dataclass(frozen=True)
class TransitionRow:
    at: datetime
    action: str
    from_label: str
    to_label: str
    actor: str
    reason: str
    verdict_outcome: str | None
    verdict_results: list[dict[str, Any]]
    override_reason: str | None


@dataclass(frozen=True)
class Segment:
    """A stretch of time one version spent in one stage in one state (active, paused or halted)."""

    version: str
    stage_index: int
    stage: str
    state: str
    start: datetime
    end: datetime
    ongoing: bool
    audience_size: int | None

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())


@dataclass(frozen=True)
class StageTime:
    stage: str
    seconds: int
    by_state: dict[str, int]


@dataclass
class VersionReport:
    version: str
    state: str
    stage: str | None
    transitions: list[TransitionRow] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    stage_time: list[StageTime] = field(default_factory=list)


@dataclass(frozen=True)
class AuditHead:
    size: int
    hash: str
    verified: bool
    problems: list[str]


@dataclass
class ReleaseReport:
    model: str
    description: str
    generated_at: datetime
    generated_by: str
    plan_revision: int
    plan_hash: str
    stages: list[StageInfo]
    revisions: list[RevisionRow]
    versions: list[VersionReport]
    results: list[dict[str, Any]]
    findings: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    approvals: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    audit: AuditHead
    notes: list[str] = field(default_factory=list)

    @property
    def window(self) -> tuple[datetime, datetime]:
        """The time span the timeline covers: first segment (or first revision) to generation."""
        starts = [s.start for v in self.versions for s in v.segments] + [r.created_at for r in self.revisions[:1]]
        return (min(starts) if starts else self.generated_at, self.generated_at)


def duration_text(seconds: int) -> str:
    """``3d 4h``, ``5h 12m``, ``7m``: short and readable, not exact."""
    days, rem = divmod(max(seconds, 0), 86400)
    hours, rem = divmod(rem, 3600)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {rem // 60}m" if rem // 60 else f"{hours}h"
    return f"{rem // 60}m"


def audience_text(a: Audience) -> str:
    """One line saying whom an audience admits."""
    if a.everyone:
        return "everyone approved"
    parts: list[str] = []
    if a.tiers:
        parts.append("tiers " + ", ".join(a.tiers))
    if a.deployers:
        parts.append("named " + ", ".join(a.deployers))
    if a.waitlist_percent:
        parts.append(f"{a.waitlist_percent:g}% of the waitlist")
    if a.max_deployers is not None:
        parts.append(f"at most {a.max_deployers} deployers")
    return "; ".join(parts) or "nobody"


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _criterion_text(c: Any) -> str:
    """``eval: suite=cyber-uplift, metric=accuracy, max=0.2``: a criterion or halt rule on one line."""
    spec = criterion_spec(c)
    values = spec.model_dump(mode="json", exclude_none=True) if hasattr(spec, "model_dump") else spec
    if isinstance(values, dict):
        return f"{criterion_kind(c)}: " + ", ".join(f"{k}={_value_text(v)}" for k, v in values.items())
    return f"{criterion_kind(c)}: {_value_text(values)}"


def _stages(plan: Plan) -> list[StageInfo]:
    return [StageInfo(i, s.name, list(s.channels), audience_text(s.audience), [_criterion_text(c) for c in s.gate],
                      [_criterion_text(r) for r in s.halt_on]) for i, s in enumerate(plan.stages)]


def _plan_at(plans: Sequence[tuple[datetime, Plan]], at: datetime) -> Plan:
    """The plan revision in force at ``at`` (the first one for anything earlier)."""
    chosen = plans[0][1]
    for created, plan in plans:
        if created <= at:
            chosen = plan
    return chosen


def _stage_name(plan: Plan, index: int | None) -> str | None:
    if index is None:
        return None
    return plan.stages[index].name if index < len(plan.stages) else f"stage {index}"


def _label(state: str, stage: str | None) -> str:
    return f"{state} ({stage})" if stage else state


def _version_report(r: Rollout, rows: Sequence[Transition], plans: Sequence[tuple[datetime, Plan]],
                    views: Sequence[DeployerView], now: datetime) -> VersionReport:
    vr = VersionReport(version=r.version, state=r.state, stage=r.stage_name)
    open_seg: tuple[int, str, str, datetime, Plan] | None = None

    def close(end: datetime, ongoing: bool) -> None:
        if open_seg is None:
            return
        index, name, state, start, plan = open_seg
        size = None
        if state == "halted":
            size = 0  # a halted version serves nobody
        elif index < len(plan.stages):
            known = [v for v in views if v.admitted_at is not None and v.admitted_at <= end]
            size = len(admitted(plan.stages[index].audience, known))
        vr.segments.append(Segment(r.version, index, name, state, start, end, ongoing, size))

    for t in rows:
        plan = _plan_at(plans, t.at)
        from_stage, to_stage = _stage_name(plan, t.from_stage), _stage_name(plan, t.to_stage)
        verdict = t.verdict or {}
        vr.transitions.append(TransitionRow(
            at=t.at, action=t.action, from_label=_label(t.from_state, from_stage), to_label=_label(t.to_state, to_stage),
            actor=t.actor, reason=t.reason, verdict_outcome=verdict.get("outcome"),
            verdict_results=list(verdict.get("results", [])), override_reason=t.override_reason,
        ))
        close(t.at, ongoing=False)
        open_seg = None
        if t.to_state in DRAWN_STATES and t.to_stage is not None:
            open_seg = (t.to_stage, to_stage or "?", t.to_state, t.at, plan)
    close(now, ongoing=True)
    totals: dict[str, dict[str, int]] = {}
    for s in vr.segments:
        by_state = totals.setdefault(s.stage, {})
        by_state[s.state] = by_state.get(s.state, 0) + s.seconds
    vr.stage_time = [StageTime(stage, sum(b.values()), b) for stage, b in totals.items()]
    return vr


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


def _evidence(session: Session, model: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results = [{"version": e.version, "suite": e.suite, "task": e.task, "metric": e.metric, "value": e.value,
                "stderr": e.stderr, "samples": e.samples, "source": e.source_name, "source_sha256": e.source_sha256,
                "imported_by": e.imported_by, "imported_at": _iso(e.imported_at)}
               for e in session.scalars(select(EvalResultRecord).where(EvalResultRecord.model_name == model)
                                        .order_by(EvalResultRecord.version, EvalResultRecord.suite, EvalResultRecord.metric,
                                                  EvalResultRecord.id))]
    findings = [{"id": f.id, "version": f.version, "title": f.title, "severity": f.severity, "status": f.status,
                 "reported_by": f.reported_by, "created_at": _iso(f.created_at), "updated_at": _iso(f.updated_at)}
                for f in session.scalars(select(FindingRecord).where(FindingRecord.model_name == model)
                                         .order_by(FindingRecord.created_at, FindingRecord.id))]
    return results, findings


def _incidents(session: Session, model: str) -> list[dict[str, Any]]:
    return [{"id": i.id, "version": i.version, "stage": i.stage, "severity": i.severity, "status": i.status,
             "title": i.title, "source": i.source, "reported_by": i.reported_by, "created_at": _iso(i.created_at),
             "closed_at": _iso(i.closed_at)}
            for i in session.scalars(select(Incident).where(Incident.model_name == model)
                                     .order_by(Incident.created_at, Incident.id))]


def _approvals(session: Session, model: str) -> list[dict[str, Any]]:
    return [{"version": a.version, "stage": a.stage, "approver": a.approver_email, "roles": a.role.split(","),
             "comment": a.comment, "at": _iso(a.at)}
            for a in session.scalars(select(Approval).where(Approval.model_name == model).order_by(Approval.at, Approval.id))]


def _decisions(session: Session, model: str) -> list[dict[str, Any]]:
    """Every audit entry about the model, its versions, aliases, applications, incidents and findings."""
    targets = [f"model:{model}"]
    targets += [f"application:{i}" for i in session.scalars(select(Application.id).where(Application.model_name == model))]
    targets += [f"incident:{i}" for i in session.scalars(select(Incident.id).where(Incident.model_name == model))]
    targets += [f"finding:{i}" for i in session.scalars(select(FindingRecord.id).where(FindingRecord.model_name == model))]
    q = select(AuditEntry).where(or_(
        AuditEntry.target.in_(targets),
        AuditEntry.target.startswith(f"version:{model}:", autoescape=True),
        AuditEntry.target.startswith(f"alias:{model}:", autoescape=True),
    )).order_by(AuditEntry.seq)
    return [{"seq": e.seq, "at": _iso(e.at), "actor": e.actor, "action": e.action, "target": e.target,
             "reason": e.reason, "hash": e.hash} for e in session.scalars(q)]


def build_report(ctx: ServiceContext, actor: Actor, model: str) -> ReleaseReport:
    """Everything an auditor needs about ``model``'s release, read from the store in one transaction."""
    actor.require("auditor", "release_manager", action="build release reports")
    now = ctx.clock.now()
    with ctx.db.read() as session:
        revisions = session.scalars(select(PlanRevision).where(PlanRevision.model_name == model)
                                    .order_by(PlanRevision.revision)).all()
        if not revisions:
            raise NotFound(f"no model {model!r}: apply a release plan for it first", code="model_not_found")
        plans = [(rev.created_at, Plan.model_validate(rev.plan_json)) for rev in revisions]
        current = plans[-1][1]
        views = [DeployerView(d.id, d.name, d.tier, d.status, d.admitted_at) for d in session.scalars(select(Deployer))]
        versions: list[VersionReport] = []
        for r in session.scalars(select(Rollout).where(Rollout.model_name == model).order_by(Rollout.version)):
            rows = session.scalars(select(Transition).where(Transition.rollout_id == r.id)
                                   .order_by(Transition.at, Transition.id)).all()
            versions.append(_version_report(r, rows, plans, views, now))
        results, findings = _evidence(session, model)
        entries = list(audit.iter_entries(session))
        problems = verify_chain(entries)
        size, head_hash = audit.head(session)
        report = ReleaseReport(
            model=model, description=current.description, generated_at=now, generated_by=actor.name,
            plan_revision=revisions[-1].revision, plan_hash=revisions[-1].content_hash, stages=_stages(current),
            revisions=[RevisionRow(rev.revision, rev.content_hash, rev.created_at, rev.created_by, rev.forced_reason)
                       for rev in revisions],
            versions=versions, results=results, findings=findings, incidents=_incidents(session, model),
            approvals=_approvals(session, model), decisions=_decisions(session, model),
            audit=AuditHead(size, head_hash, not problems, [f"entry {p.seq}: {p.message}" for p in problems]),
        )
    report.notes.append(AUDIENCE_NOTE)
    if any(t.override_reason for v in versions for t in v.transitions):
        report.notes.append("At least one promotion overrode a gate that did not pass; each override's written reason "
                            "is shown beside it.")
    return report
