"""Per-deployer budgets: requests and tokens per minute, tokens per UTC day, requests in flight.

Algorithm. Per-minute limits use GCRA (the generic cell rate algorithm, i.e. a token bucket
stored as one number, the *theoretical arrival time* ``tat``): a limit of ``L`` per minute
refills continuously at ``L/60`` per second up to a burst of ``L``; a request costing ``c``
fits when ``max(tat, now) + c*60/L - now <= 60``. We chose it over a sliding window because

* it is exactly the semantics OpenAI documents for its own limits (continuous replenishment,
  ``x-ratelimit-reset-*`` = time until the bucket is full again), so the headers are exact,
  not estimates; the long-run rate never exceeds ``L`` per minute (a client idle for a
  minute may spend its full minute at once, as with OpenAI);
* ``retry_after`` is exact: the moment the request would fit;
* state is one float per limit, so a Redis acquire is one small Lua script, and a token
  correction at ``settle`` is just "move ``tat``": it needs no knowledge of which window the
  reservation fell in (a sliding-window counter would have to find it, or be wrong).

Tokens per UTC day are a plain counter per calendar day (``floor(now/86400)``), rolling at
midnight UTC. Concurrency is a count of slots held.

Contract (``RateLimiter`` in ``gateway.types``): ``acquire`` reserves one request,
``estimated_tokens`` tokens and one concurrency slot (only when ``limits.concurrency`` is
set), or denies and reserves nothing. ``settle`` moves the token reservation to the actual
usage (refunds when the estimate was high) and frees one slot. ``settle`` is not told when
the request started, so a correction lands in the minute and UTC day of the settlement;
daily counters never go below zero. Limits all unset: allowed without touching any backend.
How it denies: ``LimitDecision(allowed=False, reason=rpm|tpm|daily_tokens|concurrency|
limiter_unavailable, retry_after=seconds, message=...)``; ``retry_after`` is ``None`` when
waiting cannot help (the request alone needs more tokens than the limit).

Redis backend, leases. Without a concurrency limit, a replica does not ask Redis per request: it
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
from typing import NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from releasegate.gateway.types import LimitDecision
from releasegate.plan.schema import Limits

__all__ = ["InMemoryRateLimiter", "RedisRateLimiter", "format_duration"]

log = logging.getLogger(__name__)

PERIOD = 60.0  # seconds in the per-minute window
DAY = 86_400.0
EPS = 1e-6  # seconds of float slack, so exactly L requests fit in a burst of L
CONCURRENCY_RETRY = 1.0  # seconds: a slot frees when a request ends, which we cannot predict
ALLOWED_UNLIMITED = LimitDecision(allowed=True)


def format_duration(seconds: float) -> str:
    """OpenAI's reset duration format: ``"20ms"``, ``"1s"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m3s"``.

    Rounded up to the millisecond so that a client waiting that long is never early.
    """
    ms = -int(-(seconds * 1000 - 1e-6) // 1) if seconds > 0 else 0  # ceil, on the hot path
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms / 1000:.3f}".rstrip("0") + "s"
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    sec = str(rem // 1000) if rem % 1000 == 0 else f"{rem / 1000:.3f}".rstrip("0")
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{sec}s"


class _State(NamedTuple):
    """What a backend knows about a deployer before this request (times relative to now)."""

    r_wait: float  # max(tat_requests - now, 0)
    t_wait: float  # max(tat_tokens - now, 0); may exceed PERIOD after an under-estimate
    day_used: int
    inflight: int


def _fits(limits: Limits, est: int, s: _State) -> bool:
    """The admission rule; the Redis Lua script implements exactly the same inequalities."""
    if limits.rpm and s.r_wait + PERIOD / limits.rpm > PERIOD + EPS:
        return False
    if limits.tpm and s.t_wait + est * PERIOD / limits.tpm > PERIOD + EPS:
        return False
    if limits.daily_tokens and s.day_used + est > limits.daily_tokens:
        return False
    return not (limits.concurrency and s.inflight >= limits.concurrency)


def _headers(limits: Limits, est: int, s: _State, allowed: bool) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers, after this request's reservation when allowed."""
    h: dict[str, str] = {}
    rpm, tpm = limits.rpm, limits.tpm
    if rpm:
        iv = PERIOD / rpm
        wait = s.r_wait + iv if allowed else s.r_wait
        left = int((PERIOD - wait) / iv + EPS)  # int() floors: the operand is >= -1 + EPS
        h["x-ratelimit-limit-requests"] = str(rpm)
        h["x-ratelimit-remaining-requests"] = str(left) if left > 0 else "0"
        h["x-ratelimit-reset-requests"] = format_duration(wait)
    if tpm:
        iv = PERIOD / tpm
        wait = s.t_wait + est * iv if allowed else s.t_wait
        left = int((PERIOD - wait) / iv + EPS) if wait < PERIOD else 0
        h["x-ratelimit-limit-tokens"] = str(tpm)
        h["x-ratelimit-remaining-tokens"] = str(left) if left > 0 else "0"
        h["x-ratelimit-reset-tokens"] = format_duration(wait)
    return h


def _deny(deployer_id: str, limits: Limits, est: int, s: _State, now: float) -> LimitDecision:
    """Explain the denial by the limit that keeps the request out the longest."""
    found: list[tuple[float, str, str]] = []  # (retry_after or inf, reason, message)
    if limits.rpm:
        iv = PERIOD / limits.rpm
        retry = s.r_wait + iv - PERIOD
        if retry > EPS:
            used = limits.rpm - max(0, math.floor((PERIOD - s.r_wait) / iv + EPS))
            found.append((retry, "rpm", f"{deployer_id} has used {used} of {limits.rpm} requests per minute; retry in {format_duration(retry)}"))
    if limits.tpm:
        iv = PERIOD / limits.tpm
        if est > limits.tpm:
            found.append((math.inf, "tpm", f"this request may use up to {est} tokens, more than {deployer_id}'s limit of {limits.tpm} tokens per minute; lower max_tokens or shorten the input"))
        else:
            retry = s.t_wait + est * iv - PERIOD
            if retry > EPS:
                used = limits.tpm - max(0, math.floor((PERIOD - s.t_wait) / iv + EPS))
                found.append((retry, "tpm", f"{deployer_id} has used {used} of {limits.tpm} tokens per minute and this request may use up to {est}; retry in {format_duration(retry)}"))
    if limits.daily_tokens and s.day_used + est > limits.daily_tokens:
        if est > limits.daily_tokens:
            found.append((math.inf, "daily_tokens", f"this request may use up to {est} tokens, more than {deployer_id}'s limit of {limits.daily_tokens} tokens per day"))
        else:
            retry = (math.floor(now / DAY) + 1) * DAY - now
            found.append((retry, "daily_tokens", f"{deployer_id} has used {s.day_used} of {limits.daily_tokens} tokens today (UTC) and this request may use up to {est}; the budget resets at midnight UTC, in {format_duration(retry)}"))
    if limits.concurrency and s.inflight >= limits.concurrency:
        found.append((CONCURRENCY_RETRY, "concurrency", f"{deployer_id} has {s.inflight} of {limits.concurrency} requests in flight; retry when one of them finishes"))
    if not found:  # only reachable through float edge cases between Lua and Python
        found.append((CONCURRENCY_RETRY, "rpm", f"{deployer_id} is over its rate limit; retry in 1s"))
    retry, reason, message = max(found, key=lambda f: f[0])
    return LimitDecision(
        allowed=False, headers=_headers(limits, est, s, False),
        retry_after=None if math.isinf(retry) else retry, reason=reason, message=message,
    )


def _unlimited(limits: Limits) -> bool:
    return limits.rpm is None and limits.tpm is None and limits.daily_tokens is None and limits.concurrency is None


class _Budget:
    """One deployer's in-memory state (absolute times)."""

    __slots__ = ("day", "day_used", "inflight", "origin", "r_tat", "t_tat")

    def __init__(self, origin: float) -> None:
        # Times are kept relative to ``origin``: epoch seconds are ~2e9, where a double's
        # resolution (2e-7 s) would accumulate into visible error over a burst.
        self.origin = origin
        self.r_tat = 0.0
        self.t_tat = 0.0
        self.day = -1
        self.day_used = 0
        self.inflight = 0


class InMemoryRateLimiter:
    """A single replica's limiter: exact, a few microseconds per acquire, never unavailable.

    Use it for one gateway process; with several replicas each would grant the full budget,
    so they share a ``RedisRateLimiter`` instead. Safe within one event loop (no awaits
    between check and reserve).
    """

    def __init__(self) -> None:
        self._budgets: dict[str, _Budget] = {}

    def _state(self, b: _Budget, now: float) -> _State:
        day = int(now // DAY)
        if b.day != day:
            b.day, b.day_used = day, 0
        rel = now - b.origin
        return _State(max(b.r_tat - rel, 0.0), max(b.t_tat - rel, 0.0), b.day_used, b.inflight)

    async def acquire(self, deployer_id: str, limits: Limits, *, estimated_tokens: int, now: float) -> LimitDecision:
        """Reserve or deny (see the module docstring)."""
        if _unlimited(limits):
            return ALLOWED_UNLIMITED
        b = self._budgets.get(deployer_id)
        if b is None:
            b = self._budgets[deployer_id] = _Budget(now)
        est = max(0, estimated_tokens)
        s = self._state(b, now)
        if not _fits(limits, est, s):
            return _deny(deployer_id, limits, est, s, now)
        rel = now - b.origin
        if limits.rpm:
            b.r_tat = rel + s.r_wait + PERIOD / limits.rpm
        if limits.tpm:
            b.t_tat = rel + s.t_wait + est * PERIOD / limits.tpm
        b.day_used += est
        if limits.concurrency:
            b.inflight += 1
        return LimitDecision(allowed=True, headers=_headers(limits, est, s, True))

    async def settle(self, deployer_id: str, limits: Limits, *, estimated_tokens: int, actual_tokens: int, now: float) -> None:
        """Move the token reservation to ``actual_tokens`` and free one held slot."""
        b = self._budgets.get(deployer_id)
        if b is None:
            return
        delta = max(0, actual_tokens) - max(0, estimated_tokens)
        if delta and limits.tpm:
            # A charge starts from a full bucket at the earliest; a refund below now is moot.
            base = max(b.t_tat, now - b.origin) if delta > 0 else b.t_tat
            b.t_tat = base + delta * PERIOD / limits.tpm
        if delta:
            day = int(now // DAY)
            if b.day != day:
                b.day, b.day_used = day, 0
            b.day_used = max(0, b.day_used + delta)
        if b.inflight > 0:
            b.inflight -= 1

    async def close(self) -> None:
        self._budgets.clear()


_ACQUIRE_LUA = """
-- KEYS: 1 gcra hash {r, t}, 2 today's token counter, 3 concurrency slots (zset: member -> expiry)
-- ARGV: now_ms rpm tpm daily conc est day_end_ms slot slot_expiry_ms   (0 = unlimited)
local now = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2]) local tpm = tonumber(ARGV[3])
local daily = tonumber(ARGV[4]) local conc = tonumber(ARGV[5])
local est = tonumber(ARGV[6]) local day_end = tonumber(ARGV[7])
local P = 60000 local EPS = 0.001
-- Times are stored relative to the key's origin 'o' (ms): absolute epoch milliseconds
-- (~2e12) would make a double's rounding accumulate over a burst.
local g = redis.call('HMGET', KEYS[1], 'o', 'r', 't')
local o = tonumber(g[1])
if o == nil then o = math.floor(now) redis.call('HSET', KEYS[1], 'o', string.format('%d', o)) end
local abs = now
now = now - o
local r = tonumber(g[2]) or now if r < now then r = now end
local t = tonumber(g[3]) or now if t < now then t = now end
local used = 0
if daily > 0 then used = tonumber(redis.call('GET', KEYS[2]) or '0') end
local inflight = 0
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', abs)
  inflight = redis.call('ZCARD', KEYS[3])
end
local nr = r local nt = t local ok = 1
if rpm > 0 then nr = r + P / rpm if nr - now > P + EPS then ok = 0 end end
if tpm > 0 then nt = t + est * P / tpm if nt - now > P + EPS then ok = 0 end end
if daily > 0 and used + est > daily then ok = 0 end
if conc > 0 and inflight >= conc then ok = 0 end
if ok == 1 then
  if rpm > 0 then redis.call('HSET', KEYS[1], 'r', string.format('%.17g', nr)) end
  if tpm > 0 then redis.call('HSET', KEYS[1], 't', string.format('%.17g', nt)) end
  redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(nr, nt) - now) + 1000)
  if daily > 0 and est > 0 then
    redis.call('INCRBY', KEYS[2], est)
    redis.call('PEXPIREAT', KEYS[2], day_end + 3600000)
  end
  if conc > 0 then
    local exp = tonumber(ARGV[9])
    redis.call('ZADD', KEYS[3], exp, ARGV[8])
    redis.call('PEXPIRE', KEYS[3], math.ceil(exp - abs) + 60000)
  end
end
return {ok, string.format('%.17g', r - now), string.format('%.17g', t - now), used, inflight}
"""

_SETTLE_LUA = """
-- KEYS: as acquire. ARGV: now_ms tpm daily delta_tokens day_end_ms slot('' = none)
local now = tonumber(ARGV[1]) local tpm = tonumber(ARGV[2]) local daily = tonumber(ARGV[3])
local delta = tonumber(ARGV[4]) local day_end = tonumber(ARGV[5])
if tpm > 0 and delta ~= 0 then
  local g = redis.call('HMGET', KEYS[1], 'o', 't')
  local o = tonumber(g[1])
  if o == nil then o = math.floor(now) redis.call('HSET', KEYS[1], 'o', string.format('%d', o)) end
  now = now - o
  local t = tonumber(g[2])
  if delta > 0 and (t == nil or t < now) then t = now end
  if t ~= nil then
    t = t + delta * 60000 / tpm
    redis.call('HSET', KEYS[1], 't', string.format('%.17g', t))
    if redis.call('PTTL', KEYS[1]) < t - now + 1000 then redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(t - now, 0)) + 1000) end
  end
end
if daily > 0 and delta ~= 0 then
  if delta > 0 then
    redis.call('INCRBY', KEYS[2], delta)
    redis.call('PEXPIREAT', KEYS[2], day_end + 3600000)
  elseif redis.call('EXISTS', KEYS[2]) == 1 then
    if redis.call('INCRBY', KEYS[2], delta) < 0 then redis.call('SET', KEYS[2], 0, 'KEEPTTL') end
  end
end
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[3], ARGV[6]) end
return 1
"""

_REFRESH_LUA = """
-- KEYS[1]: a deployer's slot zset; ARGV[1]: milliseconds to add; ARGV[2..]: slots still held
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then redis.call('ZINCRBY', KEYS[1], ARGV[1], ARGV[i]) end
end
redis.call('PEXPIRE', KEYS[1], 120000 + math.ceil(tonumber(ARGV[1])))
return 1
"""

_CLAIM_LUA = """
-- A lease: give back what the last lease left (or charge its debt), then take up to a share.
-- KEYS: 1 gcra hash {o, r, t}, 2 today's token counter
-- ARGV: now_ms rpm tpm daily ret_requests ret_tokens ret_daily want_requests want_tokens min_tokens day_end_ms
-- (0 = unlimited; ret_tokens < 0 is a debt; want_requests 0 = give back only)
local now = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2]) local tpm = tonumber(ARGV[3]) local daily = tonumber(ARGV[4])
local ret_r = tonumber(ARGV[5]) local ret_t = tonumber(ARGV[6]) local ret_d = tonumber(ARGV[7])
local want_r = tonumber(ARGV[8]) local want_t = tonumber(ARGV[9]) local min_t = tonumber(ARGV[10])
local day_end = tonumber(ARGV[11])
local P = 60000 local EPS = 0.001
local g = redis.call('HMGET', KEYS[1], 'o', 'r', 't')
local o = tonumber(g[1])
if o == nil then o = math.floor(now) redis.call('HSET', KEYS[1], 'o', string.format('%d', o)) end
now = now - o
local r = tonumber(g[2]) local t = tonumber(g[3])
if rpm > 0 and ret_r ~= 0 and r ~= nil then r = r - ret_r * P / rpm end
if tpm > 0 and ret_t ~= 0 then
  if ret_t < 0 and (t == nil or t < now) then t = now end
  if t ~= nil then t = t - ret_t * P / tpm end
end
if r == nil or r < now then r = now end
if t == nil or t < now then t = now end
local used = 0
if daily > 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if ret_d ~= 0 then
    used = used - ret_d
    if used < 0 then used = 0 end
  end
end
local n = want_r local tok = want_t local ok = 1
if want_r <= 0 then
  ok = 0 n = 0 tok = 0
else
  if rpm > 0 then
    local room = math.floor((P + EPS - (r - now)) * rpm / P)
    if room < n then n = room end
  end
  if tpm > 0 then
    local room = math.floor((P + EPS - (t - now)) * tpm / P)
    if room < tok then tok = room end
  end
  if daily > 0 and daily - used < tok then tok = daily - used end
  if n < 1 or tok < min_t then ok = 0 n = 0 tok = 0 end
end
local r_wait = r - now local t_wait = t - now local used_before = used
if rpm > 0 then r = r + n * P / rpm redis.call('HSET', KEYS[1], 'r', string.format('%.17g', r)) end
if tpm > 0 then t = t + tok * P / tpm redis.call('HSET', KEYS[1], 't', string.format('%.17g', t)) end
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(r, t) - now) + 1000)
if daily > 0 and (ret_d ~= 0 or tok > 0) then
  redis.call('SET', KEYS[2], string.format('%d', used + tok), 'PXAT', string.format('%d', day_end + 3600000))
end
return {ok, string.format('%.17g', r_wait), string.format('%.17g', t_wait), used_before, n, tok}
"""


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

    def state(self, now: float) -> _State:
        elapsed = now - self.origin
        return _State(max(self.r_wait - elapsed, 0.0), max(self.t_wait - elapsed, 0.0), self.day_used, 0)


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
        self._acquire_script = self._redis.register_script(_ACQUIRE_LUA)
        self._settle_script = self._redis.register_script(_SETTLE_LUA)
        self._refresh_script = self._redis.register_script(_REFRESH_LUA)
        self._retry_backend_after = retry_backend_after
        self._down_until = 0.0  # monotonic; deny without trying until then
        self._slot_ttl = slot_ttl
        self._instance = uuid.uuid4().hex[:12]
        self._seq = itertools.count(1)
        self._slots: dict[str, list[str]] = {}  # deployer -> slots this instance holds
        self._refresher: asyncio.Task[None] | None = None
        self._claim_script = self._redis.register_script(_CLAIM_LUA)
        self._lease_fraction = max(0.0, lease_fraction)
        self._lease_ttl = lease_ttl
        self._leases: dict[str, _Lease] = {}
        self._claims: dict[str, asyncio.Future[_State | None]] = {}  # deployer -> a claim in flight (-> its refusal)
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
        if _unlimited(limits):
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
        s = _State(float(r_wait) / 1000, float(t_wait) / 1000, int(used), int(inflight))
        if not int(ok):
            return _deny(deployer_id, limits, est, s, now)
        if slot:
            self._slots.setdefault(deployer_id, []).append(slot)
            self._ensure_refresher()
        return LimitDecision(allowed=True, headers=_headers(limits, est, s, True))

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
            if refused is not None and not _fits(limits, est, refused):
                return _deny(deployer_id, limits, est, refused, now)
        if time.monotonic() < self._down_until:
            return self._unavailable(deployer_id)
        done: asyncio.Future[_State | None] = asyncio.get_running_loop().create_future()
        self._claims[deployer_id] = done
        refusal: _State | None = None
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
        return LimitDecision(allowed=True, headers=_headers(limits, est, s, True))

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

    async def _claim(self, deployer_id: str, limits: Limits, est: int, now: float) -> tuple[LimitDecision, _State | None]:
        """Give back the old lease and take a new one in one ``EVALSHA``; admit this request from it.

        Also returns the shared state when Redis refused (for the requests waiting on this claim)."""
        old = self._leases.pop(deployer_id, None)
        ret_r, ret_t, ret_d = self._give_back(old, now)
        if old is not None and old.limits != limits:  # the plan changed: give back under the old limits
            await self._return(deployer_id, old, now)
            ret_r = ret_t = ret_d = 0
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
        s = _State(float(r_wait) / 1000, float(t_wait) / 1000, int(used), 0)
        if not int(ok):
            return _deny(deployer_id, limits, est, s, now), s
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
