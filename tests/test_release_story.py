"""A scripted release of the example plan, from internal use toward general availability.

Gates hold until evidence, time and named approvals arrive; the requester cannot approve; a
critical incident makes the controller halt the version and the gateway's policy refuses it;
a rollback narrows the audience; the version climbs again; the audit chain verifies at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evidence_support import ATLAS, add_buckets, admit_deployer
from releasegate.clock import FrozenClock
from releasegate.controller.loop import reconcile
from releasegate.errors import Refused
from releasegate.gateway.snapshot import compile_snapshot
from releasegate.plan.loader import load_plan_text
from releasegate.policy.access import RequestFacts, decide
from releasegate.services import approvals, audit, evidence, gates, incidents, keys, plans, rollouts
from releasegate.services.context import Actor, ServiceContext

FIXTURES = Path(__file__).resolve().parent / "evidence" / "fixtures"
BOB = Actor(name="bob@acme.example", role="release_manager", email="bob@acme.example")  # policy-lead, runs the release
ALICE = Actor(name="alice@acme.example", role="reviewer", email="alice@acme.example")  # safety-lead
CAROL = Actor(name="carol@acme.example", role="reviewer", email="carol@acme.example")  # policy-lead


def verdict(ctx: ServiceContext, version: str = "v1") -> dict[str, str]:
    row = next(r for r in gates.check(ctx, BOB, ATLAS, version))
    return {f"{r['kind']}:{i}": r["outcome"] for i, r in enumerate(row["verdict"]["results"])}


def gateway(ctx: ServiceContext, clock: FrozenClock, key: str) -> tuple[bool, str | None, str]:
    """What a gateway replica holding a freshly compiled snapshot decides for a chat request to v1."""
    snapshot = compile_snapshot(ctx.db)
    d = decide(snapshot.view, key, RequestFacts(endpoint="chat.completions", model=f"{ATLAS}:v1"), clock.now().timestamp())
    return d.allowed, d.code, d.message


def test_release_story(ctx: ServiceContext, clock: FrozenClock, admin: Actor, example_plan_text: str, tmp_path: Path) -> None:
    plans.apply(ctx, admin, load_plan_text(example_plan_text))
    inhouse = admit_deployer(ctx, admin, "acme-support", "internal")
    partner = admit_deployer(ctx, admin, "bluebank", "trusted-partner")
    inhouse_key = keys.issue(ctx, admin, deployer=inhouse, model=ATLAS, use_case="customer-support")["key"]
    partner_key = keys.issue(ctx, admin, deployer=partner, model=ATLAS, use_case="customer-support")["key"]

    # Day 0: internal only.
    rollouts.transition(ctx, BOB, ATLAS, "v1", "promote", reason="internal dogfooding")
    assert gateway(ctx, clock, inhouse_key)[0]
    assert gateway(ctx, clock, partner_key)[1] == "not_in_audience"
    assert verdict(ctx) == {"time_in_stage:0": "fail", "eval:1": "inconclusive", "eval:2": "inconclusive",
                            "findings:3": "pass", "approvals:4": "fail"}

    # Day 7: evaluations and a red-team report arrive; the report has an open critical finding.
    clock.advance(days=7)
    evals = tmp_path / "atlas-v1-evals.json"
    evals.write_text(json.dumps({"model": "atlas-8b-v1", "completed_at": clock.now().isoformat(), "results": [
        {"suite": "cyber-uplift", "task": "ctf-suite", "metric": "accuracy", "value": 0.11, "stderr": 0.02, "samples": 300},
        {"suite": "refusal-harmful", "metric": "refusal_rate", "value": 0.991, "stderr": 0.002, "samples": 4000}]}))
    evidence.import_evidence(ctx, BOB, evals, ATLAS, "v1")
    evidence.import_evidence(ctx, BOB, FIXTURES / "generic_findings.csv", ATLAS, "v1")
    assert verdict(ctx)["eval:1"] == "pass" and verdict(ctx)["findings:3"] == "fail"
    critical = next(f for f in evidence.list_evidence(ctx, BOB, ATLAS, "v1")["findings"] if f["severity"] == "critical")
    evidence.update_finding(ctx, BOB, critical["id"], "mitigated", reason="browse tool pinned to the allow-list")

    # Day 15: two weeks in stage; Bob asks, and cannot approve his own request.
    clock.advance(days=8)
    approvals.request_promotion(ctx, BOB, ATLAS, "v1", "trusted-partners", comment="two clean weeks")
    with pytest.raises(Refused, match="cannot approve"):
        approvals.approve(ctx, BOB, ATLAS, "v1", "trusted-partners")
    approvals.approve(ctx, ALICE, ATLAS, "v1", "trusted-partners", comment="evals reviewed")
    with pytest.raises(Refused, match="gate into stage 'trusted-partners' is fail"):
        rollouts.transition(ctx, BOB, ATLAS, "v1", "promote", reason="partners")
    approvals.approve(ctx, CAROL, ATLAS, "v1", "trusted-partners")
    [ready] = reconcile(ctx)
    assert ready.kind == "ready" and "a release manager may promote it" in ready.reason
    assert reconcile(ctx) == []
    rollouts.transition(ctx, BOB, ATLAS, "v1", "promote", reason="partners pilot")
    assert gateway(ctx, clock, partner_key)[0]

    # Day 16-21: partner traffic, a clean flag rate; the controller has nothing to do.
    add_buckets(ctx, ATLAS, "v1", "trusted-partners", clock.now(), hours=24, deployers=(inhouse, partner),
                requests=400, flagged={"moderation": 1})
    clock.advance(days=6)
    assert reconcile(ctx) == []

    # Day 21: the partner reports a critical incident; the controller halts v1 everywhere.
    me = Actor(name="sec@bluebank.example", role="deployer", deployer_id=partner)
    inc = incidents.report(ctx, me, ATLAS, "v1", severity="critical", title="model wrote working ransomware on request")
    [halt] = reconcile(ctx)
    assert halt.kind == "halt" and halt.done and inc["id"] in halt.reason and "halt_on[0] incident" in halt.reason
    allowed, code, message = gateway(ctx, clock, partner_key)
    assert not allowed and code == "version_halted" and "ransomware" in message
    assert gateway(ctx, clock, inhouse_key)[1] == "version_halted"
    assert reconcile(ctx) == []  # once per cause

    # The release manager rolls back: the partners' stage audience loses access, internal resumes.
    incidents.transition(ctx, BOB, inc["id"], "triaged", reason="reproduced")
    rollouts.transition(ctx, BOB, ATLAS, "v1", "rollback", reason=f"back to internal while {inc['id']} is fixed")
    assert gateway(ctx, clock, inhouse_key)[0]
    assert gateway(ctx, clock, partner_key)[1] == "not_in_audience"
    incidents.transition(ctx, BOB, inc["id"], "mitigated", reason="refusal training patch + output filter")
    incidents.transition(ctx, BOB, inc["id"], "closed", reason="verified by red team")
    # Approvals given before the halt no longer count; a fresh evaluation and fresh approvals are needed.
    clock.advance(days=14)
    assert verdict(ctx)["approvals:4"] == "fail"
    approvals.approve(ctx, ALICE, ATLAS, "v1", "limited-public")  # ahead of time, for the next gate
    for who in (ALICE, CAROL):
        assert approvals.approve(ctx, who, ATLAS, "v1", "trusted-partners", comment="re-approved after the fix")
        with pytest.raises(Refused, match="already approved"):
            approvals.approve(ctx, who, ATLAS, "v1", "trusted-partners")
    rollouts.transition(ctx, BOB, ATLAS, "v1", "promote", reason="re-open partners after the fix")
    # Day 35 → 66: limited-public needs 30 days, 100k requests from 15 deployers, no serious incidents in 30 days.
    entered = clock.now()
    add_buckets(ctx, ATLAS, "v1", "trusted-partners", entered, hours=48,
                deployers=(inhouse, partner, *(f"dep_pilot{i:02}" for i in range(14))), requests=140, flagged={})
    clock.advance(days=31)
    v = verdict(ctx)
    assert v == {"time_in_stage:0": "pass", "traffic:1": "pass", "incidents:2": "pass", "flag_rate:3": "pass",
                 "approvals:4": "pass"}, gates.check(ctx, BOB, ATLAS, "v1")
    rollouts.transition(ctx, BOB, ATLAS, "v1", "promote", reason="limited public")

    # Day 66 → 127: general availability needs 60 days and two approvals.
    clock.advance(days=61)
    approvals.approve(ctx, ALICE, ATLAS, "v1", "general-availability")
    approvals.approve(ctx, CAROL, ATLAS, "v1", "general-availability")
    rollouts.transition(ctx, BOB, ATLAS, "v1", "promote", reason="general availability")
    status = next(r for r in rollouts.status(ctx, BOB, ATLAS) if r.get("version") == "v1")
    assert (status["state"], status["stage"]) == ("active", "general-availability")
    # The open-weights gate stays inconclusive: no peer attestations exist, and cyber-uplift must be <= 0.10.
    ow = verdict(ctx)
    assert ow["peers:2"] == "inconclusive" and ow["eval:1"] == "fail"

    check = audit.verify(ctx, admin)
    assert check["ok"], check["problems"]
    actions = [e["action"] for e in reversed(audit.list_entries(ctx, admin, target=f"version:{ATLAS}:v1", limit=500))]
    assert actions.count("rollout.promote") == 5 and "rollout.halt" in actions and "gate.ready" in actions
    halt_entry = next(e for e in audit.list_entries(ctx, admin, target=f"version:{ATLAS}:v1", limit=500)
                      if e["action"] == "rollout.halt")
    assert halt_entry["actor"] == "controller" and "critical" in halt_entry["reason"]
