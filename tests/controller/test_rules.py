"""Halt rules as a pure function: which rules fire, with which cause and reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import TypeAdapter

from releasegate.controller.rules import (
    DeployerWindow,
    HaltFacts,
    Trigger,
    WindowStats,
    judge_halt_rules,
    strongest,
    window_slot,
)
from releasegate.plan.schema import HaltRule
from releasegate.policy.gates import IncidentFact

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
RULES = TypeAdapter(list[HaltRule])


def rules(*raw: dict[str, object]) -> list[object]:
    return list(RULES.validate_python(list(raw)))


def incident(ref: str, severity: str, status: str = "open") -> IncidentFact:
    return IncidentFact(ref=f"incident:{ref}", severity=severity, status=status, created_at=NOW, title=ref)


def facts(**kw: object) -> HaltFacts:
    return HaltFacts(model="acme/atlas-8b", version="v1", stage="trusted-partners", now=NOW, **kw)  # type: ignore[arg-type]


def test_incident_rule_fires_at_or_above_severity_for_unresolved_only() -> None:
    rs = rules({"incident": {"severity": "high", "action": "pause"}})
    got = judge_halt_rules(rs, facts(incidents=(incident("a", "critical"), incident("b", "high", "mitigated"),
                                                incident("c", "medium"), incident("d", "high", "triaged"))))
    assert [(t.cause, t.action) for t in got] == [("incident:a", "pause"), ("incident:d", "pause")]
    assert "critical incident a" in got[0].reason and "halt_on[0]" in got[0].reason


def test_flag_rate_uses_the_wilson_upper_bound_and_minimum_sample() -> None:
    rs = rules({"flag_rate": {"detector": "moderation", "window": "1h", "max": 0.02, "min_requests": 500, "action": "pause"}})
    hour = timedelta(hours=1)
    small = WindowStats(since=NOW, requests=100, flagged={"moderation": 50})
    assert judge_halt_rules(rs, facts(windows={hour: small})) == []
    clean = WindowStats(since=NOW, requests=1000, flagged={"moderation": 5})  # 0.5%: upper bound ~1%
    assert judge_halt_rules(rs, facts(windows={hour: clean})) == []
    noisy = WindowStats(since=NOW, requests=1000, flagged={"moderation": 30})  # 3%
    [t] = judge_halt_rules(rs, facts(windows={hour: noisy}))
    assert t.action == "pause" and "30 of 1000" in t.reason and t.cause.endswith("2026-03-01T12:00:00Z")
    assert judge_halt_rules(rs, facts()) == []  # no aggregates: nothing to act on


def test_flag_rate_of_a_sampled_detector_counts_only_the_requests_it_inspected() -> None:
    rs = rules({"flag_rate": {"detector": "moderation", "window": "1h", "max": 0.02, "min_requests": 500, "action": "pause"}})
    hour = timedelta(hours=1)
    w = WindowStats(since=NOW, requests=10_000, flagged={"moderation": 40})  # 0.4% of all requests
    assert judge_halt_rules(rs, facts(windows={hour: w})) == []
    [t] = judge_halt_rules(rs, facts(windows={hour: w}, detector_samples={"moderation": 0.1}))  # 40 of ~1,000: 4%
    assert t.action == "pause" and "40 of ~1000 inspected request(s) (10% sample of 10000)" in t.reason
    few = WindowStats(since=NOW, requests=4_000, flagged={"moderation": 40})  # ~400 inspected: under min_requests
    assert judge_halt_rules(rs, facts(windows={hour: few}, detector_samples={"moderation": 0.1})) == []


def test_error_rate_and_scope_violations() -> None:
    rs = rules({"error_rate": {"max": 0.1, "window": "15m", "min_requests": 10, "action": "rollback"}},
               {"scope_violations": {"per_deployer_rate": 0.05, "window": "24h", "min_requests": 20}})
    w15 = WindowStats(since=NOW, requests=100, errors=20)
    w24 = WindowStats(since=NOW, requests=300, deployers=(DeployerWindow("dep_a", 100, 10), DeployerWindow("dep_b", 100, 5),
                                                         DeployerWindow("dep_c", 10, 10)))
    got = judge_halt_rules(rs, facts(windows={timedelta(minutes=15): w15, timedelta(hours=24): w24}))
    assert [(t.rule, t.action, t.deployer_id) for t in got] == [("error_rate", "rollback", None),
                                                               ("scope_violations", "suspend_deployer", "dep_a")]


def test_strongest_action_wins_and_slots_are_stable() -> None:
    ts = [Trigger("a", "pause", "1", ""), Trigger("b", "halt", "2", ""), Trigger("c", "rollback", "3", ""),
          Trigger("d", "suspend_deployer", "4", "", "dep")]
    assert strongest(ts) == ts[1]
    assert strongest(ts[3:]) is None
    assert window_slot(NOW, timedelta(hours=24)) == "2026-03-01T00:00:00Z"
    assert window_slot(NOW + timedelta(minutes=20), timedelta(hours=1)) == "2026-03-01T12:00:00Z"
