"""Outgoing webhooks: subscribe endpoints to events, queue events with the change, deliver them signed.

- ``enqueue`` runs INSIDE the transaction that makes the change (outbox pattern): an event is
  queued if and only if its change commits.
- ``deliver_due`` sends what is due: ``POST`` of the JSON envelope, signed with HMAC-SHA256 over
  ``"<timestamp>.<body>"``. 2xx is delivered; timeouts, connection errors, 408, 429 and 5xx are
  retried with backoff (``BACKOFF``) up to ``MAX_ATTEMPTS``; any other status fails at once.
- Delivery is at least once: a receiver deduplicates on ``X-Releasegate-Delivery``.
- ``verify_signature`` is what a receiver runs (documented in docs/webhooks.md).

Signing secrets are stored encrypted with a key derived from the server secret (they must stay
usable for signing, so they cannot be hashed) and are shown once, at creation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.orm import Session

from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.services import audit
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.ids import new_id
from releasegate.store.webhooks import Webhook, WebhookDelivery

log = logging.getLogger(__name__)

#: Every event releasegate announces, with what it means.
EVENTS: dict[str, str] = {
    "application.submitted": "a deployer filed an application to use a model",
    "gate.ready": "the controller found a version ready for approval or promotion into its next stage",
    "incident.opened": "an incident was reported against a model version",
    "rollout.promote": "a version entered its next stage",
    "rollout.pause": "a version was paused",
    "rollout.resume": "a paused or halted version was resumed",
    "rollout.halt": "a version was halted: every request and download for it is refused",
    "rollout.rollback": "a version was rolled back to its previous stage",
    "rollout.decommission": "a version was decommissioned",
}
ALL_EVENTS = "*"
#: Seconds to wait before attempt n+1 after n failed attempts (n = 1..5); then give up.
BACKOFF: tuple[int, ...] = (10, 60, 300, 1800, 7200)
MAX_ATTEMPTS = len(BACKOFF) + 1
DEFAULT_TIMEOUT = 5.0
RETRYABLE_STATUS = frozenset({408, 429})
SIGNATURE_PREFIX = "sha256="
_ERROR_MAX = 500


# ---------------------------------------------------------------------------- signing


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Releasegate-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of ``timestamp.body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + mac


def verify_signature(secret: str | bytes, timestamp: str, body: bytes, header: str, *, tolerance: int = 300,
                     now: float | None = None) -> bool:
    """True if ``header`` signs exactly ``body`` at ``timestamp`` with ``secret``, and the timestamp is
    within ``tolerance`` seconds of ``now`` (default: the current time), which defeats replays."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), (header or "").strip())


def _fernet(ctx: ServiceContext) -> Fernet:
    key = hashlib.sha256(b"releasegate webhook secrets\0" + ctx.settings.server_secret()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def _reveal(ctx: ServiceContext, w: Webhook) -> str | None:
    try:
        return _fernet(ctx).decrypt(w.secret_enc.encode()).decode()
    except InvalidToken:
        return None


# ---------------------------------------------------------------------------- subscriptions


def normalise_event(name: str) -> str:
    """The catalog name of ``name``; short forms are accepted (``halt``, ``gate-ready``, ``incident_opened``)."""
    n = name.strip().lower()
    if n == ALL_EVENTS or n in EVENTS:
        return n
    for candidate in (n.replace("-", ".").replace("_", "."), f"rollout.{n}"):
        if candidate in EVENTS:
            return candidate
    raise InvalidInput(f"unknown webhook event {name!r}; events: {', '.join(EVENTS)} (or * for all)",
                       code="unknown_event", details={"events": list(EVENTS)})


def _check_url(url: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"webhook URL {url!r} must be an absolute http:// or https:// URL", code="invalid_url")
    if parts.username or parts.password:
        raise InvalidInput("put no credentials in the webhook URL: receivers authenticate releasegate by its signature",
                           code="invalid_url")
    return url


def webhook_dict(w: Webhook) -> dict[str, Any]:
    """A webhook as shown to people: never its secret."""
    return {"id": w.id, "url": w.url, "events": list(w.events), "description": w.description, "active": w.active,
            "created_by": w.created_by, "created_at": w.created_at.isoformat(),
            "removed_at": w.removed_at.isoformat() if w.removed_at else None}


def delivery_dict(d: WebhookDelivery) -> dict[str, Any]:
    def iso(v: datetime | None) -> str | None:
        return v.isoformat() if v else None

    return {"id": d.id, "webhook_id": d.webhook_id, "event": d.event, "event_id": d.event_id, "status": d.status,
            "attempts": d.attempts, "next_attempt_at": iso(d.next_attempt_at), "last_attempt_at": iso(d.last_attempt_at),
            "last_status_code": d.last_status_code, "last_error": d.last_error, "created_at": iso(d.created_at),
            "delivered_at": iso(d.delivered_at), "payload": d.payload}


def subscribe(ctx: ServiceContext, actor: Actor, url: str, events: list[str], secret: str | None = None, *,
              description: str = "") -> dict[str, Any]:
    """Subscribe ``url`` to ``events``; audited. The result holds the signing secret: the only time it is shown."""
    actor.require("release_manager", action="add webhooks")
    clean_url = _check_url(url)
    if not events:
        raise InvalidInput(f"name at least one event; events: {', '.join(EVENTS)} (or * for all)", code="events_required")
    wanted = sorted({normalise_event(e) for e in events})
    if secret is not None and len(secret) < 16:
        raise InvalidInput("a webhook secret must be at least 16 characters; omit it to have one generated",
                           code="weak_secret")
    secret = secret or "whsec_" + secrets.token_urlsafe(32)
    now = ctx.clock.now()
    with ctx.write() as session:
        w = Webhook(id=new_id("whk"), url=clean_url, secret_enc=_fernet(ctx).encrypt(secret.encode()).decode(),
                    events=wanted, description=description, active=True, created_by=actor.name, created_at=now)
        session.add(w)
        session.flush()
        audit.record(session, at=now, actor=actor, action="webhook.add", target=f"webhook:{w.id}",
                     changes={"url": clean_url, "events": wanted})
        return {**webhook_dict(w), "secret": secret}


def list_webhooks(ctx: ServiceContext, actor: Actor, *, include_removed: bool = False) -> list[dict[str, Any]]:
    actor.require("release_manager", "auditor", action="read webhooks")
    with ctx.db.read() as session:
        q = select(Webhook).order_by(Webhook.created_at, Webhook.id)
        if not include_removed:
            q = q.where(Webhook.active.is_(True))
        return [webhook_dict(w) for w in session.scalars(q)]


def unsubscribe(ctx: ServiceContext, actor: Actor, webhook_id: str, *, reason: str | None = None) -> dict[str, Any]:
    """Deactivate a webhook (its delivery log is kept); its pending deliveries fail. Audited."""
    actor.require("release_manager", action="remove webhooks")
    now = ctx.clock.now()
    with ctx.write() as session:
        w = session.get(Webhook, webhook_id, with_for_update=True)
        if w is None:
            raise NotFound(f"no webhook {webhook_id!r}", code="webhook_not_found")
        if not w.active:
            raise Refused(f"webhook {webhook_id} was already removed at {w.removed_at.isoformat() if w.removed_at else '?'}",
                          code="webhook_removed")
        w.active, w.removed_at = False, now
        dropped = 0
        for d in session.scalars(select(WebhookDelivery).where(WebhookDelivery.webhook_id == w.id,
                                                               WebhookDelivery.status == "pending")):
            d.status, d.next_attempt_at, d.last_error = "failed", None, "webhook removed before delivery"
            dropped += 1
        audit.record(session, at=now, actor=actor, action="webhook.remove", target=f"webhook:{w.id}", reason=reason,
                     changes={"url": w.url, "pending_dropped": dropped})
        return webhook_dict(w)


def deliveries(ctx: ServiceContext, actor: Actor, *, webhook_id: str | None = None, status: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
    """The delivery log, newest first."""
    actor.require("release_manager", "auditor", action="read webhook deliveries")
    if status is not None and status not in ("pending", "delivered", "failed"):
        raise InvalidInput(f"status must be pending, delivered or failed, not {status!r}", code="invalid_status")
    with ctx.db.read() as session:
        q = select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(max(1, min(limit, 1000)))
        if webhook_id is not None:
            q = q.where(WebhookDelivery.webhook_id == webhook_id)
        if status is not None:
            q = q.where(WebhookDelivery.status == status)
        return [delivery_dict(d) for d in session.scalars(q)]


# ---------------------------------------------------------------------------- the outbox


def enqueue(session: Session, event: str, payload: dict[str, Any], now: datetime) -> int:
    """Queue ``event`` for every active webhook subscribed to it, in the caller's transaction.

    Returns how many deliveries were queued. ``event`` must be in ``EVENTS`` (a typo is a bug).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    hooks = [w for w in session.scalars(select(Webhook).where(Webhook.active.is_(True)).order_by(Webhook.id))
             if event in w.events or ALL_EVENTS in w.events]
    if not hooks:
        return 0
    event_id = new_id("evt")
    # Round-trip through JSON so the stored envelope is exactly what will be sent.
    envelope = orjson.loads(orjson.dumps(
        {"id": event_id, "event": event, "occurred_at": now.isoformat(), "data": payload}, default=str))
    for w in hooks:
        session.add(WebhookDelivery(id=new_id("whd"), webhook_id=w.id, event=event, event_id=event_id, payload=envelope,
                                    status="pending", attempts=0, next_attempt_at=now, created_at=now))
    session.flush()
    return len(hooks)


@dataclass(frozen=True)
class _Job:
    delivery_id: str
    event: str
    url: str
    secret: str
    body: bytes


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    retry: bool
    status_code: int | None
    error: str | None


def _claim(ctx: ServiceContext, now: datetime, limit: int, lease: timedelta) -> list[_Job]:
    """Take up to ``limit`` due deliveries and lease them, so a concurrent sender skips them."""
    jobs: list[_Job] = []
    with ctx.db.read() as session:  # most polls find nothing: do not take the write lock for them
        if session.scalar(select(WebhookDelivery.id).where(
                WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now).limit(1)) is None:
            return jobs
    with ctx.db.transaction() as session:
        due = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for d in due:
            w = session.get(Webhook, d.webhook_id)
            secret = _reveal(ctx, w) if w is not None and w.active else None
            if w is None or not w.active or secret is None:
                d.status, d.next_attempt_at = "failed", None
                d.last_error = ("webhook removed before delivery" if w is None or not w.active
                                else "the signing secret cannot be decrypted: was the server secret changed?")
                continue
            d.next_attempt_at = now + lease
            jobs.append(_Job(d.id, d.event, w.url, secret, orjson.dumps(d.payload)))
    return jobs


def _send(client: httpx.Client, job: _Job, now: datetime, timeout: float) -> _Outcome:
    timestamp = str(int(now.timestamp()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "releasegate-webhooks/1",
        "X-Releasegate-Event": job.event,
        "X-Releasegate-Delivery": job.delivery_id,
        "X-Releasegate-Timestamp": timestamp,
        "X-Releasegate-Signature": sign(job.secret, timestamp, job.body),
    }
    try:
        resp = client.post(job.url, content=job.body, headers=headers, timeout=timeout, follow_redirects=False)
    except httpx.TimeoutException:
        return _Outcome(False, True, None, f"timed out after {timeout:g}s")
    except httpx.TransportError as exc:
        return _Outcome(False, True, None, f"{type(exc).__name__}: {exc}"[:_ERROR_MAX])
    code = resp.status_code
    if 200 <= code < 300:
        return _Outcome(True, False, code, None)
    retry = code >= 500 or code in RETRYABLE_STATUS
    snippet = resp.text[:200].strip()
    why = f"HTTP {code}" + (f": {snippet}" if snippet else "")
    if 300 <= code < 400:
        why += " (redirects are not followed; register the final URL)"
    return _Outcome(False, retry, code, why[:_ERROR_MAX])


def _record(ctx: ServiceContext, job: _Job, outcome: _Outcome, now: datetime) -> None:
    with ctx.db.transaction() as session:
        d = session.get(WebhookDelivery, job.delivery_id, with_for_update=True)
        if d is None:
            return
        d.attempts += 1
        d.last_attempt_at, d.last_status_code, d.last_error = now, outcome.status_code, outcome.error
        if outcome.ok:
            d.status, d.delivered_at, d.next_attempt_at = "delivered", now, None
        elif outcome.retry and d.attempts < MAX_ATTEMPTS:
            d.next_attempt_at = now + timedelta(seconds=BACKOFF[d.attempts - 1])
        else:
            d.status, d.next_attempt_at = "failed", None
            if outcome.retry:
                d.last_error = f"gave up after {d.attempts} attempts; last: {outcome.error}"[:_ERROR_MAX]


def deliver_due(ctx: ServiceContext, *, client: httpx.Client, now: datetime | None = None, limit: int = 50,
                timeout: float = DEFAULT_TIMEOUT) -> int:
    """Send every delivery due at ``now`` (at most ``limit``), record each attempt; returns the attempts made.

    Safe to run from several processes: a claimed delivery is leased until its attempt is recorded.
    """
    now = now or ctx.clock.now()
    jobs = _claim(ctx, now, limit, lease=timedelta(seconds=timeout + 60))
    for job in jobs:
        _record(ctx, job, _send(client, job, now, timeout), now)
    return len(jobs)


async def run_delivery_loop(ctx: ServiceContext, interval: float = 5.0, *, stop: asyncio.Event | None = None,
                            timeout: float = DEFAULT_TIMEOUT,
                            client_factory: Callable[[], httpx.Client] | None = None) -> None:
    """Deliver due webhooks every ``interval`` seconds until ``stop`` is set; one failing pass does not stop it."""
    stop = stop or asyncio.Event()
    with (client_factory or (lambda: httpx.Client(timeout=timeout)))() as client:
        while not stop.is_set():
            try:
                await asyncio.to_thread(deliver_due, ctx, client=client, timeout=timeout)
            except Exception:  # keep the loop alive; the next pass retries
                log.exception("webhook delivery pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


@asynccontextmanager
async def delivering(ctx: ServiceContext, interval: float = 5.0, *, timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[None]:
    """Run the delivery loop in the background while inside: ``async with delivering(ctx): ...`` (a server's lifespan)."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_delivery_loop(ctx, interval, stop=stop, timeout=timeout))
    try:
        yield
    finally:
        stop.set()
        await task
