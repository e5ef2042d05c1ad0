"""The admission rule both backends share: GCRA for per-minute limits, a day counter, slots.

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

Pure: no I/O, no clock of its own; a backend supplies the deployer's state (``State``) and ``now``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from releasegate.gateway.types import LimitDecision
from releasegate.plan.schema import Limits

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


class State(NamedTuple):
    """What a backend knows about a deployer before this request (times relative to now)."""

    r_wait: float  # max(tat_requests - now, 0)
    t_wait: float  # max(tat_tokens - now, 0); may exceed PERIOD after an under-estimate
    day_used: int
    inflight: int


def fits(limits: Limits, est: int, s: State) -> bool:
    """The admission rule; the Redis Lua script implements exactly the same inequalities."""
    if limits.rpm and s.r_wait + PERIOD / limits.rpm > PERIOD + EPS:
        return False
    if limits.tpm and s.t_wait + est * PERIOD / limits.tpm > PERIOD + EPS:
        return False
    if limits.daily_tokens and s.day_used + est > limits.daily_tokens:
        return False
    return not (limits.concurrency and s.inflight >= limits.concurrency)


def headers_for(limits: Limits, est: int, s: State, allowed: bool) -> dict[str, str]:
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


def deny(deployer_id: str, limits: Limits, est: int, s: State, now: float) -> LimitDecision:
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
        allowed=False, headers=headers_for(limits, est, s, False),
        retry_after=None if math.isinf(retry) else retry, reason=reason, message=message,
    )


def unlimited(limits: Limits) -> bool:
    return limits.rpm is None and limits.tpm is None and limits.daily_tokens is None and limits.concurrency is None
