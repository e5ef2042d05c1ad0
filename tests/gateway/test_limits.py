"""Limits through the gateway: 429 with OpenAI's headers, and one budget shared by replicas through Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from gateway_world import EXAMPLE, World, build_world, chat, make_ctx, plan_text, wait_for_records
from releasegate.gateway.ratelimit import RedisRateLimiter
from releasegate.gateway.service import GatewayService
from releasegate.mockupstream import MockUpstream

REDIS_URL = "redis://127.0.0.1:6379/0"
Gateway = tuple[str, GatewayService]


@pytest.fixture(scope="module")
def limited(mock: tuple[MockUpstream, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The example release with the 'internal' stage limited to 3 requests per minute."""
    tmp = tmp_path_factory.mktemp("limits")
    ctx = make_ctx(f"sqlite:///{tmp / 'rg.db'}", tmp / "data")
    yield build_world(ctx, plan_text(EXAMPLE.read_text(), mock[1] + "/v1", limits="{rpm: 3, tpm: 100000}"))
    ctx.db.dispose()


def client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw[0] + "/v1", api_key=key, max_retries=0, timeout=10)


def test_rate_limit_is_a_429_with_openai_headers(limited: World, start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(limited.ctx)
    c = client(gw, limited.key("acme-internal/customer-support"))
    for i in range(3):
        raw = c.chat.completions.with_raw_response.create(**chat())
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(2 - i)
    with pytest.raises(openai.RateLimitError) as exc:
        c.chat.completions.create(**chat())
    r = exc.value.response
    assert exc.value.code == "rate_limited" and exc.value.body["param"] == "rpm"
    assert int(r.headers["retry-after"]) >= 1 and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in r.headers  # waiting helps: the SDK may retry after Retry-After
    record = next(x for x in wait_for_records(gw[1], r.headers["x-request-id"]) if x["kind"] == "end")
    assert record["reason_code"] == "rate_limited" and record["status"] == 429


def test_redis_shares_one_budget_between_replicas(limited: World, start_gateway: Callable[..., Gateway]) -> None:
    prefix = f"test:gw:{uuid.uuid4().hex[:10]}:"
    a = start_gateway(limited.ctx, limiter=RedisRateLimiter(REDIS_URL, prefix=prefix))
    b = start_gateway(limited.ctx, limiter=RedisRateLimiter(REDIS_URL, prefix=prefix))
    key = limited.key("acme-internal/code-assistant")
    outcomes: list[Any] = []
    for gw in (a, b, a, b, a):
        try:
            client(gw, key).chat.completions.create(**chat())
            outcomes.append("ok")
        except openai.RateLimitError:
            outcomes.append(429)
    assert outcomes == ["ok", "ok", "ok", 429, 429]  # 3 per minute in total, not 3 per replica


def test_in_memory_budgets_are_per_replica(limited: World, start_gateway: Callable[..., Gateway]) -> None:
    a, b = start_gateway(limited.ctx), start_gateway(limited.ctx)
    key = limited.key("acme-internal/code-assistant")
    for gw in (a, a, a, b, b, b):
        client(gw, key).chat.completions.create(**chat())
    with pytest.raises(openai.RateLimitError):
        client(a, key).chat.completions.create(**chat())
