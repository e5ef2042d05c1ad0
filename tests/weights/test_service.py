"""Registration, terms versions, access requests and vetting, grants: the services without HTTP."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from releasegate.clock import FrozenClock
from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.plan.loader import load_plan_file
from releasegate.services import audit, plans
from releasegate.services.context import Actor
from releasegate.weights import access, gating, registry, terms
from support import admitted_deployer
from weights_world import GOOD_FIELDS, MODEL, REVIEWER, RM, World


def test_register_is_content_addressed_and_immutable(world: World) -> None:
    again = registry.register(world.ctx, RM, MODEL, "v1")
    assert again["changed"] is False and again["commit"] == world.commit
    assert len(world.commit) == 40 and int(world.commit, 16) >= 0
    (world.plan_dir / "artifacts" / "v1" / "config.json").write_text("{}")
    with pytest.raises(Refused) as err:
        registry.register(world.ctx, RM, MODEL, "v1")
    assert err.value.code == "weights_already_registered"
    rows = registry.list_registered(world.ctx, RM, MODEL)
    assert [r["version"] for r in rows] == ["v1"] and rows[0]["files"] == 3


def test_form_fields_are_validated(world: World) -> None:
    _, actor = world.licensee("val", "val@uni.edu")
    bad = {"organisation": " ", "country": "Germany", "intended_use": "warfare", "start_date": "2026-13-01",
           "agree_no_redistribution": "false", "shoe_size": "44"}
    with pytest.raises(InvalidInput) as err:
        access.submit(world.ctx, actor, MODEL, fields=bad, declared_use="")
    problems = {p["field"]: p["message"] for p in err.value.details["problems"]}
    assert err.value.code == "invalid_request_form"
    assert problems["organisation"] == "is required"
    assert "ISO 3166-1 alpha-2" in problems["country"]
    assert problems["intended_use"] == "must be one of: research, commercial"
    assert problems["start_date"] == "must be a date written YYYY-MM-DD" or "calendar" in problems["start_date"]
    assert problems["agree_no_redistribution"] == "must be ticked (true)"
    assert "not a field of this form" in problems["shoe_size"]
    assert "declared_use" in problems
    ok = access.submit(world.ctx, actor, MODEL, fields={**GOOD_FIELDS, "country": "de", "start_date": "2026-02-28"},
                       declared_use="alignment research")
    assert ok["fields"]["country"] == "DE" and ok["fields"]["agree_no_redistribution"] is True


@pytest.mark.parametrize(("email", "country", "expected"), [
    ("a@cs.mit.edu", "US", "approved"),         # ".edu" is a suffix rule
    ("a@partner.example", "DE", "approved"),    # a listed domain
    ("a@lab.partner.example", "DE", "approved"),  # and its subdomains
    ("a@notpartner.example", "DE", "pending"),  # not a suffix match of another name
    ("a@mit.edu", "KP", "pending"),             # blocked country: a reviewer decides
    ("a@gmail.com", "US", "pending"),
])
def test_vetting_rules(world: World, email: str, country: str, expected: str) -> None:
    _, actor = world.licensee(email, email)
    r = access.submit(world.ctx, actor, MODEL, fields={**GOOD_FIELDS, "country": country}, declared_use="research")
    assert r["status"] == expected, r["vetting"]
    if expected == "approved":
        assert r["decided_by"] == "vetting:auto" and r["expires_at"].startswith("2026-01-31")
    else:
        assert any(not c["passed"] for c in r["vetting"]["checks"])


def test_admitted_deployer_organisation_is_auto_approved(world: World, plan_dir: Path, admin: Actor) -> None:
    text = (plan_dir / "plan.yaml").read_text().replace(
        'auto_approve: {email_domains: [".edu", "partner.example"], countries_not: [XX, KP]}',
        "auto_approve: {admitted_tiers: [partner]}")
    (plan_dir / "plan.yaml").write_text(text)
    plans.apply(world.ctx, admin, load_plan_file(plan_dir / "plan.yaml"))
    admitted_deployer(world.ctx, "globex", "partner", ["chat"])
    _, member = world.licensee("gx", "someone@gmail.com")
    r = access.submit(world.ctx, member, MODEL, fields={**GOOD_FIELDS, "organisation": "globex"}, declared_use="x")
    assert r["status"] == "approved"
    _, other = world.licensee("ot", "other@gmail.com")
    assert access.submit(world.ctx, other, MODEL, fields=GOOD_FIELDS, declared_use="x")["status"] == "pending"


def test_review_queue_expiry_and_revocation(world: World, clock: FrozenClock) -> None:
    _, actor = world.licensee("q", "q@gmail.com")
    r = access.submit(world.ctx, actor, MODEL, fields=GOOD_FIELDS, declared_use="x")
    assert [x["id"] for x in access.list_requests(world.ctx, REVIEWER, status="pending")] == [r["id"]]
    with pytest.raises(Refused) as err:
        access.submit(world.ctx, actor, MODEL, fields=GOOD_FIELDS, declared_use="x")
    assert err.value.code == "request_pending"
    with pytest.raises(InvalidInput):
        access.reject(world.ctx, REVIEWER, r["id"], reason=" ")
    with pytest.raises(NotFound):  # a licensee cannot see or decide other requests
        access.show(world.ctx, world.licensee("z", "z@gmail.com")[1], r["id"])
    granted = access.approve(world.ctx, REVIEWER, r["id"])
    assert granted["status"] == "approved"
    terms.accept(world.ctx, actor, MODEL)
    with world.ctx.db.read() as session:
        gating.authorize_download(session, actor, MODEL, "main", "config.json", now=clock.now(), public_url="http://x")
    clock.advance(timedelta(days=31))
    assert access.show(world.ctx, actor, r["id"])["status"] == "expired"
    with world.ctx.db.read() as session, pytest.raises(gating.HubRefusal) as refused:
        gating.authorize_download(session, actor, MODEL, "main", "config.json", now=clock.now(), public_url="http://x")
    assert refused.value.code == "access_expired"
    with pytest.raises(Refused):
        access.revoke(world.ctx, REVIEWER, r["id"], reason="too late")
    again = access.submit(world.ctx, actor, MODEL, fields=GOOD_FIELDS, declared_use="x")
    assert again["status"] == "pending"
    access.approve(world.ctx, REVIEWER, again["id"])
    access.revoke(world.ctx, REVIEWER, again["id"], reason="shared the weights")
    third = access.submit(world.ctx, actor, MODEL, fields=GOOD_FIELDS, declared_use="x")
    assert third["status"] == "pending"
    actions = [e["action"] for e in audit.list_entries(world.ctx, Actor(name="a", role="admin"), limit=200)]
    assert {"weights.request", "weights.grant", "weights.revoke"} <= set(actions)


def test_revoked_history_sends_even_allowlisted_domains_to_review(world: World) -> None:
    _, actor = world.licensee("h", "h@uni.edu")
    r = access.submit(world.ctx, actor, MODEL, fields=GOOD_FIELDS, declared_use="x")
    access.revoke(world.ctx, REVIEWER, r["id"], reason="broke the terms")
    again = access.submit(world.ctx, actor, MODEL, fields=GOOD_FIELDS, declared_use="x")
    assert again["status"] == "pending" and "revoked" in again["vetting"]["checks"][0]["detail"]


def test_terms_versions_and_stale_acceptance(world: World) -> None:
    _, actor = world.licensee("t", "t@uni.edu")
    shown = terms.show(world.ctx, actor, MODEL)
    assert shown["version"] == 1 and shown["accepted"] is False
    assert shown["summary"] == "Research and commercial use; no redistribution of the weights."
    assert terms.publish(world.ctx, RM, MODEL)[0]["changed"] is False  # same content: no new version
    terms.publish(world.ctx, RM, MODEL, texts={"atlas-license": "# v2\n\nStricter.\n"})
    with pytest.raises(Refused) as err:
        terms.accept(world.ctx, actor, MODEL, version=1)
    assert err.value.code == "terms_outdated" and err.value.details["current_version"] == 2
    acc = terms.accept(world.ctx, actor, MODEL, version=2, ip="203.0.113.9")
    assert acc["version"] == 2 and acc["ip"] == "203.0.113.9"
    assert terms.show(world.ctx, actor, MODEL)["accepted"] is True


def test_unknown_model_is_not_found_for_licensees(world: World) -> None:
    _, actor = world.licensee("u", "u@uni.edu")
    with pytest.raises(NotFound):
        access.submit(world.ctx, actor, "acme/secret", fields=GOOD_FIELDS, declared_use="x")
    with pytest.raises(Refused) as err:
        access.submit(world.ctx, Actor(name="ops", role="admin"), MODEL, fields=GOOD_FIELDS, declared_use="x")
    assert err.value.code == "licensee_required"
