"""Change fan-out: the control plane says "the store is at revision N", gateway replicas hear it.

Two ``ChangeNotifier`` implementations (contract in ``gateway.types``):

* ``PostgresNotifier``: ``LISTEN``/``NOTIFY`` on the store's own PostgreSQL (psycopg 3 async),
  payload = the revision as decimal text.
* ``RedisNotifier``: Redis pub/sub on the same channel name.

``make_notifier`` picks Redis when configured, else PostgreSQL when the store is PostgreSQL,
else ``None`` (single-node SQLite: the gateway only polls).

How they decline and deny: notifications are a latency optimisation, never the source of
truth (replicas also poll the revision), so nothing here raises into its caller. ``publish``
and ``publish_sync`` log a warning when the broker is unreachable and return. ``listen(cb)``
runs until ``close()`` or cancellation, calling ``await cb(revision)`` for every notification;
a lost connection is logged and re-established with exponential backoff (0.1 s doubling to
5 s); notifications sent while it was down are lost, which the poll covers. A callback that
raises is logged and does not stop the listener. ``subscribed`` is set while listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import redis
import redis.asyncio as aioredis
from psycopg import sql
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from releasegate.gateway.types import ChangeNotifier
from releasegate.services import audit
from releasegate.settings import Settings
from releasegate.store.db import Database

__all__ = ["DEFAULT_CHANNEL", "PostgresNotifier", "RedisNotifier", "change_listener", "make_notifier"]

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "releasegate_changes"
CHANNEL_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MAX_BACKOFF = 5.0
OnChange = Callable[[int], Awaitable[None]]


def _check_channel(channel: str) -> str:
    if not CHANNEL_RE.match(channel):
        raise ValueError(f"channel {channel!r} must be 1-63 lowercase letters, digits or '_', not starting with a digit")
    return channel


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (``postgresql+psycopg://…``) as a libpq URI."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith(("postgresql", "postgres")):
        raise ValueError(f"not a PostgreSQL URL: {scheme}://…")
    return "postgresql://" + rest


async def _deliver(on_change: OnChange, payload: Any) -> None:
    try:
        revision = int(payload.decode() if isinstance(payload, bytes) else payload)
    except (TypeError, ValueError):
        log.warning("change notification with a payload that is not a revision: %r", payload)
        return
    try:
        await on_change(revision)
    except Exception:
        log.exception("change listener failed on revision %d", revision)


class _Listener:
    """The reconnect loop shared by both notifiers."""

    def __init__(self) -> None:
        self.subscribed = asyncio.Event()
        self.reconnects = 0
        self._closing = False

    async def _session(self, on_change: OnChange) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def listen(self, on_change: OnChange) -> None:
        """Deliver notifications to ``on_change`` until ``close()``; reconnect on any loss."""
        backoff = 0.1
        while not self._closing:
            try:
                await self._session(on_change)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change notifications lost (%s: %s); reconnecting in %.1fs, polling meanwhile",
                            type(exc).__name__, exc, backoff)
            finally:
                self.subscribed.clear()
            if self._closing:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            self.reconnects += 1


class PostgresNotifier(_Listener):
    """``LISTEN``/``NOTIFY`` on PostgreSQL; ``dsn`` may be a SQLAlchemy or libpq URL."""

    def __init__(self, dsn: str, channel: str = DEFAULT_CHANNEL, *, connect_timeout: float = 2.0) -> None:
        super().__init__()
        self.channel = _check_channel(channel)
        self._dsn = libpq_dsn(dsn)
        # Keepalives detect a silently dead peer; a closed one is noticed at once.
        self._kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": max(1, round(connect_timeout)),
                                        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
        self._publisher: psycopg.AsyncConnection[Any] | None = None
        self._sync: psycopg.Connection[Any] | None = None
        self._sync_lock = threading.Lock()

    async def _session(self, on_change: OnChange) -> None:
        async with await psycopg.AsyncConnection.connect(self._dsn, **self._kwargs) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self.subscribed.set()
            while not self._closing:
                # A timeout lets close() end the loop without touching the connection from another task.
                async for note in conn.notifies(timeout=1.0):
                    await _deliver(on_change, note.payload)

    async def publish(self, revision: int) -> None:
        """``NOTIFY`` the revision; on failure log and return (the poll covers it)."""
        try:
            if self._publisher is None or self._publisher.closed:
                self._publisher = await psycopg.AsyncConnection.connect(self._dsn, **self._kwargs)
            await self._publisher.execute("SELECT pg_notify(%s, %s)", (self.channel, str(int(revision))))
        except (psycopg.Error, OSError) as exc:
            log.warning("could not publish revision %s on PostgreSQL channel %s: %s", revision, self.channel, exc)
            await self._close_publisher()

    def publish_sync(self, revision: int) -> None:
        """Blocking ``publish`` for the synchronous control plane; never raises."""
        with self._sync_lock:
            for attempt in (1, 2):  # a pooled connection may have died since the last change
                try:
                    if self._sync is None or self._sync.closed:
                        self._sync = psycopg.connect(self._dsn, **self._kwargs)
                    self._sync.execute("SELECT pg_notify(%s, %s)", (self.channel, str(int(revision))))
                    return
                except Exception as exc:
                    if self._sync is not None:
                        with contextlib.suppress(Exception):
                            self._sync.close()
                    self._sync = None
                    if attempt == 2:
                        log.warning("could not publish revision %s on PostgreSQL channel %s: %s", revision, self.channel, exc)

    async def _close_publisher(self) -> None:
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.close()
            self._publisher = None

    async def close(self) -> None:
        """Stop listening (within a second) and close the connections."""
        self._closing = True
        await self._close_publisher()
        with self._sync_lock:
            if self._sync is not None:
                with contextlib.suppress(Exception):
                    self._sync.close()
                self._sync = None


class RedisNotifier(_Listener):
    """Redis pub/sub. Publishing needs no subscription; every replica subscribes."""

    def __init__(self, url: str, channel: str = DEFAULT_CHANNEL, *, socket_timeout: float = 1.0) -> None:
        super().__init__()
        self.channel = _check_channel(channel)
        self._url = url
        self._socket_timeout = socket_timeout
        options: dict[str, Any] = {"socket_connect_timeout": socket_timeout, "retry": Retry(NoBackoff(), 0)}
        self._publisher = aioredis.Redis.from_url(url, socket_timeout=socket_timeout, **options)
        # The subscriber waits indefinitely between messages; pings find a dead peer.
        self._subscriber = aioredis.Redis.from_url(url, health_check_interval=15, client_name=f"releasegate-notify-{channel}", **options)
        self._sync: redis.Redis | None = None
        self._sync_lock = threading.Lock()

    async def _session(self, on_change: OnChange) -> None:
        pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self.subscribed.set()
            while not self._closing:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    await _deliver(on_change, message["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def publish(self, revision: int) -> None:
        """``PUBLISH`` the revision; on failure log and return (the poll covers it)."""
        try:
            await self._publisher.publish(self.channel, str(int(revision)))
        except (RedisError, OSError) as exc:
            log.warning("could not publish revision %s on Redis channel %s: %s", revision, self.channel, exc)

    def publish_sync(self, revision: int) -> None:
        """Blocking ``publish`` for the synchronous control plane; never raises."""
        try:
            with self._sync_lock:
                if self._sync is None:
                    self._sync = redis.Redis.from_url(self._url, socket_timeout=self._socket_timeout,
                                                      socket_connect_timeout=self._socket_timeout)
                client = self._sync
            client.publish(self.channel, str(int(revision)))
        except Exception as exc:
            log.warning("could not publish revision %s on Redis channel %s: %s", revision, self.channel, exc)

    async def close(self) -> None:
        """Stop listening (within a second) and close the connections."""
        self._closing = True
        await self._publisher.aclose()
        await self._subscriber.aclose()
        with self._sync_lock:
            if self._sync is not None:
                self._sync.close()
                self._sync = None


def make_notifier(settings: Settings, db_url: str, *, channel: str = DEFAULT_CHANNEL) -> ChangeNotifier | None:
    """Redis if ``settings.redis_url``, else PostgreSQL if the store is PostgreSQL, else None (poll only)."""
    if settings.redis_url:
        return RedisNotifier(settings.redis_url, channel)
    if db_url.startswith(("postgresql", "postgres")):
        return PostgresNotifier(db_url, channel)
    return None


def change_listener(notifier: PostgresNotifier | RedisNotifier, db: Database) -> Callable[[], None]:
    """A ``ServiceContext.on_change`` listener: read the revision, ``publish_sync`` it; never raises."""

    def publish() -> None:
        try:
            with db.read() as session:
                revision = audit.revision(session)
        except Exception as exc:
            log.warning("could not read the revision to publish: %s", exc)
            return
        notifier.publish_sync(revision)

    return publish
