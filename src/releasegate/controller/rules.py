"""Halt rules judged against facts: which of a stage's ``halt_on`` rules fire, and why. Pure.

Each firing rule is a ``Trigger`` with a stable ``cause``: the controller acts at most once per
cause, so a person who resumes a halted version is not overruled for the same reason.

- ``incident``: an unresolved (open or triaged) incident of the version at the rule's severity or
  worse. Cause: the incident.
- ``flag_rate``: over the window, the Wilson upper bound of the detector's flag rate at the rule's
  confidence is above ``max`` (with at least ``min_requests``). Cause: the rule and the window
  slot (``now`` floored to the window length), so a still-high rate acts again in the next window.
- ``error_rate``: errors / requests above ``max`` with at least ``min_requests``. Cause as above.
- ``scope_violations``: per deployer, violations / requests above ``per_deployer_rate`` with at least
  ``min_requests``. Cause: the rule, the deployer and the window slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from releasegate.plan.schema import (
    ErrorRateRule,
    FlagRateRule,
    HaltAction,
    IncidentRule,
    ScopeViolationsRule,
    criterion_spec,
    format_duration,
)
from releasegate.policy.gates import IncidentFact, flag_share, inspected, pct, wilson_interval

SEVERITY_RANK: Mapping[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}
UNRESOLVED: frozenset[str] = frozenset({"open", "triaged"})
#: When several rules fire for one version, the strongest action wins.
ACTION_STRENGTH: Mapping[str, int] = {"halt": 3, "rollback": 2, "pause": 1}


@dataclass(frozen=True)
class DeployerWindow:
    deployer_id: str
    requests: int
    scope_violations: int


@dataclass(frozen=True)
class WindowStats:
    """Request aggregates of the version in its current stage over one window."""

    since: datetime
    requests: int = 0
    errors: int = 0
    flagged: Mapping[str, int] = field(default_factory=dict)
    deployers: tuple[DeployerWindow, ...] = ()


@dataclass(frozen=True)
class HaltFacts:
    model: str
    version: str
    stage: str
    now: datetime
    incidents: tuple[IncidentFact, ...] = ()
    windows: Mapping[timedelta, WindowStats] = field(default_factory=dict)
    # Each detector's share of requests it inspects (the plan's ``sample``; absent: 1.0).
    detector_samples: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Trigger:
    rule: str
    action: HaltAction
    cause: str
    reason: str
    deployer_id: str | None = None


def rule_window(rule: BaseModel) -> timedelta | None:
    """The traffic window a halt rule reads, or None for rules that read no traffic."""
    spec = criterion_spec(rule)
    if isinstance(spec, FlagRateRule | ErrorRateRule | ScopeViolationsRule):
        return spec.window
    return None


def window_slot(now: datetime, window: timedelta) -> str:
    """``now`` floored to a multiple of ``window`` since the epoch: one slot per window."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    size = max(1, int(window.total_seconds()))
    start = epoch + timedelta(seconds=int((now - epoch).total_seconds()) // size * size)
    return start.strftime("%Y-%m-%dT%H:%M:%SZ")


def _incident(i: int, spec: IncidentRule, f: HaltFacts) -> list[Trigger]:
    out: list[Trigger] = []
    for inc in f.incidents:
        if inc.status in UNRESOLVED and SEVERITY_RANK[inc.severity] >= SEVERITY_RANK[spec.severity]:
            out.append(Trigger(
                "incident", spec.action, f"{inc.ref}",
                f"halt_on[{i}] incident (severity {spec.severity} or worse → {spec.action}): {inc.severity} incident "
                f"{inc.ref.split(':', 1)[-1]} {inc.title!r} is {inc.status} on {f.version} in stage {f.stage}",
                deployer_id=inc.deployer_id,
            ))
    return out


def _flag_rate(i: int, spec: FlagRateRule, f: HaltFacts) -> list[Trigger]:
    w = f.windows.get(spec.window)
    if w is None:
        return []
    flagged = w.flagged.get(spec.detector, 0)
    sample = f.detector_samples.get(spec.detector, 1.0)
    n = inspected(w.requests, flagged, sample)  # a sampled detector judged only its share
    if n == 0 or n < spec.min_requests:
        return []
    _, upper = wilson_interval(flagged, n, spec.confidence)
    if upper <= spec.max:
        return []
    return [Trigger(
        "flag_rate", spec.action, f"halt_on[{i}]:flag_rate:{spec.detector}:{f.stage}:{window_slot(f.now, spec.window)}",
        f"halt_on[{i}] flag_rate ({spec.detector} over {format_duration(spec.window)}, max {pct(spec.max)} → {spec.action}): "
        f"{flag_share(spec.detector, flagged, n, w.requests, sample)} ({pct(flagged / n)}; {spec.confidence:.0%} upper bound {pct(upper)})",
    )]


def _error_rate(i: int, spec: ErrorRateRule, f: HaltFacts) -> list[Trigger]:
    w = f.windows.get(spec.window)
    if w is None or w.requests < spec.min_requests or w.errors / w.requests <= spec.max:
        return []
    return [Trigger(
        "error_rate", spec.action, f"halt_on[{i}]:error_rate:{f.stage}:{window_slot(f.now, spec.window)}",
        f"halt_on[{i}] error_rate (over {format_duration(spec.window)}, max {pct(spec.max)} → {spec.action}): "
        f"{w.errors} of {w.requests} requests failed ({pct(w.errors / w.requests)})",
    )]


def _scope(i: int, spec: ScopeViolationsRule, f: HaltFacts) -> list[Trigger]:
    w = f.windows.get(spec.window)
    if w is None:
        return []
    out: list[Trigger] = []
    for d in w.deployers:
        if d.requests >= spec.min_requests and d.scope_violations / d.requests > spec.per_deployer_rate:
            out.append(Trigger(
                "scope_violations", spec.action,
                f"halt_on[{i}]:scope_violations:{d.deployer_id}:{window_slot(f.now, spec.window)}",
                f"halt_on[{i}] scope_violations (per deployer over {format_duration(spec.window)}, max "
                f"{pct(spec.per_deployer_rate)} → {spec.action}): deployer {d.deployer_id} sent {d.scope_violations} "
                f"out-of-scope of {d.requests} requests ({pct(d.scope_violations / d.requests)}) to {f.version}",
                deployer_id=d.deployer_id,
            ))
    return out


def judge_halt_rules(rules: Sequence[BaseModel], facts: HaltFacts) -> list[Trigger]:
    """Every trigger of ``rules`` (a stage's ``halt_on``) against ``facts``, in rule order."""
    out: list[Trigger] = []
    for i, rule in enumerate(rules):
        spec = criterion_spec(rule)
        if isinstance(spec, IncidentRule):
            out.extend(_incident(i, spec, facts))
        elif isinstance(spec, FlagRateRule):
            out.extend(_flag_rate(i, spec, facts))
        elif isinstance(spec, ErrorRateRule):
            out.extend(_error_rate(i, spec, facts))
        elif isinstance(spec, ScopeViolationsRule):
            out.extend(_scope(i, spec, facts))
    return out


def strongest(triggers: Sequence[Trigger]) -> Trigger | None:
    """The version-level trigger to act on (halt over rollback over pause); None if none."""
    version_level = [t for t in triggers if t.action in ACTION_STRENGTH]
    return max(version_level, key=lambda t: ACTION_STRENGTH[t.action], default=None)
