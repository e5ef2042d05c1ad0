"""Budgets shared by every replica through Redis: leases without a concurrency limit, slots with one.

Leases. Without a concurrency limit, a replica does not ask Redis per request: it
claims a *lease*, a small share of the deployer's budget (``lease_fraction`` of each limit, 1% by
default: 10 of 1,000 requests per minute, 1,000 of 100,000 tokens), in one ``EVALSHA`` that moves the
shared ``tat`` (and the day's counter) as if those requests had been admitted, and then admits
locally, in microseconds, until the lease is spent or ``lease_ttl`` (1 s) has passed. Token
corrections at ``settle`` go into the lease (a refund is spent locally, an overrun is a debt). The
leftover (or the debt) goes back with the next claim, or, for a deployer gone quiet, with the
background sweep that runs every ``lease_ttl/2``. A claim takes *up to* its share: near the end of
a budget it takes what fits, down to this one request, so the replicas together never admit more
than the limit, and one replica alone admits exactly as the in-memory limiter does. What sharing
costs: while one replica holds an unspent lease another may be refused early, by at most one lease
per replica and for at most ``lease_ttl``; and the ``x-ratelimit-remaining-*`` headers count the
other replicas' use as of this replica's last claim. A budget smaller than ``1/lease_fraction``
makes leases of one request: every request asks Redis, as ``lease_fraction=0`` always does.

With a concurrency limit, one ``EVALSHA`` per acquire and per settle (slots must be exact). Concurrency slots live in a
sorted set per deployer, member = ``<limiter instance>:<n>``, score = the slot's expiry; a
background task of the owning limiter pushes the expiry of its held slots forward every
``slot_ttl/3``, so the slots of a replica that died (no ``settle``, no refresh) expire after
``slot_ttl`` seconds and every acquire sweeps expired slots first: nothing leaks for longer.
Replicas pass their own clock (``now``), so keep them NTP-synchronised; a skew of ``d``
seconds shifts a shared budget by at most ``d/60`` of a minute's allowance.
Redis unreachable: deny with ``limiter_unavailable`` (fail closed) within the socket timeout
(default 0.25 s), then deny at once for ``retry_backend_after`` seconds before trying again,
so a dead Redis costs no latency per request and a returning one is used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
import uuid

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from releasegate.gateway.ratelimit.gcra import (
    ALLOWED_UNLIMITED,
    DAY,
    PERIOD,
    State,
    deny,
    fits,
    headers_for,
    unlimited,
)
from releasegate.gateway.ratelimit.scripts import ACQUIRE_LUA, CLAIM_LUA, REFRESH_LUA, SETTLE_LUA
from releasegate.gateway.types import LimitDecision
from releasegate.plan.schema import Limits

log = logging.getLogger(__name__)

class _Lease:
    """A share of one deployer's budget this replica took from Redis, spent locally (module docstring).

    Times are relative to ``origin`` (the claim's ``now``), as in ``_Budget``.
    """

    __slots__ = ("day", "day_used", "expires", "limits", "origin", "r_wait", "requests", "t_wait", "tokens")

    def __init__(self, limits: Limits, origin: float, expires: float, r_wait: float, t_wait: float, day_used: int,
                 requests: int, tokens: int) -> None:
        self.limits = limits
        self.origin = origin
        self.expires = expires  # monotonic
        self.day = int(origin // DAY)
        self.r_wait = r_wait  # the shared tat before the claim, plus what was spent of the lease since
        self.t_wait = t_wait
        self.day_used = day_used
        self.requests = requests  # left to admit (ignored when rpm is unset)
        self.tokens = tokens  # left to admit; negative is a debt (settled above the estimate)

    def live(self, limits: Limits, now: float) -> bool:
        return (time.monotonic() < self.expires and self.origin <= now < self.origin + LEASE_MAX_AGE
                and int(now // DAY) == self.day and (self.limits is limits or self.limits == limits))

    def state(self, now: float) -> State:
        elapsed = now - self.origin
        return State(max(self.r_wait - elapsed, 0.0), max(self.t_wait - elapsed, 0.0), self.day_used, 0)


LEASE_MAX_AGE = 60.0  # seconds of the callers' clock a lease may serve (with a frozen or jumping clock)


class RedisRateLimiter:
    """Budgets shared by every replica pointing at the same Redis and ``prefix``.

    Keys (hash-tagged per deployer so a cluster keeps them on one shard, all with TTLs):
    ``<prefix>{<deployer>}:g`` GCRA times, ``…:d:<utc day>`` daily tokens, ``…:c`` slots.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "rg:rl:",
        socket_timeout: float = 0.25,
        retry_backend_after: float = 0.5,
        slot_ttl: float = 30.0,
        lease_fraction: float = 0.01,
        lease_ttl: float = 1.0,
    ) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0), decode_responses=True,
        )
        self._prefix = prefix
        self._acquire_script = self._redis.register_script(ACQUIRE_LUA)
        self._settle_script = self._redis.register_script(SETTLE_LUA)
        self._refresh_script = self._redis.register_script(REFRESH_LUA)
        self._retry_backend_after = retry_backend_after
        self._down_until = 0.0  # monotonic; deny without trying until then
        self._slot_ttl = slot_ttl
        self._instance = uuid.uuid4().hex[:12]
        self._seq = itertools.count(1)
        self._slots: dict[str, list[str]] = {}  # deployer -> slots this instance holds
        self._refresher: asyncio.Task[None] | None = None
        self._claim_script = self._redis.register_script(CLAIM_LUA)
        self._lease_fraction = max(0.0, lease_fraction)
        self._lease_ttl = lease_ttl
        self._leases: dict[str, _Lease] = {}
        self._claims: dict[str, asyncio.Future[State | None]] = {}  # deployer -> a claim in flight (-> its refusal)
        self._sweeper: asyncio.Task[None] | None = None

    def _keys(self, deployer_id: str, now: float) -> list[str]:
        base = f"{self._prefix}{{{deployer_id}}}"
        return [f"{base}:g", f"{base}:d:{int(now // DAY)}", f"{base}:c"]

    def _unavailable(self, deployer_id: str) -> LimitDecision:
        return LimitDecision(
            allowed=False, retry_after=1.0, reason="limiter_unavailable",
            message=f"the rate limiter cannot reach its store, so no request from {deployer_id} can be admitted right now; retry in 1s",
        )

    async def acquire(self, deployer_id: str, limits: Limits, *, estimated_tokens: int, now: float) -> LimitDecision:
        """Reserve or deny in one ``EVALSHA`` (see the module docstring)."""
        if unlimited(limits):
            return ALLOWED_UNLIMITED
        est = max(0, estimated_tokens)
        if not limits.concurrency:
            return await self._acquire_leased(deployer_id, limits, est, now)
        if time.monotonic() < self._down_until:
            return self._unavailable(deployer_id)
        slot = f"{self._instance}:{next(self._seq)}" if limits.concurrency else ""
        day_end_ms = (math.floor(now / DAY) + 1) * DAY * 1000
        args: list[str | int] = [
            f"{now * 1000:.3f}", limits.rpm or 0, limits.tpm or 0, limits.daily_tokens or 0,
            limits.concurrency or 0, est, f"{day_end_ms:.0f}", slot, f"{(now + self._slot_ttl) * 1000:.3f}",
        ]
        try:
            ok, r_wait, t_wait, used, inflight = await self._acquire_script(keys=self._keys(deployer_id, now), args=args)
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self._retry_backend_after
            log.warning("rate limiter: Redis unreachable, denying requests (fail closed): %s", exc)
            return self._unavailable(deployer_id)
        s = State(float(r_wait) / 1000, float(t_wait) / 1000, int(used), int(inflight))
        if not int(ok):
            return deny(deployer_id, limits, est, s, now)
        if slot:
            self._slots.setdefault(deployer_id, []).append(slot)
            self._ensure_refresher()
        return LimitDecision(allowed=True, headers=headers_for(limits, est, s, True))

    # -- leases (no concurrency limit) ---------------------------------------------------------

    async def _acquire_leased(self, deployer_id: str, limits: Limits, est: int, now: float) -> LimitDecision:
        while True:
            lease = self._leases.get(deployer_id)
            if lease is not None and lease.live(limits, now) and (not limits.rpm or lease.requests >= 1) and (
                    not (limits.tpm or limits.daily_tokens) or lease.tokens >= est):
                return self._spend(lease, limits, est, now)
            pending = self._claims.get(deployer_id)
            if pending is None:
                break
            # Another request of this deployer is claiming: use its lease, or share its refusal
            # (the same moment's shared state) unless this smaller request would have fitted.
            refused = await asyncio.shield(pending)
            if refused is not None and not fits(limits, est, refused):
                return deny(deployer_id, limits, est, refused, now)
        if time.monotonic() < self._down_until:
            return self._unavailable(deployer_id)
        done: asyncio.Future[State | None] = asyncio.get_running_loop().create_future()
        self._claims[deployer_id] = done
        refusal: State | None = None
        try:
            decision, refusal = await self._claim(deployer_id, limits, est, now)
            return decision
        finally:
            if self._claims.get(deployer_id) is done:
                del self._claims[deployer_id]
            done.set_result(refusal)

    def _spend(self, lease: _Lease, limits: Limits, est: int, now: float) -> LimitDecision:
        s = lease.state(now)
        elapsed = now - lease.origin
        if limits.rpm:
            lease.requests -= 1
            lease.r_wait = max(lease.r_wait, elapsed) + PERIOD / limits.rpm
        if limits.tpm:
            lease.t_wait = max(lease.t_wait, elapsed) + est * PERIOD / limits.tpm
        lease.tokens -= est
        lease.day_used += est
        return LimitDecision(allowed=True, headers=headers_for(limits, est, s, True))

    def _share(self, limit: int | None) -> int:
        return max(1, int(limit * self._lease_fraction)) if limit else 0

    def _give_back(self, lease: _Lease | None, now: float) -> tuple[int, int, int]:
        """What a lease returns: (requests, tokens, daily tokens); tokens < 0 is a debt."""
        if lease is None:
            return 0, 0, 0
        requests = lease.requests if lease.limits.rpm else 0
        tokens = lease.tokens if lease.limits.tpm else 0
        daily = lease.tokens if lease.limits.daily_tokens and int(now // DAY) == lease.day else 0
        return requests, tokens, daily

    async def _claim(self, deployer_id: str, limits: Limits, est: int, now: float) -> tuple[LimitDecision, State | None]:
        """Give back the old lease and take a new one in one ``EVALSHA``; admit this request from it.

        Also returns the shared state when Redis refused (for the requests waiting on this claim)."""
        old = self._leases.pop(deployer_id, None)
        if old is not None and old.limits != limits:  # the plan changed: give back under the old limits
            await self._return(deployer_id, old, now)
            old = None
        ret_r, ret_t, ret_d = self._give_back(old, now)
        shares = [self._share(limit) for limit in (limits.tpm, limits.daily_tokens) if limit]
        want_t = max(est, min(shares)) if shares else 0
        day_end_ms = (math.floor(now / DAY) + 1) * DAY * 1000
        args: list[str | int] = [
            f"{now * 1000:.3f}", limits.rpm or 0, limits.tpm or 0, limits.daily_tokens or 0, ret_r, ret_t, ret_d,
            self._share(limits.rpm) or 1, want_t, est if shares else 0, f"{day_end_ms:.0f}",
        ]
        try:
            ok, r_wait, t_wait, used, n, tokens = await self._claim_script(keys=self._keys(deployer_id, now)[:2], args=args)
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self._retry_backend_after
            log.warning("rate limiter: Redis unreachable, denying requests (fail closed): %s", exc)
            return self._unavailable(deployer_id), None
        s = State(float(r_wait) / 1000, float(t_wait) / 1000, int(used), 0)
        if not int(ok):
            return deny(deployer_id, limits, est, s, now), s
        lease = _Lease(limits, now, time.monotonic() + self._lease_ttl, s.r_wait, s.t_wait, s.day_used, int(n), int(tokens))
        self._leases[deployer_id] = lease
        self._ensure_sweeper()
        return self._spend(lease, limits, est, now), None

    async def _return(self, deployer_id: str, lease: _Lease, now: float) -> None:
        """Give a lease's leftover (or debt) back to the shared budget; never raises."""
        ret_r, ret_t, ret_d = self._give_back(lease, now)
        if not (ret_r or ret_t or ret_d):
            return
        limits = lease.limits
        day_end_ms = (math.floor(now / DAY) + 1) * DAY * 1000
        args: list[str | int] = [f"{now * 1000:.3f}", limits.rpm or 0, limits.tpm or 0, limits.daily_tokens or 0,
                                 ret_r, ret_t, ret_d, 0, 0, 0, f"{day_end_ms:.0f}"]
        try:
            await self._claim_script(keys=self._keys(deployer_id, now)[:2], args=args)
        except (RedisError, OSError) as exc:
            log.warning("rate limiter: could not give back %s's unused lease (it is lost for this minute): %s",
                        deployer_id, exc)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        """Give back the leases of deployers that went quiet, so other replicas can use them."""
        while True:
            await asyncio.sleep(self._lease_ttl / 2)
            await self._sweep(expired_only=True)

    async def _sweep(self, *, expired_only: bool) -> None:
        mono = time.monotonic()
        for deployer_id, lease in list(self._leases.items()):
            if expired_only and mono < lease.expires:
                continue
            if self._leases.get(deployer_id) is lease and deployer_id not in self._claims:
                del self._leases[deployer_id]
                # The callers' clock as of now: the lease's origin plus the time it has been held.
                now = lease.origin + (mono - (lease.expires - self._lease_ttl))
                await self._return(deployer_id, lease, now)

    async def settle(self, deployer_id: str, limits: Limits, *, estimated_tokens: int, actual_tokens: int, now: float) -> None:
        """Correct tokens and free a slot; never raises (a lost settle only leaves the estimate
        charged and the slot to expire after ``slot_ttl``). Without a concurrency limit the
        correction goes into the deployer's live lease, if any, with no Redis call."""
        if not limits.concurrency:
            lease = self._leases.get(deployer_id)
            if lease is not None and lease.live(limits, now):
                delta = max(0, actual_tokens) - max(0, estimated_tokens)
                if delta > 0 and limits.tpm:
                    # A charge starts from a full bucket at the earliest, as in the in-memory limiter.
                    lease.t_wait = max(lease.t_wait, now - lease.origin)
                if limits.tpm:
                    lease.t_wait += delta * PERIOD / limits.tpm
                lease.tokens -= delta
                lease.day_used = max(0, lease.day_used + delta)
                return
        held = self._slots.get(deployer_id)
        slot = held.pop() if held else ""
        if held is not None and not held:
            del self._slots[deployer_id]
        delta = max(0, actual_tokens) - max(0, estimated_tokens)
        tpm = limits.tpm or 0
        daily = limits.daily_tokens or 0
        if not slot and not (delta and (tpm or daily)):
            return
        if time.monotonic() < self._down_until:
            return  # Redis just failed: do not add a timeout per response; the slot expires
        day_end_ms = (math.floor(now / DAY) + 1) * DAY * 1000
        args: list[str | int] = [f"{now * 1000:.3f}", tpm, daily, delta, f"{day_end_ms:.0f}", slot]
        try:
            await self._settle_script(keys=self._keys(deployer_id, now), args=args)
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self._retry_backend_after
            log.warning("rate limiter: could not settle %s's usage in Redis (the slot expires on its own): %s", deployer_id, exc)

    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        """Keep this instance's held slots alive; when it dies they expire after ``slot_ttl``."""
        interval = self._slot_ttl / 3
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            elapsed_ms, last = (now - last) * 1000, now
            held = {d: list(slots) for d, slots in self._slots.items() if slots}
            if not held:
                continue
            try:
                # One script per deployer (a cluster keeps each deployer's keys on one shard).
                async with self._redis.pipeline(transaction=False) as pipe:
                    for d, slots in held.items():
                        await self._refresh_script(keys=[f"{self._prefix}{{{d}}}:c"], args=[f"{elapsed_ms:.3f}", *slots], client=pipe)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("rate limiter: could not refresh concurrency slots: %s", exc)

    async def close(self) -> None:
        """Give back unspent leases, stop refreshing (held slots then expire), close the connection pool."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if time.monotonic() >= self._down_until:
            await self._sweep(expired_only=False)
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self._redis.aclose()
