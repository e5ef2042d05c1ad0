"""Gate criteria as a pure function, driven by the YAML vectors in tests/vectors/gates.yaml."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from releasegate.plan.schema import Stage, parse_duration
from releasegate.policy.gates import (
    ApprovalFact,
    EvalFact,
    FindingFact,
    GateFacts,
    IncidentFact,
    TrafficFact,
    judge_gate,
    traffic_windows,
    wilson_interval,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)
ROLES = {"safety-lead": ("alice@acme.example",), "policy-lead": ("bob@acme.example", "carol@acme.example")}
VECTORS = yaml.safe_load((Path(__file__).parent.parent / "vectors" / "gates.yaml").read_text())


def ago(value: str) -> datetime:
    return NOW - parse_duration(value)


def build_facts(raw: dict[str, Any]) -> GateFacts:
    return GateFacts(
        version=raw.get("version", "v1"),
        now=NOW,
        current_stage=raw.get("current_stage", "previous"),
        stage_entered_at=ago(raw["stage_entered_at"]) if "stage_entered_at" in raw else None,
        requested_by=frozenset(raw.get("requested_by", [])),
        roles=ROLES,
        evals=tuple(
            EvalFact(ref=f"eval_result:{i}", import_ref=e.get("import", f"imp{i}"), version=e["version"], suite=e["suite"],
                     task=e.get("task"), metric=e["metric"], value=e["value"], stderr=e.get("stderr"),
                     measured_at=ago(e["measured_at"]))
            for i, e in enumerate(raw.get("evals", []))
        ),
        findings=tuple(FindingFact(ref=f"finding:{i}", severity=f["severity"], status=f["status"], title=f.get("title", ""))
                       for i, f in enumerate(raw.get("findings", []))),
        incidents=tuple(IncidentFact(ref=f"incident:{i}", severity=x["severity"], status=x["status"], created_at=ago(x["created_at"]))
                        for i, x in enumerate(raw.get("incidents", []))),
        traffic=tuple(TrafficFact(since=ago(t["since"]), requests=t["requests"], deployers=t["deployers"],
                                  flagged=t.get("flagged", {}), refs=(f"request_buckets:{i}",))
                      for i, t in enumerate(raw.get("traffic", []))),
        approvals=tuple(ApprovalFact(ref=f"approval:{i}", email=a["email"], at=ago(a["at"]))
                        for i, a in enumerate(raw.get("approvals", []))),
        approvals_valid_since=ago(raw["approvals_valid_since"]) if "approvals_valid_since" in raw else None,
        detector_samples=raw.get("detector_samples", {}),
    )


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_gate_vector(vector: dict[str, Any]) -> None:
    stage = Stage.model_validate(vector["stage"])
    verdict = judge_gate(stage, build_facts(vector["facts"]))
    assert [r.outcome for r in verdict.results] == vector["expect"], [r.message for r in verdict.results]
    if "verdict" in vector:
        assert verdict.outcome == vector["verdict"]
    messages = " | ".join(r.message for r in verdict.results)
    for fragment in vector.get("says", []):
        assert fragment in messages
    for r in verdict.results:
        assert r.message, "every criterion explains itself"


def test_results_cite_the_evidence_they_used() -> None:
    stage = Stage.model_validate({"name": "s", "gate": [{"eval": {"suite": "a", "metric": "m", "max": 1}},
                                                       {"approvals": {"roles": ["safety-lead"], "min": 1}}]})
    facts = build_facts({"evals": [{"version": "v1", "suite": "a", "metric": "m", "value": 0.5, "measured_at": "1d"}],
                         "approvals": [{"email": "alice@acme.example", "at": "1h"}]})
    verdict = judge_gate(stage, facts)
    assert verdict.passed
    assert verdict.results[0].evidence == ("eval_result:0",)
    assert verdict.results[1].evidence == ("approval:0",)


def test_traffic_windows_name_what_must_be_gathered() -> None:
    stage = Stage.model_validate({"name": "s", "gate": [{"traffic": {"min_requests": 1}},
                                                       {"flag_rate": {"detector": "d", "max": 0.1, "window": "1d"}}]})
    entered = ago("10d")
    assert traffic_windows(stage, entered, NOW) == {entered, ago("1d")}
    assert traffic_windows(stage, None, NOW) == frozenset()


def test_wilson_known_values() -> None:
    lower, upper = wilson_interval(0, 100, 0.95)
    assert lower == 0.0 and upper == pytest.approx(0.0263, abs=1e-3)
    lower, upper = wilson_interval(50, 100, 0.975)
    assert lower == pytest.approx(0.4038, abs=1e-3) and upper == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 0, 0.95) == (0.0, 1.0)


@given(st.integers(1, 10_000), st.data(), st.floats(0.5, 0.999))
def test_wilson_bounds_contain_the_estimate(n: int, data: st.DataObject, confidence: float) -> None:
    k = data.draw(st.integers(0, n))
    lower, upper = wilson_interval(k, n, confidence)
    assert 0.0 <= lower <= k / n + 1e-12 <= upper + 2e-12 <= 1.0 + 2e-12


def test_a_sampled_detectors_flag_rate_is_over_the_requests_it_inspected() -> None:
    """A detector inspecting one request in ten flagged 40 of ~500: 8%, not 40 of 5,000 (0.8%)."""
    stage = Stage.model_validate({"name": "s", "gate": [
        {"flag_rate": {"detector": "moderation", "max": 0.02, "min_requests": 300, "confidence": 0.95}}]})
    raw = {"stage_entered_at": "3d", "traffic": [{"since": "3d", "requests": 5000, "deployers": 3,
                                                  "flagged": {"moderation": 40}}]}
    unsampled = judge_gate(stage, build_facts(raw))
    assert unsampled.results[0].outcome == "pass"  # 0.8% of every request
    [result] = judge_gate(stage, build_facts({**raw, "detector_samples": {"moderation": 0.1}})).results
    assert result.outcome == "fail", result.message
    assert result.numbers["inspected"] == 500 and result.numbers["rate"] == pytest.approx(0.08)
    assert "40 of ~500 inspected request(s) (10% sample of 5000)" in result.message
    # Fewer inspected requests than the criterion needs: not judged yet, whatever all traffic says.
    thin = {"stage_entered_at": "3d", "traffic": [{"since": "3d", "requests": 2000, "deployers": 3, "flagged": {}}]}
    [result] = judge_gate(stage, build_facts({**thin, "detector_samples": {"moderation": 0.1}})).results
    assert result.outcome == "inconclusive" and "only 200 of the 300" in result.message
    [result] = judge_gate(stage, build_facts({**thin, "detector_samples": {"moderation": 0.0}})).results
    assert result.outcome == "inconclusive" and "no requests inspected" in result.message
