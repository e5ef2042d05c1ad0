"""The narrow interfaces the gateway is written against (STYLE.md §2, §3).

Implementations: ``gateway.ratelimit`` (in-memory, Redis), ``gateway.requestlog``
(durable local log + shipper), ``gateway.notify`` (PostgreSQL LISTEN/NOTIFY, Redis pub/sub,
polling). Each says in its docstring how it declines and how it denies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from releasegate.plan.schema import Limits


@dataclass(frozen=True)
class LimitDecision:
    """The outcome of asking for budget. ``headers`` are OpenAI's ``x-ratelimit-*`` headers."""

    allowed: bool
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None  # seconds, when not allowed
    reason: str | None = None  # which limit: rpm | tpm | daily_tokens | concurrency
    message: str | None = None


class RateLimiter(Protocol):
    """Per-deployer budgets: requests/tokens per minute, tokens per UTC day, concurrency.

    ``acquire`` reserves one request, ``estimated_tokens`` tokens and one concurrency slot,
    or denies without reserving anything. ``settle`` corrects the token reservation to the
    response's real usage and frees the concurrency slot; it must be called exactly once for
    every allowed ``acquire`` (also when the upstream failed: actual_tokens=0).
    A limiter that cannot reach its backend denies (fail closed) with reason ``limiter_unavailable``.
    """

    async def acquire(self, deployer_id: str, limits: Limits, *, estimated_tokens: int, now: float) -> LimitDecision: ...

    async def settle(self, deployer_id: str, limits: Limits, *, estimated_tokens: int, actual_tokens: int, now: float) -> None: ...

    async def close(self) -> None: ...


class RequestLog(Protocol):
    """Durable record of every request, written before it is forwarded.

    ``record_start`` returns only once the record is on disk (fsync'd, group-committed with
    concurrent requests); if it raises, the request must not be forwarded (fail closed).
    ``record_end`` is durable soon after (same group commit) and never blocks the response;
    ``record_flags`` likewise, for what detectors found after the response (``detectors.runner``).
    """

    async def record_start(self, record: dict[str, Any]) -> None: ...

    def record_end(self, record: dict[str, Any]) -> None: ...

    def record_flags(self, record: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class ChangeNotifier(Protocol):
    """Fan-out of "the store changed, revision N": the control plane publishes, replicas listen.

    Listeners must also poll (``snapshot_poll_interval``) because notifications can be lost.
    """

    async def publish(self, revision: int) -> None: ...

    async def listen(self, on_change: Callable[[int], Awaitable[None]]) -> None: ...

    async def close(self) -> None: ...
