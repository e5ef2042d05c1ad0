"""Change fan-out over real PostgreSQL (LISTEN/NOTIFY) and Redis (pub/sub), including lost connections."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from releasegate.gateway.notify import (
    PostgresNotifier,
    RedisNotifier,
    change_listener,
    libpq_dsn,
    make_notifier,
)
from releasegate.services import audit
from releasegate.services.context import ServiceContext
from releasegate.settings import Settings

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"

Notifier = PostgresNotifier | RedisNotifier


class Received:
    """Collects revisions and lets a test wait for one."""

    def __init__(self) -> None:
        self.revisions: list[int] = []
        self._event = asyncio.Event()

    async def __call__(self, revision: int) -> None:
        self.revisions.append(revision)
        self._event.set()

    async def wait_for(self, revision: int, timeout: float) -> float:
        """Seconds until ``revision`` arrived; fails after ``timeout``."""
        started = time.perf_counter()
        async with asyncio.timeout(timeout):
            while revision not in self.revisions:
                self._event.clear()
                await self._event.wait()
        return time.perf_counter() - started


def channel() -> str:
    return f"rg_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["postgresql", "redis"])
def make(request: pytest.FixtureRequest) -> Callable[[str], Notifier]:
    """Builds notifiers of one kind for a channel."""
    if request.param == "postgresql":
        return lambda name: PostgresNotifier(PG_URL, name)
    return lambda name: RedisNotifier(REDIS_URL, name)


async def start_listening(notifier: Notifier, callback: Callable[[int], Any]) -> asyncio.Task[None]:
    task = asyncio.create_task(notifier.listen(callback))
    async with asyncio.timeout(5):
        await notifier.subscribed.wait()
    return task


@pytest.fixture
async def pair(make: Callable[[str], Notifier]) -> AsyncIterator[tuple[Notifier, Notifier, Received]]:
    """(listener, publisher, received) on one private channel; the listener is running and subscribed."""
    name = channel()
    listener, publisher, received = make(name), make(name), Received()
    task = await start_listening(listener, received)
    yield listener, publisher, received
    await listener.close()
    await publisher.close()
    async with asyncio.timeout(3):  # close() ends listen() by itself
        await task


async def test_publish_reaches_the_listener_within_100ms(pair: tuple[Notifier, Notifier, Received]) -> None:
    _, publisher, received = pair
    await publisher.publish(41)
    assert await received.wait_for(41, timeout=2) < 0.1
    # The synchronous control plane publishes from its own thread.
    await asyncio.to_thread(publisher.publish_sync, 42)
    assert await received.wait_for(42, timeout=2) < 0.1
    assert received.revisions == [41, 42]


def _kill_listener_connection(notifier: Notifier) -> None:
    if isinstance(notifier, PostgresNotifier):
        with psycopg.connect(libpq_dsn(PG_URL), autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s AND pid <> pg_backend_pid()",
                (f'LISTEN "{notifier.channel}"',),
            ).fetchall()
        assert killed == [(True,)]
    else:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            ids = [c["id"] for c in client.client_list() if c.get("name") == f"releasegate-notify-{notifier.channel}"]
            assert ids
            for cid in ids:
                client.client_kill_filter(_id=cid)
        finally:
            client.close()


async def test_listener_survives_a_killed_connection(pair: tuple[Notifier, Notifier, Received]) -> None:
    listener, publisher, received = pair
    await publisher.publish(1)
    await received.wait_for(1, timeout=2)
    await asyncio.to_thread(_kill_listener_connection, listener)
    async with asyncio.timeout(5):
        while not (listener.reconnects >= 1 and listener.subscribed.is_set()):
            await asyncio.sleep(0.02)
    await publisher.publish(2)
    assert await received.wait_for(2, timeout=2) < 0.1


async def test_a_failing_callback_does_not_stop_the_listener(make: Callable[[str], Notifier]) -> None:
    name = channel()
    listener, publisher, received = make(name), make(name), Received()
    calls: list[int] = []

    async def flaky(revision: int) -> None:
        calls.append(revision)
        if revision == 1:
            raise RuntimeError("boom")
        await received(revision)

    task = await start_listening(listener, flaky)
    try:
        await publisher.publish(1)
        await publisher.publish(2)
        await received.wait_for(2, timeout=2)
        assert calls == [1, 2]
    finally:
        await listener.close()
        await publisher.close()
        await task


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_publishing_to_an_unreachable_broker_never_raises() -> None:
    port = _unused_port()
    for notifier in (PostgresNotifier(f"postgresql://postgres@127.0.0.1:{port}/test", channel()),
                     RedisNotifier(f"redis://127.0.0.1:{port}/0", channel())):
        started = time.perf_counter()
        await notifier.publish(3)
        await asyncio.to_thread(notifier.publish_sync, 3)
        assert time.perf_counter() - started < 3
        await notifier.close()


async def test_listener_retries_until_the_broker_answers() -> None:
    notifier = RedisNotifier(f"redis://127.0.0.1:{_unused_port()}/0", channel())
    task = asyncio.create_task(notifier.listen(Received()))
    await asyncio.sleep(0.5)
    assert notifier.reconnects >= 2 and not task.done()
    await notifier.close()
    async with asyncio.timeout(6):
        await task


async def test_make_notifier_prefers_redis_then_postgresql(tmp_path: Path) -> None:
    with_redis = make_notifier(Settings(data_dir=tmp_path, redis_url=REDIS_URL), PG_URL)
    with_pg = make_notifier(Settings(data_dir=tmp_path), PG_URL)
    try:
        assert isinstance(with_redis, RedisNotifier) and isinstance(with_pg, PostgresNotifier)
        assert make_notifier(Settings(data_dir=tmp_path), f"sqlite:///{tmp_path / 'x.db'}") is None
        with pytest.raises(ValueError, match="channel"):
            RedisNotifier(REDIS_URL, "Robert'); DROP")
    finally:
        for n in (with_redis, with_pg):
            if n is not None:
                await n.close()


async def test_committed_control_plane_writes_are_announced(ctx: ServiceContext) -> None:
    """The sync ServiceContext publishes its revision after each commit (both store backends)."""
    name = channel()
    listener, publisher, received = RedisNotifier(REDIS_URL, name), RedisNotifier(REDIS_URL, name), Received()
    task = asyncio.create_task(listener.listen(received))
    try:
        async with asyncio.timeout(5):
            await listener.subscribed.wait()
        ctx.on_change.append(change_listener(publisher, ctx.db))

        def change() -> int:
            with ctx.write() as session:
                audit.record(session, at=ctx.clock.now(), actor="test", action="test.change", target="x")
            with ctx.db.read() as session:
                return audit.revision(session)

        revision = await asyncio.to_thread(change)
        assert revision >= 1
        await received.wait_for(revision, timeout=2)
    finally:
        await listener.close()
        await publisher.close()
        await task
