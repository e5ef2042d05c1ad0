"""Deployers, applications and keys: approvals, refusals, rotation, and what is stored."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from releasegate import credentials
from releasegate.clock import FrozenClock
from releasegate.errors import Forbidden, InvalidInput, NotFound, Refused, Unauthenticated
from releasegate.services import applications, deployers, keys, principals
from releasegate.services.context import Actor, ServiceContext
from releasegate.store.models import ApiKey
from support import MODEL, REVIEWER, admitted_deployer, apply_text


@pytest.fixture
def planned(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> ServiceContext:
    apply_text(ctx, admin, example_plan_text)
    return ctx


def test_application_flow_grants_use_cases(planned: ServiceContext) -> None:
    d = deployers.create(planned, REVIEWER, name="bluebank", contact_email="ai@bluebank.example")
    assert d["status"] == "pending" and d["members"] == [{"email": "ai@bluebank.example", "role": "owner"}]
    deployer_actor = Actor(name="ai@bluebank.example", role="deployer", deployer_id=d["id"])
    a = applications.submit(planned, deployer_actor, deployer=d["id"], model=MODEL, use_cases=["customer-support", "code-assistant"])
    with pytest.raises(Refused) as err:
        applications.submit(planned, deployer_actor, deployer=d["id"], model=MODEL, use_cases=["customer-support"])
    assert err.value.code == "application_pending"
    with pytest.raises(Forbidden):
        applications.approve(planned, deployer_actor, a["id"], tier="trusted-partner")
    approved = applications.approve(planned, REVIEWER, a["id"], tier="trusted-partner", use_cases=["customer-support"])
    assert approved["approved_use_cases"] == ["customer-support"]
    shown = deployers.show(planned, deployer_actor, d["id"])
    assert shown["tier"] == "trusted-partner" and shown["status"] == "active"
    assert shown["use_cases"] == [f"{MODEL}:customer-support"]


def test_unknown_use_case_names_the_catalog(planned: ServiceContext) -> None:
    d = deployers.create(planned, REVIEWER, name="shopco")
    with pytest.raises(InvalidInput) as err:
        applications.submit(planned, REVIEWER, deployer=d["id"], model=MODEL, use_cases=["crypto-trading"])
    assert err.value.code == "unknown_use_case" and "customer-support" in err.value.message


def test_requires_tier_is_enforced(planned: ServiceContext) -> None:
    d = deployers.create(planned, REVIEWER, name="hackers")
    a = applications.submit(planned, REVIEWER, deployer=d["id"], model=MODEL, use_cases=["security-research"])
    with pytest.raises(Refused) as err:
        applications.approve(planned, REVIEWER, a["id"], tier="public")
    assert err.value.code == "use_case_requires_tier"


def test_rejection_reason_is_visible_to_applicant(planned: ServiceContext) -> None:
    d = deployers.create(planned, REVIEWER, name="shadyco")
    me = Actor(name="x@shadyco.example", role="deployer", deployer_id=d["id"])
    a = applications.submit(planned, me, deployer=d["id"], model=MODEL, use_cases=["code-assistant"])
    with pytest.raises(InvalidInput):
        applications.reject(planned, REVIEWER, a["id"], reason="")
    applications.reject(planned, REVIEWER, a["id"], reason="We could not verify your organisation.")
    assert applications.show(planned, me, a["id"])["reason"] == "We could not verify your organisation."


def test_key_issue_stores_only_a_hash_and_binds_the_use_case(planned: ServiceContext) -> None:
    d = admitted_deployer(planned, "bluebank", "trusted-partner", ["customer-support"])
    with pytest.raises(Refused) as err:
        keys.issue(planned, REVIEWER, deployer=d["id"], model=MODEL, use_case="code-assistant")
    assert err.value.code == "use_case_not_approved"
    k = keys.issue(planned, REVIEWER, deployer=d["id"], model=MODEL, use_case="customer-support")
    assert credentials.parse(k["key"], "rgk") is not None
    with planned.db.read() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.id == k["id"]))
        assert row is not None and k["key"] not in (row.secret_hash, row.lookup) and credentials.matches(k["key"], row.secret_hash)
    assert "key" not in keys.list_keys(planned, REVIEWER)[0]


def test_rotation_keeps_old_key_for_grace_then_expires(planned: ServiceContext, clock: FrozenClock) -> None:
    d = admitted_deployer(planned, "bluebank", "trusted-partner", ["customer-support"])
    k = keys.issue(planned, REVIEWER, deployer=d["id"], model=MODEL, use_case="customer-support")
    rotated = keys.rotate(planned, REVIEWER, k["id"], grace=timedelta(hours=2))
    assert rotated["key"] != k["key"] and rotated["rotated_from"] == k["id"]
    states = {x["id"]: x["state"] for x in keys.list_keys(planned, REVIEWER)}
    assert states == {k["id"]: "active", rotated["id"]: "active"}
    clock.advance(hours=3)
    states = {x["id"]: x["state"] for x in keys.list_keys(planned, REVIEWER)}
    assert states == {k["id"]: "expired", rotated["id"]: "active"}
    with pytest.raises(Refused):
        keys.rotate(planned, REVIEWER, k["id"])


def test_deployer_cannot_touch_another_deployers_keys(planned: ServiceContext) -> None:
    a = admitted_deployer(planned, "bluebank", "trusted-partner", ["customer-support"])
    b = admitted_deployer(planned, "shopco", "public", ["customer-support"])
    kb = keys.issue(planned, REVIEWER, deployer=b["id"], model=MODEL, use_case="customer-support")
    actor_a = Actor(name="a", role="deployer", deployer_id=a["id"])
    with pytest.raises(NotFound):
        keys.revoke(planned, actor_a, kb["id"])
    with pytest.raises(NotFound):
        keys.issue(planned, actor_a, deployer=b["id"], model=MODEL, use_case="customer-support")
    assert keys.list_keys(planned, actor_a) == []
    with pytest.raises(NotFound):
        deployers.show(planned, actor_a, b["id"])


def test_suspended_deployer_gets_no_keys_and_tokens_stop(planned: ServiceContext) -> None:
    d = admitted_deployer(planned, "bluebank", "trusted-partner", ["customer-support"])
    tok = principals.create(planned, Actor(name="admin", role="admin"), name="bluebank-bot", role="deployer", deployer=d["id"])
    with planned.db.read() as s:
        assert principals.authenticate(s, tok["token"]).deployer_id == d["id"]
    deployers.set_status(planned, REVIEWER, d["id"], "suspended", reason="scope violations")
    with pytest.raises(Refused):
        keys.issue(planned, REVIEWER, deployer=d["id"], model=MODEL, use_case="customer-support")
    with planned.db.read() as s, pytest.raises(Unauthenticated):
        principals.authenticate(s, tok["token"])


def test_bad_tokens_are_refused_alike(ctx: ServiceContext) -> None:
    boot = principals.bootstrap_admin(ctx)
    assert boot is not None and principals.bootstrap_admin(ctx) is None
    forged = credentials.generate("rgt").value
    with ctx.db.read() as s:
        token = boot["token"]
        altered = token[:-1] + ("x" if token[-1] != "x" else "y")  # one character off
        for bad in ("", "nope", forged, altered):
            with pytest.raises(Unauthenticated) as err:
                principals.authenticate(s, bad)
            assert err.value.code == "invalid_token"
