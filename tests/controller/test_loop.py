"""The controller's reconciliation step: acts on halt rules once per cause, announces readiness once."""

from __future__ import annotations

import json
from pathlib import Path

from evidence_support import add_buckets, admit_deployer
from releasegate.clock import FrozenClock
from releasegate.controller.loop import CONTROLLER, controller_lock, reconcile, run_forever
from releasegate.plan.loader import load_plan_text
from releasegate.services import approvals, audit, deployers, evidence, incidents, plans, rollouts
from releasegate.services.context import Actor, ServiceContext

ATLAS = "acme/atlas-8b"


def apply(ctx: ServiceContext, admin: Actor, text: str) -> None:
    plans.apply(ctx, admin, load_plan_text(text))


def state(ctx: ServiceContext, admin: Actor, version: str = "v1") -> tuple[str, str | None]:
    row = next(r for r in rollouts.status(ctx, admin, ATLAS) if r.get("version") == version)
    return row["state"], row["stage"]


def test_critical_incident_halts_once_and_a_resume_stands(ctx: ServiceContext, clock: FrozenClock, admin: Actor,
                                                          example_plan_text: str) -> None:
    apply(ctx, admin, example_plan_text)
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="internal")
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="partners", override_reason="test setup")
    assert reconcile(ctx) == []
    inc = incidents.report(ctx, admin, ATLAS, "v1", severity="critical", title="jailbreak yields exploit code")
    clock.advance(minutes=1)
    [action] = reconcile(ctx)
    assert action.kind == "halt" and action.done and action.cause == f"incident:{inc['id']}"
    assert state(ctx, admin) == ("halted", "trusted-partners")
    entry = audit.list_entries(ctx, admin, target=f"version:{ATLAS}:v1")[0]
    assert entry["actor"] == "controller" and entry["action"] == "rollout.halt"
    assert "critical incident" in entry["reason"] and inc["id"] in entry["reason"]
    assert reconcile(ctx) == []  # nothing new: idempotent
    rollouts.transition(ctx, admin, ATLAS, "v1", "resume", reason="false alarm confirmed by safety lead")
    assert reconcile(ctx) == []  # the person's resume stands for this cause
    assert state(ctx, admin) == ("active", "trusted-partners")
    second = incidents.report(ctx, admin, ATLAS, "v1", severity="critical", title="second, real")
    [again] = reconcile(ctx)
    assert again.kind == "halt" and second["id"] in again.cause


def test_medium_incident_does_not_halt(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> None:
    apply(ctx, admin, example_plan_text)
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="internal")
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="partners", override_reason="test setup")
    incidents.report(ctx, admin, ATLAS, "v1", severity="medium", title="odd answer")
    assert reconcile(ctx) == []


def test_rollback_rule_narrows_and_first_stage_halts(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> None:
    text = example_plan_text.replace("- incident: {severity: critical, action: halt}", "- incident: {severity: high, action: rollback}", 1)
    apply(ctx, admin, text)
    for version in ("v1", "v2"):
        rollouts.transition(ctx, admin, ATLAS, version, "promote", reason="internal")
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="partners", override_reason="test setup")
    incidents.report(ctx, admin, ATLAS, "v1", severity="high", title="misuse")
    [action] = reconcile(ctx)
    assert action.kind == "rollback" and state(ctx, admin) == ("active", "internal")
    assert reconcile(ctx) == []  # stage internal has no halt rules, and the cause was acted on


def test_only_one_controller_acts(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> None:
    apply(ctx, admin, example_plan_text)
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="internal")
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="partners", override_reason="test setup")
    incidents.report(ctx, admin, ATLAS, "v1", severity="critical", title="x")
    with controller_lock(ctx) as first:
        assert first
        with controller_lock(ctx) as second:
            assert not second
        assert reconcile(ctx) == []
        assert state(ctx, admin) == ("active", "trusted-partners")
    assert [a.kind for a in reconcile(ctx)] == ["halt"]


def test_ready_for_approval_is_announced_once_per_stage(ctx: ServiceContext, clock: FrozenClock, admin: Actor,
                                                         example_plan_text: str) -> None:
    text = example_plan_text.replace("""      - time_in_stage: {min: 14d}
      - eval: {suite: cyber-uplift, metric: accuracy, max: 0.20, version: this}
      - eval: {suite: refusal-harmful, metric: refusal_rate, min: 0.98}
""", "      - time_in_stage: {min: 14d}\n", 1)
    apply(ctx, admin, text)
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="internal")
    assert reconcile(ctx) == []  # 14 days not yet spent
    clock.advance(days=14)
    [ready] = reconcile(ctx)
    assert ready.kind == "ready" and "ready for approval into 'trusted-partners'" in ready.reason
    assert reconcile(ctx) == []
    assert audit.list_entries(ctx, admin, target=f"version:{ATLAS}:v1")[0]["action"] == "gate.ready"
    assert state(ctx, admin) == ("active", "internal")  # never promoted without auto_promote


def test_auto_promote_when_every_criterion_passes(ctx: ServiceContext, clock: FrozenClock, admin: Actor,
                                                  example_plan_text: str, tmp_path: Path) -> None:
    text = example_plan_text.replace("""  - name: trusted-partners
    channels: [api]
""", """  - name: trusted-partners
    channels: [api]
    auto_promote: true
""", 1)
    apply(ctx, admin, text)
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="internal")
    clock.advance(days=15)
    assert [a.kind for a in reconcile(ctx)] == []  # evals missing: inconclusive, not even ready
    for who in (Actor("alice", "reviewer", email="alice@acme.example"), Actor("bob", "reviewer", email="bob@acme.example")):
        approvals.approve(ctx, who, ATLAS, "v1", "trusted-partners")
    assert reconcile(ctx) == []  # still no evals
    path = tmp_path / "evals.json"
    path.write_text(json.dumps({"model": "atlas-8b-v1", "results": [
        {"suite": "cyber-uplift", "metric": "accuracy", "value": 0.05},
        {"suite": "refusal-harmful", "metric": "refusal_rate", "value": 0.995}]}))
    evidence.import_evidence(ctx, admin, path, ATLAS, "v1")
    [promoted] = reconcile(ctx)
    assert promoted.kind == "promote" and promoted.done
    assert state(ctx, admin) == ("active", "trusted-partners")
    last = rollouts.history(ctx, admin, ATLAS, "v1")[-1]
    assert last["actor"] == CONTROLLER.name and last["verdict"]["outcome"] == "pass"
    assert reconcile(ctx) == []


def test_flag_rate_pauses_once_per_window(ctx: ServiceContext, clock: FrozenClock, admin: Actor,
                                          example_plan_text: str) -> None:
    apply(ctx, admin, example_plan_text)
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="internal")
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="partners", override_reason="test setup")
    clock.advance(minutes=90)
    add_buckets(ctx, ATLAS, "v1", "trusted-partners", clock.now(), requests=600, flagged={"moderation": 3})
    assert reconcile(ctx) == []  # 0.5%: under 2% even at the upper bound
    add_buckets(ctx, ATLAS, "v1", "trusted-partners", clock.now(), deployers=("dep_b",), requests=600, flagged={"moderation": 40})
    [paused] = reconcile(ctx)
    assert paused.kind == "pause" and "43 of 1200 request(s) flagged by moderation" in paused.reason
    assert state(ctx, admin) == ("paused", "trusted-partners")
    assert reconcile(ctx) == []
    rollouts.transition(ctx, admin, ATLAS, "v1", "resume", reason="detector misfire, patched")
    assert reconcile(ctx) == []  # the person's resume stands for this window


def test_flag_rate_of_a_sampled_detector_is_judged_on_what_it_inspected(ctx: ServiceContext, clock: FrozenClock,
                                                                        admin: Actor, example_plan_text: str) -> None:
    """moderation inspects one request in ten: 40 flags in 6,000 requests are ~7% of what it saw."""
    sampled = example_plan_text.replace("moderation: {kind: patterns, sample: 1.0,", "moderation: {kind: patterns, sample: 0.1,")
    assert sampled != example_plan_text
    apply(ctx, admin, sampled)
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="internal")
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="partners", override_reason="test setup")
    clock.advance(minutes=90)
    add_buckets(ctx, ATLAS, "v1", "trusted-partners", clock.now(), requests=6000, flagged={"moderation": 40})
    [paused] = reconcile(ctx)  # over all 6,000 requests it would be 0.67%, and no pause
    assert paused.kind == "pause" and "40 of ~600 inspected request(s) (10% sample of 6000)" in paused.reason
    assert state(ctx, admin) == ("paused", "trusted-partners")


def test_scope_violations_suspend_the_deployer_once(ctx: ServiceContext, clock: FrozenClock, admin: Actor,
                                                    example_plan_text: str) -> None:
    apply(ctx, admin, example_plan_text)
    bad = admit_deployer(ctx, admin, "sloppyco", "public")
    good = admit_deployer(ctx, admin, "carefulco", "public")
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="internal")
    for _ in range(2):
        rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="wider", override_reason="test setup")
    add_buckets(ctx, ATLAS, "v1", "limited-public", clock.now(), deployers=(bad,), requests=200, scope_violations=30)
    add_buckets(ctx, ATLAS, "v1", "limited-public", clock.now(), deployers=(good,), requests=200, scope_violations=2)
    clock.advance(minutes=5)
    [suspended] = reconcile(ctx)
    assert suspended.kind == "suspend_deployer" and suspended.target == f"deployer:{bad}"
    assert deployers.show(ctx, admin, bad)["status"] == "suspended"
    assert deployers.show(ctx, admin, good)["status"] == "active"
    assert "30 out-of-scope of 200" in audit.list_entries(ctx, admin, target=f"deployer:{bad}")[0]["reason"]
    assert reconcile(ctx) == []
    assert state(ctx, admin) == ("active", "limited-public")


def test_run_forever_repeats_until_stopped(ctx: ServiceContext, admin: Actor,
                                                               example_plan_text: str) -> None:
    apply(ctx, admin, example_plan_text)
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="internal")
    rollouts.transition(ctx, admin, ATLAS, "v1", "promote", reason="partners", override_reason="test setup")
    incidents.report(ctx, admin, ATLAS, "v1", severity="critical", title="x")
    seen: list[list[str]] = []
    sleeps: list[float] = []
    run_forever(ctx, interval=2.5, on_actions=lambda acts: seen.append([a.kind for a in acts]),
                sleep=sleeps.append, should_stop=lambda: len(seen) >= 3)
    assert seen == [["halt"], [], []] and sleeps == [2.5, 2.5, 2.5]
