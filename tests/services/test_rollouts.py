"""Transitions through the service: reasons, gates, overrides, audit, and random sequences."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from releasegate.clock import FrozenClock
from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.policy.rollout import ACTIONS, RolloutState, next_state
from releasegate.services import audit, rollouts
from releasegate.services.context import Actor, ServiceContext
from support import MODEL, admitted_deployer, apply_text

SIMPLE_PLAN = """
model: acme/atlas-8b
versions: {v1: {}, v2: {}}
aliases: {atlas: {v1: 100}}
use_cases: {chat: {description: Chat with customers.}}
tiers: {internal: {}, partner: {}, public: {}}
stages:
  - {name: internal, audience: {tiers: [internal]}}
  - name: partners
    audience: {tiers: [internal, partner]}
    gate: [{time_in_stage: {min: 7d}}]
  - {name: public, audience: {everyone: true}}
"""


def test_transitions_need_a_reason(ctx: ServiceContext, admin: Actor) -> None:
    apply_text(ctx, admin, SIMPLE_PLAN)
    with pytest.raises(InvalidInput) as err:
        rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="  ")
    assert err.value.code == "reason_required"


def test_gate_holds_until_time_in_stage(ctx: ServiceContext, admin: Actor, clock: FrozenClock) -> None:
    apply_text(ctx, admin, SIMPLE_PLAN)
    rm = Actor(name="rm", role="release_manager")
    rollouts.transition(ctx, rm, MODEL, "v1", "promote", reason="start")
    clock.advance(days=3)
    with pytest.raises(Refused) as err:
        rollouts.transition(ctx, rm, MODEL, "v1", "promote", reason="widen")
    assert err.value.code == "gate_not_passed"
    assert err.value.details["verdict"]["results"][0]["outcome"] == "fail"
    clock.advance(days=4)
    result = rollouts.transition(ctx, rm, MODEL, "v1", "promote", reason="widen")
    assert result["stage"] == "partners"
    hist = rollouts.history(ctx, admin, MODEL, "v1")
    assert hist[-1]["verdict"]["outcome"] == "pass" and hist[-1]["actor"] == "rm"


def test_override_needs_admin_and_is_recorded(ctx: ServiceContext, admin: Actor) -> None:
    apply_text(ctx, admin, SIMPLE_PLAN)
    rm = Actor(name="rm", role="release_manager")
    rollouts.transition(ctx, rm, MODEL, "v1", "promote", reason="start")
    with pytest.raises(Refused) as err:
        rollouts.transition(ctx, rm, MODEL, "v1", "promote", reason="widen", override_reason="trust me")
    assert err.value.code == "override_forbidden"
    rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="widen", override_reason="board decision 2026-11")
    last = rollouts.history(ctx, admin, MODEL, "v1")[-1]
    assert last["override_reason"] == "board decision 2026-11" and last["verdict"]["outcome"] == "fail"


def test_rollback_narrows_the_audience(ctx: ServiceContext, admin: Actor) -> None:
    apply_text(ctx, admin, SIMPLE_PLAN)
    admitted_deployer(ctx, "inhouse", "internal", ["chat"])
    admitted_deployer(ctx, "partnerco", "partner", ["chat"])
    rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="start")
    wide = rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="widen", override_reason="test")
    assert wide["audience_size"] == 2
    back = rollouts.transition(ctx, admin, MODEL, "v1", "rollback", reason="incident")
    assert back["stage"] == "internal" and back["audience_size"] == 1


def test_halt_reports_not_serving_and_records_reason(ctx: ServiceContext, admin: Actor) -> None:
    apply_text(ctx, admin, SIMPLE_PLAN)
    rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="start")
    halted = rollouts.transition(ctx, admin, MODEL, "v1", "halt", reason="critical incident 7")
    assert halted["state"] == "halted" and halted["audience_size"] == 0 and halted["reason"] == "critical incident 7"
    with pytest.raises(Refused) as err:
        rollouts.transition(ctx, admin, MODEL, "v1", "pause", reason="x")
    assert "halted" in err.value.message


def test_unknown_version_lists_known_ones(ctx: ServiceContext, admin: Actor) -> None:
    apply_text(ctx, admin, SIMPLE_PLAN)
    with pytest.raises(NotFound) as err:
        rollouts.transition(ctx, admin, MODEL, "v9", "promote", reason="x")
    assert err.value.code == "version_not_found" and "v1" in err.value.message


def test_retarget_switches_alias_and_is_audited(ctx: ServiceContext, admin: Actor) -> None:
    apply_text(ctx, admin, SIMPLE_PLAN)
    rollouts.retarget(ctx, admin, MODEL, "atlas", {"v2": 100}, reason="v2 is better")
    aliases = [r for r in rollouts.status(ctx, admin, MODEL) if "alias" in r]
    assert aliases[0]["targets"] == {"v2": 100}
    assert audit.list_entries(ctx, admin, limit=1)[0]["action"] == "alias.retarget"
    # Re-applying the same plan does not undo a runtime retarget.
    apply_text(ctx, admin, SIMPLE_PLAN + "\n# comment\n")
    assert next(r for r in rollouts.status(ctx, admin, MODEL) if "alias" in r)["targets"] == {"v2": 100}
    with pytest.raises(NotFound):
        rollouts.retarget(ctx, admin, MODEL, "atlas", {"v7": 1}, reason="x")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=12))
def test_random_transition_sequences(ctx: ServiceContext, admin: Actor, clock: FrozenClock, actions: list[str]) -> None:
    """Whatever is tried, the stored state replays from its history and the audit chain verifies."""
    version = f"v{len(actions) % 2 + 1}"
    if not any(r.get("version") == version for r in _safe_status(ctx, admin)):
        apply_text(ctx, admin, SIMPLE_PLAN)
    for action in actions:
        clock.advance(timedelta(days=8))
        with contextlib.suppress(Refused):
            rollouts.transition(ctx, admin, MODEL, version, action, reason=f"random {action}", override_reason="property test")
        now = next(r for r in rollouts.status(ctx, admin, MODEL) if r.get("version") == version)
        if now["state"] in ("halted", "decommissioned", "draft"):
            assert now["audience_size"] == 0
        # Replaying the recorded transitions reproduces the current state.
        replay = RolloutState("draft", None)
        for t in rollouts.history(ctx, admin, MODEL, version):
            replay = next_state(replay, t["action"], n_stages=3)
            assert (replay.state, replay.stage) == (t["to_state"], t["to_stage"])
        assert (replay.state, replay.stage) == (now["state"], now["stage_index"])
        assert audit.verify(ctx, admin)["ok"]


def _safe_status(ctx: ServiceContext, admin: Actor) -> list[dict[str, object]]:
    try:
        return rollouts.status(ctx, admin, MODEL)
    except NotFound:
        return []
