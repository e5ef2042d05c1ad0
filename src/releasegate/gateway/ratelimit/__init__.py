"""Per-deployer budgets: requests and tokens per minute, tokens per UTC day, requests in flight.

Contract (``RateLimiter`` in ``gateway.types``): ``acquire`` reserves one request,
``estimated_tokens`` tokens and one concurrency slot (only when ``limits.concurrency`` is
set), or denies and reserves nothing. ``settle`` moves the token reservation to the actual
usage (refunds when the estimate was high) and frees one slot. ``settle`` is not told when
the request started, so a correction lands in the minute and UTC day of the settlement;
daily counters never go below zero. Limits all unset: allowed without touching any backend.
How it denies: ``LimitDecision(allowed=False, reason=rpm|tpm|daily_tokens|concurrency|
limiter_unavailable, retry_after=seconds, message=...)``; ``retry_after`` is ``None`` when
waiting cannot help (the request alone needs more tokens than the limit).

Modules: ``gcra`` (the admission rule, pure), ``memory`` (one replica), ``shared`` (several
replicas through Redis) and ``scripts`` (its Lua).
"""

from releasegate.gateway.ratelimit.gcra import format_duration
from releasegate.gateway.ratelimit.memory import InMemoryRateLimiter
from releasegate.gateway.ratelimit.shared import RedisRateLimiter

__all__ = ["InMemoryRateLimiter", "RedisRateLimiter", "format_duration"]
