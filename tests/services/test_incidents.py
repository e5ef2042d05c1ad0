"""Incidents: who may report what, the lifecycle, and who sees which."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from releasegate.errors import Forbidden, InvalidInput, NotFound, Refused
from releasegate.services import audit, incidents, rollouts
from releasegate.services.context import Actor, ServiceContext


def deployer_actor(deployer_id: str) -> Actor:
    return Actor(name=f"ops@{deployer_id}", role="deployer", deployer_id=deployer_id)


def test_deployer_reports_only_for_itself_and_sees_only_its_own(
        ctx: ServiceContext, admin: Actor, atlas: str, admit: Callable[[str, str], str]) -> None:
    a, b = admit("alpha", "internal"), admit("bravo", "internal")
    rollouts.transition(ctx, admin, atlas, "v1", "promote", reason="internal dogfood")
    mine = incidents.report(ctx, deployer_actor(a), atlas, "v1", severity="high", title="jailbreak in support bot")
    assert mine["deployer_id"] == a and mine["source"] == "deployer" and mine["stage"] == "internal"
    with pytest.raises(NotFound):
        incidents.report(ctx, deployer_actor(a), atlas, "v1", severity="low", title="x", deployer=b)
    with pytest.raises(Forbidden):
        incidents.report(ctx, deployer_actor(a), atlas, "v1", severity="low", title="x", source="detector")
    staff = incidents.report(ctx, admin, atlas, "v1", severity="critical", title="weights leak", deployer=b)
    assert staff["source"] == "staff" and staff["deployer_id"] == b
    assert [i["id"] for i in incidents.list_incidents(ctx, deployer_actor(a), atlas)] == [mine["id"]]
    assert [i["id"] for i in incidents.list_incidents(ctx, deployer_actor(b), atlas)] == [staff["id"]]
    assert len(incidents.list_incidents(ctx, admin, atlas)) == 2
    assert audit.list_entries(ctx, admin, target=f"incident:{mine['id']}")[0]["action"] == "incident.report"


def test_detector_source_needs_release_manager(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    reviewer = Actor(name="rev", role="reviewer")
    with pytest.raises(Forbidden):
        incidents.report(ctx, reviewer, atlas, "v1", severity="low", title="x", source="detector")
    bot = Actor(name="detector:moderation", role="release_manager")
    assert incidents.report(ctx, bot, atlas, "v1", severity="medium", title="flag spike", source="detector")["source"] == "detector"


def test_lifecycle(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    inc = incidents.report(ctx, admin, atlas, "v1", severity="high", title="prompt leak")
    with pytest.raises(Refused) as exc:
        incidents.transition(ctx, admin, inc["id"], "mitigated", reason="skip")
    assert exc.value.code == "illegal_incident_transition"
    with pytest.raises(InvalidInput):
        incidents.transition(ctx, admin, inc["id"], "triaged", reason=" ")
    t = incidents.transition(ctx, admin, inc["id"], "triaged", reason="confirmed", severity="critical")
    assert t["status"] == "triaged" and t["severity"] == "critical" and t["triaged_at"]
    incidents.transition(ctx, admin, inc["id"], "mitigated", reason="filter deployed")
    c = incidents.transition(ctx, admin, inc["id"], "closed", reason="verified")
    assert c["closed_at"] and c["status"] == "closed"
    assert incidents.transition(ctx, admin, inc["id"], "open", reason="recurred")["status"] == "open"
    actions = [e["action"] for e in audit.list_entries(ctx, admin, target=f"incident:{inc['id']}")]
    assert actions == ["incident.open", "incident.closed", "incident.mitigated", "incident.triaged", "incident.report"]
    with pytest.raises(Forbidden):
        incidents.transition(ctx, Actor("d", "deployer", deployer_id="x"), inc["id"], "triaged", reason="me")


def test_bad_input(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    with pytest.raises(InvalidInput):
        incidents.report(ctx, admin, atlas, "v1", severity="apocalyptic", title="x")
    with pytest.raises(InvalidInput):
        incidents.report(ctx, admin, atlas, "v1", severity="low", title="  ")
    with pytest.raises(NotFound):
        incidents.report(ctx, admin, atlas, "v7", severity="low", title="x")
    with pytest.raises(NotFound):
        incidents.transition(ctx, admin, "inc_nope", "triaged", reason="x")
