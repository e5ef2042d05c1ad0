"""The rollout state machine as a pure function: legal moves, refusals, invariants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from releasegate.errors import Refused
from releasegate.policy.rollout import ACTIONS, DRAFT, RolloutState, next_state

N = 4


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        (DRAFT, "promote", RolloutState("active", 0)),
        (RolloutState("active", 0), "promote", RolloutState("active", 1)),
        (RolloutState("active", 1), "pause", RolloutState("paused", 1)),
        (RolloutState("paused", 1), "resume", RolloutState("active", 1)),
        (RolloutState("active", 2), "halt", RolloutState("halted", 2)),
        (RolloutState("paused", 2), "halt", RolloutState("halted", 2)),
        (RolloutState("halted", 2), "resume", RolloutState("active", 2)),
        (RolloutState("halted", 2), "rollback", RolloutState("active", 1)),
        (RolloutState("active", 1), "rollback", RolloutState("active", 0)),
        (RolloutState("active", 3), "decommission", RolloutState("decommissioned", 3)),
        (DRAFT, "decommission", RolloutState("decommissioned", None)),
    ],
)
def test_legal_transitions(state: RolloutState, action: str, expected: RolloutState) -> None:
    assert next_state(state, action, n_stages=N) == expected


@pytest.mark.parametrize(
    ("state", "action", "fragment"),
    [
        (DRAFT, "pause", "draft"),
        (DRAFT, "halt", "draft"),
        (DRAFT, "rollback", "draft"),
        (RolloutState("paused", 1), "promote", "paused"),
        (RolloutState("halted", 1), "promote", "halted"),
        (RolloutState("active", N - 1), "promote", "last stage"),
        (RolloutState("active", 0), "rollback", "first stage"),
        (RolloutState("active", 0), "resume", "active"),
        (RolloutState("halted", 0), "halt", "already halted"),
        (RolloutState("decommissioned", 2), "resume", "decommissioned"),
        (RolloutState("decommissioned", 2), "decommission", "final"),
    ],
)
def test_illegal_transitions_name_the_current_state(state: RolloutState, action: str, fragment: str) -> None:
    with pytest.raises(Refused) as err:
        next_state(state, action, n_stages=N)
    assert err.value.code == "illegal_transition"
    assert fragment in err.value.message
    assert err.value.details["state"] == state.state


def test_unknown_action_is_refused() -> None:
    with pytest.raises(Refused) as err:
        next_state(DRAFT, "launch", n_stages=N)
    assert err.value.code == "unknown_action"


@given(st.lists(st.sampled_from(ACTIONS), max_size=40))
def test_random_sequences_keep_invariants(actions: list[str]) -> None:
    state = DRAFT
    for action in actions:
        try:
            new = next_state(state, action, n_stages=N)
        except Refused:
            continue
        # Stage stays within the plan; terminal stays terminal; halted never serves.
        assert new.stage is None or 0 <= new.stage < N
        assert state.state != "decommissioned"
        if new.state in ("halted", "decommissioned", "draft"):
            assert not new.serving
        if action == "rollback":
            assert state.stage is not None and new.stage == state.stage - 1
        state = new
