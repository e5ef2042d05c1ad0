"""The rollout state machine of one model version. Pure: a state and an action in, a state out.

    draft -> active(0) -> active(1) ...     side states paused(i), halted(i); terminal decommissioned
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from releasegate.errors import Refused

State = Literal["draft", "active", "paused", "halted", "decommissioned"]
Action = Literal["promote", "pause", "resume", "halt", "rollback", "decommission"]
ACTIONS: tuple[Action, ...] = ("promote", "pause", "resume", "halt", "rollback", "decommission")
SERVING_STATES: frozenset[str] = frozenset({"active", "paused"})


@dataclass(frozen=True)
class RolloutState:
    state: State
    stage: int | None  # index into the plan's stages; None while draft

    @property
    def serving(self) -> bool:
        """True while requests for this version may be served (active or paused)."""
        return self.state in SERVING_STATES

    def describe(self, stage_names: list[str] | None = None) -> str:
        if self.stage is None:
            return self.state
        name = stage_names[self.stage] if stage_names and self.stage < len(stage_names) else str(self.stage)
        return f"{self.state}({name})"


DRAFT = RolloutState("draft", None)


def next_state(current: RolloutState, action: str, *, n_stages: int) -> RolloutState:
    """The state after ``action``, or ``Refused`` (code ``illegal_transition``) naming the current state."""

    def refuse(why: str) -> Refused:
        return Refused(
            f"cannot {action} a version that is {current.state}"
            + (f" in stage {current.stage}" if current.stage is not None else "")
            + f": {why}",
            code="illegal_transition",
            details={"state": current.state, "stage": current.stage, "action": action},
        )

    s, i = current.state, current.stage
    if action not in ACTIONS:
        raise Refused(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}", code="unknown_action")
    if s == "decommissioned":
        raise refuse("it is decommissioned, which is final")
    if action == "decommission":
        return RolloutState("decommissioned", i)
    if action == "promote":
        if s == "draft":
            return RolloutState("active", 0)
        if s != "active":
            raise refuse("only an active version can be promoted; resume it first")
        assert i is not None
        if i + 1 >= n_stages:
            raise refuse("it is already in the last stage of its plan")
        return RolloutState("active", i + 1)
    if s == "draft":
        raise refuse("it has not been released yet; promote it into its first stage")
    assert i is not None
    if action == "pause":
        if s != "active":
            raise refuse("only an active version can be paused")
        return RolloutState("paused", i)
    if action == "resume":
        if s not in ("paused", "halted"):
            raise refuse("only a paused or halted version can be resumed")
        return RolloutState("active", i)
    if action == "halt":
        if s == "halted":
            raise refuse("it is already halted")
        return RolloutState("halted", i)
    # rollback
    if i == 0:
        raise refuse("it is in its first stage; there is no earlier stage (halt or decommission instead)")
    return RolloutState("active", i - 1)
