"""The gate into a stage, judged from stored evidence, approvals and time, as promote sees it."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from evidence_support import add_buckets
from releasegate.clock import FrozenClock
from releasegate.errors import Refused
from releasegate.services import approvals, evidence, gates, rollouts
from releasegate.services.context import Actor, ServiceContext

ALICE = Actor(name="alice", role="reviewer", email="alice@acme.example")
CAROL = Actor(name="carol", role="reviewer", email="carol@acme.example")
BOB = Actor(name="bob@acme.example", role="release_manager", email="bob@acme.example")


def evals(tmp_path: Path, name: str, cyber: float, refusal: float) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"model": "atlas-8b-v1", "results": [
        {"suite": "cyber-uplift", "metric": "accuracy", "value": cyber, "samples": 400},
        {"suite": "refusal-harmful", "metric": "refusal_rate", "value": refusal, "samples": 2000},
    ]}))
    return path


def outcomes(rows: list[dict[str, object]], version: str = "v1") -> list[tuple[str, str]]:
    row = next(r for r in rows if r["version"] == version)
    verdict = row["verdict"]
    assert isinstance(verdict, dict)
    return [(r["kind"], r["outcome"]) for r in verdict["results"]]


def test_gate_holds_until_evidence_time_and_approvals(ctx: ServiceContext, clock: FrozenClock, admin: Actor,
                                                      atlas: str, tmp_path: Path) -> None:
    rollouts.transition(ctx, admin, atlas, "v1", "promote", reason="internal dogfood")
    rows = gates.check(ctx, admin, atlas)
    assert [r["version"] for r in rows] == ["v1"] and rows[0]["next_stage"] == "trusted-partners"
    assert outcomes(rows) == [("time_in_stage", "fail"), ("eval", "inconclusive"), ("eval", "inconclusive"),
                              ("findings", "pass"), ("approvals", "fail")]
    with pytest.raises(Refused) as exc:
        rollouts.transition(ctx, BOB, atlas, "v1", "promote", reason="partners")
    assert exc.value.code == "gate_not_passed"

    clock.advance(days=15)
    evidence.import_evidence(ctx, admin, evals(tmp_path, "bad.json", 0.31, 0.99), atlas, "v1")
    assert outcomes(gates.check(ctx, admin, atlas))[1] == ("eval", "fail")
    clock.advance(hours=1)
    evidence.import_evidence(ctx, admin, evals(tmp_path, "good.json", 0.08, 0.99), atlas, "v1")
    approvals.approve(ctx, ALICE, atlas, "v1", "trusted-partners")
    approvals.approve(ctx, BOB, atlas, "v1", "trusted-partners")
    # Bob approved, so Bob promoting does not count his own approval; Carol's is needed.
    with pytest.raises(Refused) as exc:
        rollouts.transition(ctx, BOB, atlas, "v1", "promote", reason="partners")
    assert "requested the promotion" in exc.value.message
    approvals.approve(ctx, CAROL, atlas, "v1", "trusted-partners")
    out = rollouts.transition(ctx, BOB, atlas, "v1", "promote", reason="partners")
    assert out["stage"] == "trusted-partners"
    history = rollouts.history(ctx, admin, atlas, "v1")
    verdict = history[-1]["verdict"]
    assert verdict["outcome"] == "pass"
    assert any(e.startswith("eval_result:") for r in verdict["results"] for e in r["evidence"])


def test_open_serious_finding_blocks(ctx: ServiceContext, clock: FrozenClock, admin: Actor, atlas: str) -> None:
    rollouts.transition(ctx, admin, atlas, "v1", "promote", reason="internal")
    fixtures = Path(__file__).resolve().parent.parent / "evidence" / "fixtures"
    evidence.import_evidence(ctx, admin, fixtures / "generic_findings.csv", atlas, "v1")
    finding = outcomes(gates.check(ctx, admin, atlas))[3]
    assert finding == ("findings", "fail")


def test_check_one_version_in_any_state_and_last_stage(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    rows = gates.check(ctx, admin, atlas, "v2")
    assert rows[0]["state"] == "draft" and rows[0]["next_stage"] == "internal"
    assert rows[0]["verdict"]["outcome"] == "pass"  # the first stage has no gate
    assert gates.check(ctx, admin, atlas) == []  # nothing is serving yet


def test_limited_public_gate_reads_the_hourly_aggregates(ctx: ServiceContext, clock: FrozenClock, admin: Actor,
                                                         atlas: str) -> None:
    rollouts.transition(ctx, admin, atlas, "v1", "promote", reason="internal")
    rollouts.transition(ctx, admin, atlas, "v1", "promote", reason="partners", override_reason="test setup")
    entered = clock.now()
    rows = gates.check(ctx, admin, atlas)
    assert rows[0]["next_stage"] == "limited-public"
    by_kind = dict(outcomes(rows))
    assert by_kind["traffic"] == "fail" and by_kind["flag_rate"] == "inconclusive"
    # Traffic from another stage, another version and unknown deployers does not count.
    add_buckets(ctx, atlas, "v1", "internal", entered, hours=5, requests=10_000)
    add_buckets(ctx, atlas, "v2", "trusted-partners", entered, hours=5, requests=10_000)
    add_buckets(ctx, atlas, "v1", "trusted-partners", entered, hours=5, deployers=("",), requests=10_000)
    add_buckets(ctx, atlas, "v1", "trusted-partners", entered, hours=50,
                deployers=tuple(f"dep_{i:02}" for i in range(16)), requests=130, flagged={"moderation": 0})
    clock.advance(days=31)
    verdict = next(r for r in gates.check(ctx, admin, atlas) if r["version"] == "v1")["verdict"]
    results = {r["kind"]: r for r in verdict["results"]}
    assert results["traffic"]["outcome"] == "pass", results["traffic"]["message"]
    assert results["traffic"]["numbers"] == {"requests": 104_000, "deployers": 16, "min_requests": 100_000, "min_deployers": 15}
    assert results["flag_rate"]["outcome"] == "pass" and results["flag_rate"]["numbers"]["upper_bound"] < 0.01
    assert results["incidents"]["outcome"] == "pass"
    assert results["approvals"]["outcome"] == "fail"


def test_flag_rate_too_high_fails_the_gate(ctx: ServiceContext, clock: FrozenClock, admin: Actor, atlas: str) -> None:
    rollouts.transition(ctx, admin, atlas, "v1", "promote", reason="internal")
    rollouts.transition(ctx, admin, atlas, "v1", "promote", reason="partners", override_reason="test setup")
    add_buckets(ctx, atlas, "v1", "trusted-partners", clock.now(), hours=10, requests=1000, flagged={"moderation": 30})
    clock.advance(hours=11)
    results = dict(outcomes(gates.check(ctx, admin, atlas)))
    assert results["flag_rate"] == "fail"


def test_traffic_fact_sums_named_detectors_in_the_database(ctx: ServiceContext, clock: FrozenClock, atlas: str) -> None:
    """The gate's flag counts come from one SQL sum (no per-bucket reads) and equal the row-by-row sum."""
    start = clock.now()
    add_buckets(ctx, atlas, "v1", "trusted-partners", start, hours=3, deployers=("dep_a", "dep_b"), requests=100,
                flagged={"moderation": 2, "pii": 1})
    add_buckets(ctx, atlas, "v1", "trusted-partners", start + timedelta(hours=3), hours=2, requests=100, flagged={})
    add_buckets(ctx, atlas, "v1", "trusted-partners", start + timedelta(hours=5), hours=1, deployers=("dep_c",),
                requests=100, flagged={"moderation": 7})
    with ctx.db.read() as session:
        every = gates.traffic_fact(session, atlas, "v1", "trusted-partners", start)
        named = gates.traffic_fact(session, atlas, "v1", "trusted-partners", start, detectors=["moderation", "absent"])
        none = gates.traffic_fact(session, atlas, "v1", "trusted-partners", start, detectors=())
    assert dict(every.flagged) == {"moderation": 19, "pii": 6}
    assert dict(named.flagged) == {"moderation": 19}  # a detector that never flagged is absent, as before
    assert dict(none.flagged) == {}
    assert (named.requests, named.deployers) == (every.requests, every.deployers) == (900, 3)
