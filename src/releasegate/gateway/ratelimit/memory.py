"""One replica's limiter, in process: exact, a few microseconds per acquire, never unavailable."""

from __future__ import annotations

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
from releasegate.gateway.types import LimitDecision
from releasegate.plan.schema import Limits


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

    def _state(self, b: _Budget, now: float) -> State:
        day = int(now // DAY)
        if b.day != day:
            b.day, b.day_used = day, 0
        rel = now - b.origin
        return State(max(b.r_tat - rel, 0.0), max(b.t_tat - rel, 0.0), b.day_used, b.inflight)

    async def acquire(self, deployer_id: str, limits: Limits, *, estimated_tokens: int, now: float) -> LimitDecision:
        """Reserve or deny (see the module docstring)."""
        if unlimited(limits):
            return ALLOWED_UNLIMITED
        b = self._budgets.get(deployer_id)
        if b is None:
            b = self._budgets[deployer_id] = _Budget(now)
        est = max(0, estimated_tokens)
        s = self._state(b, now)
        if not fits(limits, est, s):
            return deny(deployer_id, limits, est, s, now)
        rel = now - b.origin
        if limits.rpm:
            b.r_tat = rel + s.r_wait + PERIOD / limits.rpm
        if limits.tpm:
            b.t_tat = rel + s.t_wait + est * PERIOD / limits.tpm
        b.day_used += est
        if limits.concurrency:
            b.inflight += 1
        return LimitDecision(allowed=True, headers=headers_for(limits, est, s, True))

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
