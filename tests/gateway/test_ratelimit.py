"""Rate limits on both backends: the in-memory limiter and Redis (real server on 127.0.0.1:6379)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from releasegate.gateway.ratelimit import InMemoryRateLimiter, RedisRateLimiter, format_duration
from releasegate.gateway.types import LimitDecision, RateLimiter
from releasegate.plan.schema import Limits

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = datetime(2030, 5, 17, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2030, 5, 18, tzinfo=UTC).timestamp()

Factory = Callable[..., RateLimiter]


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix private to this test; its keys are deleted afterwards."""
    prefix = f"test:rl:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Factory]:
    """Builds limiters of one backend; Redis ones share one budget (one prefix)."""
    made: list[RateLimiter] = []

    def factory(**kwargs: object) -> RateLimiter:
        limiter: RateLimiter
        if request.param == "memory":
            limiter = InMemoryRateLimiter()
        else:
            limiter = RedisRateLimiter(REDIS_URL, prefix=redis_prefix, **kwargs)  # type: ignore[arg-type]
        made.append(limiter)
        return limiter

    yield factory
    for limiter in made:
        await limiter.close()


async def acquire_n(limiter: RateLimiter, n: int, limits: Limits, *, now: float, tokens: int = 0, who: str = "bluebank") -> list[LimitDecision]:
    return [await limiter.acquire(who, limits, estimated_tokens=tokens, now=now) for _ in range(n)]


async def test_rpm_admits_exactly_the_limit_then_denies_with_precise_retry(make_limiter: Factory) -> None:
    limiter = make_limiter()
    limits = Limits(rpm=300)
    decisions = await acquire_n(limiter, 300, limits, now=T0)
    assert all(d.allowed for d in decisions)
    assert decisions[-1].headers["x-ratelimit-remaining-requests"] == "0"

    denied = await limiter.acquire("bluebank", limits, estimated_tokens=0, now=T0)
    assert not denied.allowed and denied.reason == "rpm"
    assert denied.retry_after == pytest.approx(0.2, abs=1e-3)  # 60 s / 300
    assert denied.message == "bluebank has used 300 of 300 requests per minute; retry in 200ms"
    assert denied.headers["x-ratelimit-remaining-requests"] == "0"

    # Just before the refill: still denied; at it: exactly one more.
    assert not (await limiter.acquire("bluebank", limits, estimated_tokens=0, now=T0 + 0.199)).allowed
    assert (await limiter.acquire("bluebank", limits, estimated_tokens=0, now=T0 + 0.2)).allowed
    assert not (await limiter.acquire("bluebank", limits, estimated_tokens=0, now=T0 + 0.2)).allowed
    # Another deployer has its own budget.
    assert (await limiter.acquire("greenbank", limits, estimated_tokens=0, now=T0)).allowed


async def test_rpm_long_run_rate_is_the_limit(make_limiter: Factory) -> None:
    """Offered 4x the limit for three minutes: the burst plus exactly the refill gets through."""
    limiter = make_limiter()
    limits = Limits(rpm=60)
    allowed = 0
    for i in range(720):  # one request every 0.25 s for 180 s
        allowed += (await limiter.acquire("bluebank", limits, estimated_tokens=0, now=T0 + i * 0.25)).allowed
    assert allowed == 60 + 180 - 1  # burst of 60, then one per second (the last second not yet elapsed)


async def test_tpm_reserves_estimate_and_settles_to_actual(make_limiter: Factory) -> None:
    limiter = make_limiter()
    limits = Limits(tpm=1000)
    first = await limiter.acquire("bluebank", limits, estimated_tokens=600, now=T0)
    assert first.allowed and first.headers["x-ratelimit-remaining-tokens"] == "400"

    denied = await limiter.acquire("bluebank", limits, estimated_tokens=600, now=T0)
    assert not denied.allowed and denied.reason == "tpm"
    assert denied.retry_after == pytest.approx(12.0, abs=1e-3)  # 200 tokens short at 1000/60 s
    assert "bluebank has used 600 of 1000 tokens per minute" in (denied.message or "")

    # The answer used only 100 tokens: 500 go back, so the same request now fits.
    await limiter.settle("bluebank", limits, estimated_tokens=600, actual_tokens=100, now=T0)
    second = await limiter.acquire("bluebank", limits, estimated_tokens=600, now=T0)
    assert second.allowed and second.headers["x-ratelimit-remaining-tokens"] == "300"

    # Under-estimates are charged: 600 estimated, 900 used -> 0 left and 12 s of debt.
    await limiter.settle("bluebank", limits, estimated_tokens=600, actual_tokens=900, now=T0)
    debt = await limiter.acquire("bluebank", limits, estimated_tokens=1, now=T0)
    assert not debt.allowed and debt.headers["x-ratelimit-remaining-tokens"] == "0"
    assert debt.retry_after == pytest.approx(0.06, abs=1e-3)


async def test_request_larger_than_the_limit_is_denied_without_retry(make_limiter: Factory) -> None:
    limiter = make_limiter()
    denied = await limiter.acquire("bluebank", Limits(tpm=1000), estimated_tokens=1001, now=T0)
    assert not denied.allowed and denied.reason == "tpm" and denied.retry_after is None
    assert "more than bluebank's limit of 1000 tokens per minute" in (denied.message or "")
    # Nothing was reserved.
    assert (await limiter.acquire("bluebank", Limits(tpm=1000), estimated_tokens=1000, now=T0)).allowed


async def test_daily_tokens_roll_over_at_utc_midnight(make_limiter: Factory) -> None:
    limiter = make_limiter()
    limits = Limits(daily_tokens=1000)
    late = MIDNIGHT - 10
    assert (await limiter.acquire("bluebank", limits, estimated_tokens=600, now=late)).allowed
    denied = await limiter.acquire("bluebank", limits, estimated_tokens=600, now=late)
    assert not denied.allowed and denied.reason == "daily_tokens"
    assert denied.retry_after == pytest.approx(10.0, abs=1e-3)
    assert "resets at midnight UTC, in 10s" in (denied.message or "")
    # A refund on the same day counts.
    await limiter.settle("bluebank", limits, estimated_tokens=600, actual_tokens=500, now=late)
    assert (await limiter.acquire("bluebank", limits, estimated_tokens=500, now=late)).allowed
    assert not (await limiter.acquire("bluebank", limits, estimated_tokens=1, now=late)).allowed

    # Yesterday's request settling after midnight cannot push the new day below zero.
    await limiter.settle("bluebank", limits, estimated_tokens=500, actual_tokens=0, now=MIDNIGHT)
    assert (await limiter.acquire("bluebank", limits, estimated_tokens=1000, now=MIDNIGHT)).allowed
    assert not (await limiter.acquire("bluebank", limits, estimated_tokens=1, now=MIDNIGHT + 1)).allowed


async def test_concurrency_slots_are_held_until_settled(make_limiter: Factory) -> None:
    limiter = make_limiter()
    limits = Limits(concurrency=2)
    assert all(d.allowed for d in await acquire_n(limiter, 2, limits, now=T0))
    denied = await limiter.acquire("bluebank", limits, estimated_tokens=0, now=T0)
    assert not denied.allowed and denied.reason == "concurrency"
    assert denied.message == "bluebank has 2 of 2 requests in flight; retry when one of them finishes"
    await limiter.settle("bluebank", limits, estimated_tokens=0, actual_tokens=0, now=T0 + 1)
    assert (await limiter.acquire("bluebank", limits, estimated_tokens=0, now=T0 + 1)).allowed
    assert not (await limiter.acquire("bluebank", limits, estimated_tokens=0, now=T0 + 1)).allowed


async def test_denial_reserves_nothing_and_names_the_longest_wait(make_limiter: Factory) -> None:
    limiter = make_limiter()
    limits = Limits(rpm=2, tpm=100)
    assert (await limiter.acquire("bluebank", limits, estimated_tokens=90, now=T0)).allowed
    denied = await limiter.acquire("bluebank", limits, estimated_tokens=90, now=T0)
    assert not denied.allowed and denied.reason == "tpm"  # 48 s of tokens beats 0 s of requests
    assert denied.retry_after == pytest.approx(48.0, abs=1e-3)
    # The denied request took neither a request nor tokens.
    ok = await limiter.acquire("bluebank", limits, estimated_tokens=10, now=T0)
    assert ok.allowed and ok.headers["x-ratelimit-remaining-requests"] == "0"
    assert ok.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_headers_follow_openai_format(make_limiter: Factory) -> None:
    limiter = make_limiter()
    d = await limiter.acquire("bluebank", Limits(rpm=10, tpm=600, concurrency=5), estimated_tokens=60, now=T0)
    assert d.headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-tokens": "540",
        "x-ratelimit-reset-tokens": "6s",
    }
    assert (await limiter.acquire("x", Limits(), estimated_tokens=10**9, now=T0)) == LimitDecision(allowed=True)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (-1, "0s"), (0.02, "20ms"), (0.0201, "21ms"), (1, "1s"), (1.5, "1.5s"), (12.25, "12.25s"),
     (360, "6m0s"), (61.5, "1m1.5s"), (3723, "1h2m3s"), (86_400, "24h0m0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


async def test_two_redis_replicas_share_one_budget(redis_prefix: str) -> None:
    a = RedisRateLimiter(REDIS_URL, prefix=redis_prefix)
    b = RedisRateLimiter(REDIS_URL, prefix=redis_prefix)
    try:
        limits = Limits(rpm=10, concurrency=3)
        results = [await (a if i % 2 else b).acquire("bluebank", limits, estimated_tokens=0, now=T0 + i * 0.001) for i in range(6)]
        assert [r.allowed for r in results] == [True, True, True, False, False, False]
        assert results[3].reason == "concurrency"
        await a.settle("bluebank", limits, estimated_tokens=0, actual_tokens=0, now=T0 + 0.01)
        assert (await b.acquire("bluebank", limits, estimated_tokens=0, now=T0 + 0.01)).allowed
        # Concurrent acquires from both replicas never over-admit: 10 requests per minute in all.
        limits = Limits(rpm=10)
        burst = await asyncio.gather(*[
            (a, b)[i % 2].acquire("greenbank", limits, estimated_tokens=0, now=T0) for i in range(40)
        ])
        assert sum(d.allowed for d in burst) == 10
    finally:
        await a.close()
        await b.close()


async def test_slots_of_a_dead_replica_expire_and_live_ones_are_refreshed(redis_prefix: str) -> None:
    limits = Limits(concurrency=1)
    dead = RedisRateLimiter(REDIS_URL, prefix=redis_prefix, slot_ttl=0.3)
    alive = RedisRateLimiter(REDIS_URL, prefix=redis_prefix, slot_ttl=0.3)
    other = RedisRateLimiter(REDIS_URL, prefix=redis_prefix, slot_ttl=0.3)
    try:
        t = time.time()
        assert (await dead.acquire("bluebank", limits, estimated_tokens=0, now=t)).allowed
        await dead.close()  # dies without settling: nobody refreshes its slot
        assert not (await other.acquire("bluebank", limits, estimated_tokens=0, now=t + 0.1)).allowed
        assert (await other.acquire("bluebank", limits, estimated_tokens=0, now=t + 0.31)).allowed

        t = time.time()
        assert (await alive.acquire("greenbank", limits, estimated_tokens=0, now=t)).allowed
        await asyncio.sleep(0.8)  # several refresh periods (ttl/3) of real time
        late = await other.acquire("greenbank", limits, estimated_tokens=0, now=time.time())
        assert not late.allowed and late.reason == "concurrency"
        await alive.settle("greenbank", limits, estimated_tokens=0, actual_tokens=0, now=time.time())
        assert (await other.acquire("greenbank", limits, estimated_tokens=0, now=time.time())).allowed
    finally:
        await alive.close()
        await other.close()


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_unreachable_fails_closed_fast() -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{_unused_port()}/0")
    try:
        started = time.perf_counter()
        d = await limiter.acquire("bluebank", Limits(rpm=10), estimated_tokens=0, now=T0)
        assert time.perf_counter() - started < 0.5
        assert not d.allowed and d.reason == "limiter_unavailable" and d.retry_after == 1.0
        started = time.perf_counter()
        again = await limiter.acquire("bluebank", Limits(rpm=10), estimated_tokens=0, now=T0)
        assert again.reason == "limiter_unavailable" and time.perf_counter() - started < 0.01
        # Settling cannot reach Redis either, and must not raise into the gateway.
        await limiter.settle("bluebank", Limits(tpm=10), estimated_tokens=5, actual_tokens=1, now=T0)
        # Nothing to enforce, nothing to ask.
        assert (await limiter.acquire("bluebank", Limits(), estimated_tokens=0, now=T0)).allowed
    finally:
        await limiter.close()


class TcpProxy:
    """A loopback TCP forwarder to Redis that a test can take down and bring back."""

    def __init__(self, target_port: int) -> None:
        self.port = _unused_port()
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {w, uw}
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()


async def test_limiter_recovers_when_redis_returns(redis_prefix: str) -> None:
    proxy = TcpProxy(6379)
    await proxy.start()
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{proxy.port}/0", prefix=redis_prefix, retry_backend_after=0.1)
    limits = Limits(rpm=100)
    try:
        assert (await limiter.acquire("bluebank", limits, estimated_tokens=0, now=T0)).allowed
        await proxy.stop()
        assert (await limiter.acquire("bluebank", limits, estimated_tokens=0, now=T0)).reason == "limiter_unavailable"
        await proxy.start()
        await asyncio.sleep(0.15)
        back = await limiter.acquire("bluebank", limits, estimated_tokens=0, now=T0)
        assert back.allowed and back.headers["x-ratelimit-remaining-requests"] == "98"
    finally:
        await limiter.close()
        await proxy.stop()


async def test_acquire_and_settle_cost() -> None:
    """In-memory bookkeeping stays in the microseconds (~10 us measured; the bound only catches gross
    regressions such as I/O or a lock on the hot path, since test machines are shared)."""
    limiter = InMemoryRateLimiter()
    limits = Limits(rpm=10**9, tpm=10**12, daily_tokens=10**15, concurrency=10**6)
    n = 20_000
    started = time.perf_counter()
    for i in range(n):
        await limiter.acquire(f"d{i % 100}", limits, estimated_tokens=100, now=T0 + i * 1e-4)
        await limiter.settle(f"d{i % 100}", limits, estimated_tokens=100, actual_tokens=80, now=T0 + i * 1e-4)
    per_pair_us = (time.perf_counter() - started) / n * 1e6
    assert per_pair_us < 200, per_pair_us



# -- leases: without a concurrency limit, a Redis replica admits from a share it claimed --------------

# These tests are about the accounting: a test machine busy with the rest of the suite can take longer
# than the limiter's 0.25 s to connect, which fails closed (tested above) and would mask what is tested.
PATIENT = 2.0


def _count_claims(limiter: RedisRateLimiter) -> list[int]:
    """Counts the limiter's round trips to Redis for leases (a wrapper around its claim script)."""
    calls = [0]
    script = limiter._claim_script

    async def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return await script(*args, **kwargs)  # type: ignore[arg-type]

    limiter._claim_script = counted  # type: ignore[assignment]
    return calls


async def test_a_lease_admits_without_a_redis_round_trip_per_request(redis_prefix: str) -> None:
    limiter = RedisRateLimiter(REDIS_URL, prefix=redis_prefix, socket_timeout=PATIENT)
    calls = _count_claims(limiter)
    try:
        limits = Limits(rpm=100_000, tpm=10_000_000)  # shares of 1,000 requests and 100,000 tokens
        decisions = [await limiter.acquire("bluebank", limits, estimated_tokens=50, now=T0 + i * 1e-4) for i in range(1500)]
        assert all(d.allowed for d in decisions)
        assert calls[0] == 2  # 1,000 requests per lease
        # The headers still count every request admitted, as the in-memory limiter's do.
        last = decisions[-1].headers
        memory = InMemoryRateLimiter()
        expected = [await memory.acquire("bluebank", limits, estimated_tokens=50, now=T0 + i * 1e-4) for i in range(1500)]
        assert last == expected[-1].headers
        # Token corrections go into the lease: still no round trip.
        for _ in range(100):
            await limiter.settle("bluebank", limits, estimated_tokens=50, actual_tokens=20, now=T0 + 0.2)
        assert calls[0] == 2
    finally:
        await limiter.close()


async def test_leased_replicas_never_admit_more_than_the_shared_budget(redis_prefix: str) -> None:
    a = RedisRateLimiter(REDIS_URL, prefix=redis_prefix, socket_timeout=PATIENT)
    b = RedisRateLimiter(REDIS_URL, prefix=redis_prefix, socket_timeout=PATIENT)
    limits = Limits(rpm=1000)  # leases of 10 requests
    try:
        results = await asyncio.gather(*[
            (a, b)[i % 2].acquire("bluebank", limits, estimated_tokens=0, now=T0) for i in range(1200)
        ])
        allowed = sum(d.allowed for d in results)
        # Each replica may be refused early while the other holds an unspent lease: at most one lease each.
        assert 1000 - 2 * 10 <= allowed <= 1000
        assert all(d.reason == "rpm" for d in results if not d.allowed)
    finally:
        await a.close()  # gives back what the leases left
        await b.close()
    c = RedisRateLimiter(REDIS_URL, prefix=redis_prefix, lease_fraction=0, socket_timeout=PATIENT)
    try:
        rest = await acquire_n(c, 1000 - allowed + 1, limits, now=T0)
        assert [d.allowed for d in rest] == [True] * (1000 - allowed) + [False]  # exactly 1,000 in all
    finally:
        await c.close()


async def test_a_quiet_replica_gives_its_lease_back(redis_prefix: str) -> None:
    quiet = RedisRateLimiter(REDIS_URL, prefix=redis_prefix, lease_ttl=0.2, socket_timeout=PATIENT)
    busy = RedisRateLimiter(REDIS_URL, prefix=redis_prefix, lease_fraction=0, socket_timeout=PATIENT)
    limits = Limits(daily_tokens=100_000)  # leases of 1,000 tokens
    try:
        now = time.time()
        assert (await quiet.acquire("bluebank", limits, estimated_tokens=100, now=now)).allowed
        await quiet.settle("bluebank", limits, estimated_tokens=100, actual_tokens=40, now=now)
        # The quiet replica holds 960 unspent tokens of its lease: the other is refused early...
        assert not (await busy.acquire("bluebank", limits, estimated_tokens=99_001, now=now)).allowed
        await asyncio.sleep(0.6)  # ...until the sweep gives them back
        assert (await busy.acquire("bluebank", limits, estimated_tokens=99_960, now=time.time())).allowed
        denied = await busy.acquire("bluebank", limits, estimated_tokens=1, now=time.time())
        assert not denied.allowed and denied.reason == "daily_tokens"
    finally:
        await quiet.close()
        await busy.close()


async def test_a_lease_follows_a_plan_change(redis_prefix: str) -> None:
    """One replica with leases decides exactly as the in-memory limiter, across a change of limits."""
    limiter = RedisRateLimiter(REDIS_URL, prefix=redis_prefix, socket_timeout=PATIENT)
    memory = InMemoryRateLimiter()
    try:
        steps = [(Limits(rpm=1000), 5), (Limits(rpm=5), 6), (Limits(rpm=1000), 3)]
        for limits, n in steps:
            leased = await acquire_n(limiter, n, limits, now=T0)
            exact = await acquire_n(memory, n, limits, now=T0)
            assert [(d.allowed, d.reason, d.headers) for d in leased] == [(d.allowed, d.reason, d.headers) for d in exact]
        assert [d.allowed for d in leased] == [True, True, True]
    finally:
        await limiter.close()
