"""Outgoing webhooks against a real HTTP receiver on loopback: signatures, retries, timeouts, the log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from releasegate.clock import FrozenClock
from releasegate.controller.loop import reconcile
from releasegate.errors import Forbidden, InvalidInput, Refused
from releasegate.services import applications, deployers, incidents, rollouts, webhooks
from releasegate.services.context import Actor, ServiceContext
from releasegate.store.webhooks import Webhook
from releasegate.testing.server import run_in_thread
from support import MODEL, apply_text

PLAN = """
model: acme/atlas-8b
versions: {v1: {}}
use_cases: {chat: {description: Chat with customers.}}
tiers: {internal: {}, public: {}}
stages:
  - {name: internal, audience: {tiers: [internal]}}
  - {name: public, audience: {everyone: true}, gate: [{time_in_stage: {min: 7d}}]}
"""
RM = Actor(name="rm@acme.example", role="release_manager")


@dataclass
class Receiver:
    """A webhook endpoint that records what it got and answers as told (``mode``)."""

    url: str = ""
    mode: str = "ok"  # ok | 500 | 400 | 429 | hang
    got: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            self.got.append({"headers": dict(request.headers), "body": body})
            if self.mode == "hang":
                await asyncio.sleep(1.5)
            if self.mode in ("500", "400", "429"):
                return JSONResponse({"error": f"told to answer {self.mode}"}, status_code=int(self.mode))
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    with run_in_thread(r.app(), shutdown_timeout=0.5) as base_url:
        r.url = base_url + "/hook"
        yield r


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def _halted(ctx: ServiceContext, admin: Actor) -> None:
    apply_text(ctx, admin, PLAN)
    rollouts.transition(ctx, RM, MODEL, "v1", "promote", reason="start internal")
    rollouts.transition(ctx, RM, MODEL, "v1", "halt", reason="jailbreak <reported> by partner")


def _log(ctx: ServiceContext, admin: Actor) -> list[dict[str, Any]]:
    return webhooks.deliveries(ctx, admin)


def test_halt_is_delivered_signed_once(ctx: ServiceContext, admin: Actor, clock: FrozenClock, receiver: Receiver,
                                       http: httpx.Client) -> None:
    sub = webhooks.subscribe(ctx, RM, receiver.url, ["halt", "rollback"])
    secret = sub["secret"]
    assert secret.startswith("whsec_") and sub["events"] == ["rollout.halt", "rollout.rollback"]
    _halted(ctx, admin)
    assert webhooks.deliver_due(ctx, client=http) == 1  # the promote was not subscribed to
    assert webhooks.deliver_due(ctx, client=http) == 0  # delivered once, not again

    [req] = receiver.got
    h, body = req["headers"], req["body"]
    assert h["x-releasegate-event"] == "rollout.halt"
    assert h["x-releasegate-delivery"].startswith("whd_")
    assert h["x-releasegate-timestamp"] == str(int(clock.now().timestamp()))
    now = clock.now().timestamp()
    assert webhooks.verify_signature(secret, h["x-releasegate-timestamp"], body, h["x-releasegate-signature"], now=now)
    assert not webhooks.verify_signature(secret, h["x-releasegate-timestamp"], body.replace(b"v1", b"v2"),
                                         h["x-releasegate-signature"], now=now)
    assert not webhooks.verify_signature("whsec_another-secret-entirely", h["x-releasegate-timestamp"], body,
                                         h["x-releasegate-signature"], now=now)
    assert not webhooks.verify_signature(secret, h["x-releasegate-timestamp"], body, h["x-releasegate-signature"],
                                         now=now + 301)  # a replay after the tolerance
    event = orjson.loads(body)
    assert event["event"] == "rollout.halt" and event["id"].startswith("evt_")
    assert event["data"]["reason"] == "jailbreak <reported> by partner"
    assert event["data"]["to"] == {"state": "halted", "stage": "internal"} and event["data"]["actor"] == RM.name

    [d] = _log(ctx, admin)
    assert (d["status"], d["attempts"], d["last_status_code"], d["id"]) == ("delivered", 1, 200, h["x-releasegate-delivery"])
    assert d["delivered_at"] == clock.now().isoformat()


def test_failures_are_retried_with_backoff_then_given_up(ctx: ServiceContext, admin: Actor, clock: FrozenClock,
                                                         receiver: Receiver, http: httpx.Client) -> None:
    webhooks.subscribe(ctx, RM, receiver.url, ["rollout.halt"])
    _halted(ctx, admin)
    receiver.mode = "500"
    t0 = clock.now()
    at = t0
    for attempt, wait in enumerate(webhooks.BACKOFF, start=1):
        assert webhooks.deliver_due(ctx, client=http, now=at) == 1
        [d] = _log(ctx, admin)
        assert (d["status"], d["attempts"], d["last_status_code"]) == ("pending", attempt, 500)
        assert "HTTP 500" in d["last_error"]
        assert d["next_attempt_at"] == (at + timedelta(seconds=wait)).isoformat()
        # Not due a second before the backoff ends.
        assert webhooks.deliver_due(ctx, client=http, now=at + timedelta(seconds=wait - 1)) == 0
        at += timedelta(seconds=wait)
    assert webhooks.deliver_due(ctx, client=http, now=at) == 1
    [d] = _log(ctx, admin)
    assert (d["status"], d["attempts"], d["next_attempt_at"]) == ("failed", webhooks.MAX_ATTEMPTS, None)
    assert d["last_error"].startswith("gave up after 6 attempts")
    assert len(receiver.got) == 6
    assert len({r["headers"]["x-releasegate-delivery"] for r in receiver.got}) == 1  # one delivery, retried
    assert webhooks.deliver_due(ctx, client=http, now=at + timedelta(days=1)) == 0


def test_a_hanging_receiver_times_out_and_the_retry_succeeds(ctx: ServiceContext, admin: Actor, clock: FrozenClock,
                                                            receiver: Receiver, http: httpx.Client) -> None:
    webhooks.subscribe(ctx, RM, receiver.url, ["*"])
    apply_text(ctx, admin, PLAN)
    d = deployers.create(ctx, admin, name="bluebank", contact_email="ai@bluebank.example")
    applications.submit(ctx, admin, deployer=d["id"], model=MODEL, use_cases=["chat"])
    receiver.mode = "hang"
    t0 = clock.now()
    started = datetime.now().timestamp()
    assert webhooks.deliver_due(ctx, client=http, timeout=0.3) == 1
    assert datetime.now().timestamp() - started < 1.2  # did not wait for the receiver
    [row] = _log(ctx, admin)
    assert (row["event"], row["status"], row["attempts"], row["last_status_code"]) == ("application.submitted", "pending", 1, None)
    assert row["last_error"] == "timed out after 0.3s"
    receiver.mode = "ok"
    assert webhooks.deliver_due(ctx, client=http, now=t0 + timedelta(seconds=9), timeout=0.3) == 0
    assert webhooks.deliver_due(ctx, client=http, now=t0 + timedelta(seconds=10), timeout=0.3) == 1
    [row] = _log(ctx, admin)
    assert (row["status"], row["attempts"], row["last_status_code"], row["last_error"]) == ("delivered", 2, 200, None)
    event = orjson.loads(receiver.got[-1]["body"])
    assert event["data"]["application"]["deployer_id"] == d["id"] and event["data"]["deployer_name"] == "bluebank"


def test_4xx_fails_at_once_but_429_and_dead_endpoints_retry(ctx: ServiceContext, admin: Actor, clock: FrozenClock,
                                                            receiver: Receiver, http: httpx.Client) -> None:
    webhooks.subscribe(ctx, RM, receiver.url, ["halt"])
    webhooks.subscribe(ctx, RM, "http://127.0.0.1:9/nothing-listens-here", ["halt"])
    _halted(ctx, admin)
    receiver.mode = "400"
    assert webhooks.deliver_due(ctx, client=http) == 2
    by_url = {d["webhook_id"]: d for d in _log(ctx, admin)}
    hooks = {w["url"]: w["id"] for w in webhooks.list_webhooks(ctx, admin)}
    bad, dead = by_url[hooks[receiver.url]], by_url[hooks["http://127.0.0.1:9/nothing-listens-here"]]
    assert (bad["status"], bad["attempts"], bad["last_status_code"]) == ("failed", 1, 400)
    assert "told to answer 400" in bad["last_error"]
    assert (dead["status"], dead["attempts"], dead["last_status_code"]) == ("pending", 1, None)
    assert "ConnectError" in dead["last_error"]
    # 429 asks to slow down: retried, not dropped.
    receiver.mode = "429"
    clock.advance(seconds=1)
    rollouts.transition(ctx, RM, MODEL, "v1", "resume", reason="fixed")
    rollouts.transition(ctx, RM, MODEL, "v1", "halt", reason="again")
    assert webhooks.deliver_due(ctx, client=http) == 2  # the new halt to both endpoints; the first retry is not due
    newest = next(d for d in _log(ctx, admin) if d["webhook_id"] == hooks[receiver.url])
    assert (newest["status"], newest["last_status_code"]) == ("pending", 429)


def test_subscriptions_are_checked_audited_and_keep_their_secret(ctx: ServiceContext, admin: Actor,
                                                                 receiver: Receiver, http: httpx.Client) -> None:
    with pytest.raises(InvalidInput) as err:
        webhooks.subscribe(ctx, RM, "ftp://example.org/hook", ["halt"])
    assert err.value.code == "invalid_url"
    with pytest.raises(InvalidInput) as err:
        webhooks.subscribe(ctx, RM, "https://user:pw@example.org/hook", ["halt"])
    assert err.value.code == "invalid_url"
    with pytest.raises(InvalidInput) as err:
        webhooks.subscribe(ctx, RM, receiver.url, ["halted"])
    assert err.value.code == "unknown_event" and "rollout.halt" in err.value.message
    with pytest.raises(InvalidInput):
        webhooks.subscribe(ctx, RM, receiver.url, ["halt"], secret="short")
    with pytest.raises(Forbidden):
        webhooks.subscribe(ctx, Actor(name="aud", role="auditor"), receiver.url, ["halt"])

    chosen = "a-secret-the-receiver-already-has"
    sub = webhooks.subscribe(ctx, RM, receiver.url, ["halt", "incident-opened", "gate-ready", "application_submitted"],
                             secret=chosen)
    assert sub["secret"] == chosen
    assert sub["events"] == ["application.submitted", "gate.ready", "incident.opened", "rollout.halt"]
    listed = webhooks.list_webhooks(ctx, Actor(name="aud", role="auditor"))
    assert listed and all("secret" not in w for w in listed)
    with ctx.db.read() as session:
        stored = session.scalars(select(Webhook.secret_enc)).one()
    assert chosen not in stored  # encrypted at rest

    # Outbox: a refused change queues nothing.
    apply_text(ctx, admin, PLAN)
    with pytest.raises(Refused):
        rollouts.transition(ctx, RM, MODEL, "v1", "halt", reason="not released yet")
    assert _log(ctx, admin) == []
    rollouts.transition(ctx, RM, MODEL, "v1", "promote", reason="start")
    rollouts.transition(ctx, RM, MODEL, "v1", "halt", reason="stop")
    removed = webhooks.unsubscribe(ctx, RM, sub["id"], reason="endpoint retired")
    assert removed["active"] is False and webhooks.list_webhooks(ctx, RM) == []
    [d] = _log(ctx, admin)
    assert (d["status"], d["last_error"]) == ("failed", "webhook removed before delivery")
    assert webhooks.deliver_due(ctx, client=http) == 0 and receiver.got == []
    from releasegate.services import audit

    actions = [e["action"] for e in audit.list_entries(ctx, admin, limit=50)]
    assert "webhook.add" in actions and "webhook.remove" in actions
    assert all(chosen not in str(e) for e in audit.list_entries(ctx, admin, limit=50))


async def test_the_delivery_loop_sends_and_stops(ctx: ServiceContext, admin: Actor, receiver: Receiver) -> None:
    webhooks.subscribe(ctx, RM, receiver.url, ["halt"])
    _halted(ctx, admin)
    async with webhooks.delivering(ctx, interval=0.05):
        for _ in range(200):
            if receiver.got:
                break
            await asyncio.sleep(0.02)
    assert len(receiver.got) == 1 and _log(ctx, admin)[0]["status"] == "delivered"


def test_incidents_and_ready_gates_are_announced(ctx: ServiceContext, admin: Actor, clock: FrozenClock,
                                                 receiver: Receiver, http: httpx.Client) -> None:
    webhooks.subscribe(ctx, RM, receiver.url, ["incident-opened", "gate-ready"])
    apply_text(ctx, admin, PLAN)
    rollouts.transition(ctx, RM, MODEL, "v1", "promote", reason="start internal")
    incidents.report(ctx, admin, MODEL, "v1", severity="high", title="Leaks its system prompt")
    clock.advance(days=7)
    assert [a.kind for a in reconcile(ctx)] == ["ready"]
    assert reconcile(ctx) == []  # announced once
    assert webhooks.deliver_due(ctx, client=http) == 2
    events = sorted((orjson.loads(r["body"]) for r in receiver.got), key=lambda e: e["occurred_at"])
    assert [e["event"] for e in events] == ["incident.opened", "gate.ready"]
    assert events[0]["data"]["incident"]["title"] == "Leaks its system prompt"
    assert (events[1]["data"]["version"], events[1]["data"]["stage"]) == ("v1", "public")
