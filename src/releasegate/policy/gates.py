"""Judging the gate into a stage: each criterion pass / fail / inconclusive, with a sentence and evidence.

Pure: the facts (``GateFacts``) are gathered by ``services.gates`` and handed in; nothing here
reads a clock or a database. The rules every criterion follows:

- Missing or stale evidence is ``inconclusive``, never a pass.
- A result names the evidence it relied on (``evidence``: row references) and its numbers.
- Rates are judged on a Wilson score interval at the stated confidence, with a minimum sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import NormalDist

from pydantic import BaseModel

from releasegate.plan.schema import (
    ApprovalsCriterion,
    EvalCriterion,
    FindingsCriterion,
    FlagRateCriterion,
    IncidentsCriterion,
    Stage,
    TimeInStage,
    TrafficCriterion,
    criterion_kind,
    criterion_spec,
    format_duration,
)
from releasegate.policy.verdict import CriterionResult, Outcome, Verdict

#: Finding statuses that still count as open (not yet mitigated or closed).
OPEN_FINDING_STATUSES: frozenset[str] = frozenset({"open", "triaged"})


@dataclass(frozen=True)
class EvalFact:
    """One stored evaluation result; ``measured_at`` is when the run completed (or was imported)."""

    ref: str
    import_ref: str
    version: str
    suite: str
    task: str | None
    metric: str
    value: float
    stderr: float | None
    measured_at: datetime
    source: str = ""


@dataclass(frozen=True)
class FindingFact:
    ref: str
    severity: str
    status: str
    title: str = ""


@dataclass(frozen=True)
class IncidentFact:
    ref: str
    severity: str
    status: str
    created_at: datetime
    title: str = ""
    deployer_id: str | None = None


@dataclass(frozen=True)
class TrafficFact:
    """Request aggregates of the version in its current stage since ``since``."""

    since: datetime
    requests: int
    deployers: int
    flagged: Mapping[str, int] = field(default_factory=dict)
    refs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApprovalFact:
    ref: str
    email: str
    at: datetime
    name: str = ""


@dataclass(frozen=True)
class GateFacts:
    """Everything the judge needs about one version, gathered at ``now``."""

    version: str
    now: datetime
    current_stage: str | None = None
    stage_entered_at: datetime | None = None
    requested_by: frozenset[str] = frozenset()
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    evals: tuple[EvalFact, ...] = ()
    findings: tuple[FindingFact, ...] = ()
    incidents: tuple[IncidentFact, ...] = ()
    traffic: tuple[TrafficFact, ...] = ()
    approvals: tuple[ApprovalFact, ...] = ()
    approvals_valid_since: datetime | None = None
    # Each detector's share of requests it inspects (the plan's ``sample``; absent: 1.0).
    detector_samples: Mapping[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper) for a proportion, each at ``confidence``."""
    if trials <= 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(confidence)
    p = successes / trials
    z2n = z * z / trials
    centre = p + z2n / 2
    margin = z * math.sqrt(p * (1 - p) / trials + z2n / (4 * trials))
    denom = 1 + z2n
    return (max(0.0, (centre - margin) / denom), min(1.0, (centre + margin) / denom))


def pct(x: float) -> str:
    """A rate as a short percentage, e.g. ``1.25%``."""
    return f"{x * 100:.3g}%"


# ---------------------------------------------------------------------------- windows


def traffic_since(facts_entered: datetime | None, now: datetime, window: timedelta | None) -> datetime | None:
    """Start of the traffic window a criterion looks at: the stage entry, or ``now - window`` if later."""
    if facts_entered is None:
        return None
    if window is None:
        return facts_entered
    return max(facts_entered, now - window)


def traffic_windows(stage: Stage, entered: datetime | None, now: datetime) -> frozenset[datetime]:
    """The window starts for which ``GateFacts.traffic`` must hold a ``TrafficFact`` to judge ``stage``."""
    out: set[datetime] = set()
    for criterion in stage.gate:
        spec = criterion_spec(criterion)
        window = spec.window if isinstance(spec, FlagRateCriterion) else None
        if isinstance(spec, TrafficCriterion | FlagRateCriterion):
            since = traffic_since(entered, now, window)
            if since is not None:
                out.add(since)
    return frozenset(out)


def _traffic(facts: GateFacts, since: datetime) -> TrafficFact | None:
    return next((t for t in facts.traffic if t.since == since), None)


# ---------------------------------------------------------------------------- criteria


def _time_in_stage(spec: TimeInStage, facts: GateFacts) -> CriterionResult:
    if facts.stage_entered_at is None:
        return CriterionResult("time_in_stage", "fail", "the version has not entered any stage yet")
    spent = facts.now - facts.stage_entered_at
    outcome: Outcome = "pass" if spent >= spec.min else "fail"
    shown = format_duration(timedelta(seconds=int(spent.total_seconds()) // 60 * 60)) if spent.total_seconds() >= 60 else "under a minute"
    return CriterionResult(
        "time_in_stage", outcome,
        f"{shown} in stage {facts.current_stage!r}; {format_duration(spec.min)} required",
        numbers={"seconds_in_stage": int(spent.total_seconds()), "required_seconds": int(spec.min.total_seconds())},
    )


def _eval(spec: EvalCriterion, facts: GateFacts) -> CriterionResult:
    version = facts.version if spec.version == "this" else spec.version
    name = f"{spec.suite}/{spec.metric}"
    bound = " and ".join(x for x in (
        f"at least {spec.min:g}" if spec.min is not None else "",
        f"at most {spec.max:g}" if spec.max is not None else "",
    ) if x)
    matching = [e for e in facts.evals if e.version == version and e.suite == spec.suite and e.metric == spec.metric]
    if not matching:
        return CriterionResult("eval", "inconclusive", f"no {name} result for version {version!r} is recorded; {bound} required",
                               numbers={"version": version})
    # The newest run decides; when one run reports several tasks, every task must meet the bound.
    newest = max(matching, key=lambda e: (e.measured_at, e.import_ref))
    run = sorted((e for e in matching if e.import_ref == newest.import_ref), key=lambda e: (e.task or "", e.ref))
    refs = tuple(e.ref for e in run)
    numbers: dict[str, object] = {"version": version, "values": {(e.task or "-"): e.value for e in run},
                                  "measured_at": newest.measured_at.isoformat()}
    age = facts.now - newest.measured_at
    if spec.max_age is not None and age > spec.max_age:
        return CriterionResult("eval", "inconclusive",
                               f"the newest {name} result for {version!r} is {format_duration(timedelta(days=age.days)) if age.days else 'under a day'} old, "
                               f"older than the {format_duration(spec.max_age)} allowed; re-run the evaluation",
                               refs, numbers)

    def ok(value: float) -> bool:
        return (spec.min is None or value >= spec.min) and (spec.max is None or value <= spec.max)

    bad = [e for e in run if not ok(e.value)]
    shown = ", ".join(f"{e.task + ' ' if e.task else ''}{e.value:g}" + (f" ±{e.stderr:g}" if e.stderr is not None else "") for e in (bad or run))
    source = f" from {newest.source}" if newest.source else ""
    if bad:
        return CriterionResult("eval", "fail", f"{name} on {version!r} is {shown}{source}; {bound} required", refs, numbers)
    return CriterionResult("eval", "pass", f"{name} on {version!r} is {shown}{source}; {bound} required", refs, numbers)


def _findings(spec: FindingsCriterion, facts: GateFacts) -> CriterionResult:
    open_ = [f for f in facts.findings if f.severity in spec.severity and f.status in OPEN_FINDING_STATUSES]
    outcome: Outcome = "pass" if len(open_) <= spec.open_max else "fail"
    sev = "/".join(spec.severity)
    titles = "" if not open_ else ": " + "; ".join(f.title or f.ref for f in open_[:3]) + (" …" if len(open_) > 3 else "")
    return CriterionResult("findings", outcome, f"{len(open_)} open {sev} finding(s) on {facts.version!r}, at most {spec.open_max} allowed{titles}",
                           tuple(f.ref for f in open_), {"open": len(open_), "open_max": spec.open_max})


def _incidents(spec: IncidentsCriterion, facts: GateFacts) -> CriterionResult:
    since = facts.now - spec.window if spec.window is not None else facts.stage_entered_at
    hits = [i for i in facts.incidents if i.severity in spec.severity and (since is None or i.created_at >= since)]
    outcome: Outcome = "pass" if len(hits) <= spec.max else "fail"
    span = f"in the last {format_duration(spec.window)}" if spec.window is not None else "in this stage"
    return CriterionResult("incidents", outcome,
                           f"{len(hits)} {'/'.join(spec.severity)} incident(s) on {facts.version!r} {span}, at most {spec.max} allowed",
                           tuple(i.ref for i in hits), {"incidents": len(hits), "max": spec.max})


def _traffic_criterion(spec: TrafficCriterion, facts: GateFacts) -> CriterionResult:
    since = traffic_since(facts.stage_entered_at, facts.now, None)
    t = _traffic(facts, since) if since is not None else None
    if t is None:
        return CriterionResult("traffic", "inconclusive", "no request aggregates are available for this stage")
    met = t.requests >= spec.min_requests and t.deployers >= spec.min_deployers
    return CriterionResult("traffic", "pass" if met else "fail",
                           f"{t.requests} request(s) from {t.deployers} deployer(s) in stage {facts.current_stage!r}; "
                           f"{spec.min_requests} from {spec.min_deployers} required",
                           t.refs, {"requests": t.requests, "deployers": t.deployers,
                                    "min_requests": spec.min_requests, "min_deployers": spec.min_deployers})


def inspected(requests: int, flagged: int, sample: float) -> int:
    """How many of ``requests`` a detector inspecting a ``sample`` share of them judged (expected
    count, and never fewer than it flagged): the denominator of its flag rate. Dividing by all
    requests would understate a sampled detector's rate by its sample, and pass gates it fails."""
    if sample >= 1.0:
        return requests
    return max(flagged, round(requests * max(sample, 0.0)))


def flag_share(detector: str, flagged: int, n: int, requests: int, sample: float) -> str:
    """``'12 of 480 request(s) flagged by d'`` (``n`` inspected of ``requests``), naming the sample when the detector samples."""
    if sample >= 1.0:
        return f"{flagged} of {n} request(s) flagged by {detector}"
    return f"{flagged} of ~{n} inspected request(s) ({sample:.0%} sample of {requests}) flagged by {detector}"


def _flag_rate(spec: FlagRateCriterion, facts: GateFacts) -> CriterionResult:
    since = traffic_since(facts.stage_entered_at, facts.now, spec.window)
    t = _traffic(facts, since) if since is not None else None
    sample = facts.detector_samples.get(spec.detector, 1.0)
    flagged = t.flagged.get(spec.detector, 0) if t is not None else 0
    n = inspected(t.requests, flagged, sample) if t is not None else 0
    if t is None or n == 0:
        return CriterionResult("flag_rate", "inconclusive", f"no requests inspected, so the {spec.detector} flag rate is unknown",
                               numbers={"requests": 0 if t is None else t.requests, "inspected": 0,
                                        "min_requests": spec.min_requests})
    rate = flagged / n
    _, upper = wilson_interval(flagged, n, spec.confidence)
    numbers: dict[str, object] = {"requests": t.requests, "inspected": n, "sample": sample, "flagged": flagged,
                                  "rate": rate, "upper_bound": upper, "max": spec.max, "confidence": spec.confidence,
                                  "min_requests": spec.min_requests}
    said = (f"{flag_share(spec.detector, flagged, n, t.requests, sample)} ({pct(rate)}; "
            f"{spec.confidence:.0%} upper bound {pct(upper)}), below {pct(spec.max)} required")
    if n < spec.min_requests:
        return CriterionResult("flag_rate", "inconclusive", f"{said}; only {n} of the {spec.min_requests} requests needed to judge",
                               t.refs, numbers)
    if rate > spec.max:
        return CriterionResult("flag_rate", "fail", said, t.refs, numbers)
    if upper >= spec.max:
        return CriterionResult("flag_rate", "inconclusive", f"{said}; not yet enough requests to be {spec.confidence:.0%} sure",
                               t.refs, numbers)
    return CriterionResult("flag_rate", "pass", said, t.refs, numbers)


def _approvals(spec: ApprovalsCriterion, facts: GateFacts) -> CriterionResult:
    eligible = {p.lower() for role in spec.roles for p in facts.roles.get(role, ())}
    counted: dict[str, ApprovalFact] = {}
    ignored: list[str] = []
    for a in sorted(facts.approvals, key=lambda a: a.at):
        email = a.email.lower()
        if email in facts.requested_by or a.name.lower() in facts.requested_by:
            ignored.append(f"{email} (requested the promotion)")
        elif email not in eligible:
            ignored.append(f"{email} (holds none of {', '.join(spec.roles)})")
        elif facts.approvals_valid_since is not None and a.at <= facts.approvals_valid_since:
            ignored.append(f"{email} (given before the version's last halt or rollback)")
        else:
            counted.setdefault(email, a)
    outcome: Outcome = "pass" if len(counted) >= spec.min else "fail"
    who = ", ".join(counted) or "nobody"
    note = f"; not counted: {', '.join(ignored)}" if ignored else ""
    return CriterionResult("approvals", outcome,
                           f"{len(counted)} of {spec.min} approval(s) from {' or '.join(spec.roles)}: {who}{note}",
                           tuple(a.ref for a in counted.values()),
                           {"approvals": len(counted), "min": spec.min, "approvers": sorted(counted)})


def judge_criterion(criterion: BaseModel, facts: GateFacts) -> CriterionResult:
    """Judge one gate criterion of the plan against ``facts``."""
    spec = criterion_spec(criterion)
    if isinstance(spec, TimeInStage):
        return _time_in_stage(spec, facts)
    if isinstance(spec, EvalCriterion):
        return _eval(spec, facts)
    if isinstance(spec, FindingsCriterion):
        return _findings(spec, facts)
    if isinstance(spec, IncidentsCriterion):
        return _incidents(spec, facts)
    if isinstance(spec, TrafficCriterion):
        return _traffic_criterion(spec, facts)
    if isinstance(spec, FlagRateCriterion):
        return _flag_rate(spec, facts)
    if isinstance(spec, ApprovalsCriterion):
        return _approvals(spec, facts)
    kind = criterion_kind(criterion)
    if kind == "peers":
        return CriterionResult("peers", "inconclusive", "no peer attestations are configured, so the coordination posture cannot be checked")
    return CriterionResult(kind, "inconclusive", f"releasegate cannot judge {kind} criteria yet")


def judge_gate(stage: Stage, facts: GateFacts) -> Verdict:
    """The verdict on entering ``stage``: every criterion of its gate judged against ``facts``."""
    return Verdict(stage=stage.name, results=tuple(judge_criterion(c, facts) for c in stage.gate))
