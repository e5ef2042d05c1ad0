"""Approvals: named role holders only, never the requester, once each, for stages ahead."""

from __future__ import annotations

import pytest

from releasegate.clock import FrozenClock
from releasegate.errors import Forbidden, InvalidInput, Refused
from releasegate.services import approvals, audit, rollouts
from releasegate.services.context import Actor, ServiceContext

ALICE = Actor(name="alice", role="reviewer", email="alice@acme.example")
BOB = Actor(name="bob", role="release_manager", email="Bob@acme.example")
CAROL = Actor(name="carol@acme.example", role="reviewer")


def test_role_holders_approve_once(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    a = approvals.approve(ctx, ALICE, atlas, "v1", "trusted-partners", comment="evals reviewed")
    assert a["approver"] == "alice@acme.example" and a["roles"] == ["safety-lead"]
    c = approvals.approve(ctx, CAROL, atlas, "v1", "trusted-partners")
    assert c["roles"] == ["policy-lead"]
    with pytest.raises(Refused) as exc:
        approvals.approve(ctx, ALICE, atlas, "v1", "trusted-partners")
    assert exc.value.code == "already_approved"
    assert [x["approver"] for x in approvals.list_approvals(ctx, admin, atlas, "v1")] == ["alice@acme.example", "carol@acme.example"]
    assert audit.list_entries(ctx, admin, target=f"version:{atlas}:v1")[0]["action"] == "approval.grant"


def test_requester_cannot_approve(ctx: ServiceContext, atlas: str) -> None:
    approvals.request_promotion(ctx, BOB, atlas, "v1", "trusted-partners", comment="two weeks clean")
    with pytest.raises(Refused) as exc:
        approvals.approve(ctx, BOB, atlas, "v1", "trusted-partners")
    assert exc.value.code == "requester_cannot_approve"
    with pytest.raises(Refused):
        approvals.request_promotion(ctx, BOB, atlas, "v1", "trusted-partners")
    approvals.approve(ctx, ALICE, atlas, "v1", "trusted-partners")


def test_who_may_not_approve(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    with pytest.raises(Forbidden) as exc:
        approvals.approve(ctx, Actor("mallory", "reviewer", email="mallory@acme.example"), atlas, "v1", "trusted-partners")
    assert exc.value.code == "not_an_approver"
    with pytest.raises(Forbidden):
        approvals.approve(ctx, Actor("alice", "deployer", deployer_id="d", email="alice@acme.example"), atlas, "v1", "trusted-partners")
    with pytest.raises(InvalidInput) as noemail:
        approvals.approve(ctx, Actor("local:ops", "admin"), atlas, "v1", "trusted-partners")
    assert noemail.value.code == "approver_unknown"


def test_only_stages_ahead(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    rollouts.transition(ctx, admin, atlas, "v1", "promote", reason="internal")
    with pytest.raises(Refused) as exc:
        approvals.approve(ctx, ALICE, atlas, "v1", "internal")
    assert exc.value.code == "stage_already_entered"
    with pytest.raises(Exception, match="no stage"):
        approvals.approve(ctx, ALICE, atlas, "v1", "moon")
    assert approvals.approve(ctx, ALICE, atlas, "v1", "open-weights")["stage"] == "open-weights"


def test_an_approval_given_before_a_halt_is_renewed_not_duplicated(ctx: ServiceContext, clock: FrozenClock, admin: Actor,
                                                                   atlas: str) -> None:
    rollouts.transition(ctx, admin, atlas, "v1", "promote", reason="internal")
    approvals.approve(ctx, ALICE, atlas, "v1", "trusted-partners", comment="before")
    clock.advance(hours=1)
    rollouts.transition(ctx, admin, atlas, "v1", "halt", reason="incident")
    rollouts.transition(ctx, admin, atlas, "v1", "resume", reason="fixed")
    clock.advance(hours=1)
    renewed = approvals.approve(ctx, ALICE, atlas, "v1", "trusted-partners", comment="after the fix")
    assert renewed["comment"] == "after the fix"
    assert len(approvals.list_approvals(ctx, admin, atlas, "v1")) == 1
    assert audit.list_entries(ctx, admin, target=f"version:{atlas}:v1")[0]["action"] == "approval.renew"
    with pytest.raises(Refused):
        approvals.approve(ctx, ALICE, atlas, "v1", "trusted-partners")
