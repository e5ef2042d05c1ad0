"""The /v1 surface with the official ``openai`` SDK (sync, async, streaming) and raw HTTP for bad input."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from gateway_world import MODEL, World, chat, log_records, wait_for_records
from releasegate.gateway.service import GatewayService
from releasegate.mockupstream import MockUpstream

Gateway = tuple[str, GatewayService]


def sdk(gw: Gateway, key: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw[0] + "/v1", api_key=key, max_retries=kw.pop("max_retries", 0), timeout=10, **kw)


def test_models_lists_what_the_key_may_use(gateway: Gateway, world: World) -> None:
    ids = [m.id for m in sdk(gateway, world.key("acme-internal/customer-support")).models.list()]
    assert ids == [MODEL, f"{MODEL}:atlas", f"{MODEL}:v1", f"{MODEL}:v2"]
    # bluebank is approved but its tier is not in the current stage: nothing to list.
    assert [m.id for m in sdk(gateway, world.key("bluebank/customer-support")).models.list()] == []
    assert sdk(gateway, world.key("acme-internal/customer-support")).models.retrieve(f"{MODEL}:v2").id == f"{MODEL}:v2"
    with pytest.raises(openai.NotFoundError):
        sdk(gateway, world.key("bluebank/customer-support")).models.retrieve(f"{MODEL}:v2")


def test_sync_chat_is_forwarded_with_our_identity_not_the_clients(
        gateway: Gateway, world: World, upstream: MockUpstream) -> None:
    key = world.key("acme-internal/customer-support")
    raw = sdk(gateway, key).chat.completions.with_raw_response.create(
        **chat(), extra_headers={"x-releasegate-deployer": "dep_spoofed", "x-releasegate-use-case": "anything"})
    r = raw.parse()
    assert r.choices[0].message.content == "[mock atlas-8b-v1] you said: hello there"
    request_id = raw.headers["x-request-id"]
    assert raw.headers["x-releasegate-version"] == f"{MODEL}:v1"
    seen = upstream.state.snapshot(request_id=request_id)
    assert len(seen) == 1
    headers, body = seen[0]["headers"], seen[0]["body"]
    assert body["model"] == "atlas-8b-v1"  # the upstream's name for the version
    assert body["max_tokens"] == 1024  # the use case's bound, applied when the client set none
    assert key not in str(headers)  # the client's key never leaves the gateway
    assert headers["x-releasegate-deployer"] == world.deployer_ids["acme-internal"]
    assert headers["x-releasegate-use-case"] == "customer-support"
    records = wait_for_records(gateway[1], request_id, ("start", "end"))
    start = next(r for r in records if r["kind"] == "start")
    end = next(r for r in records if r["kind"] == "end")
    assert start["decision"] == "allow" and start["version"] == "v1" and start["stage"] == "internal"
    assert end["status"] == 200 and end["total_tokens"] == r.usage.total_tokens and end["latency_ms"] > 0


def test_upstream_key_is_injected_and_never_logged(world: World, start_gateway: Callable[..., Gateway],
                                                   upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_UPSTREAM_KEY", "sk-upstream-secret-123")
    gw = start_gateway(world.ctx)
    raw = sdk(gw, world.key("acme-internal/customer-support")).chat.completions.with_raw_response.create(
        **chat(model=f"{MODEL}:v1"))
    seen = upstream.state.snapshot(request_id=raw.headers["x-request-id"])
    assert seen[0]["headers"]["authorization"] == "Bearer sk-upstream-secret-123"
    wait_for_records(gw[1], raw.headers["x-request-id"])
    assert "sk-upstream-secret-123" not in str(log_records(gw[1]))


async def test_async_client(gateway: Gateway, world: World) -> None:
    client = openai.AsyncOpenAI(base_url=gateway[0] + "/v1", api_key=world.key("acme-internal/code-assistant"),
                                max_retries=0, timeout=10)
    results = await asyncio.gather(*[
        client.chat.completions.create(**chat(f"question {i}", model=f"{MODEL}:v2")) for i in range(8)])
    assert {r.choices[0].message.content for r in results} == {
        f"[mock atlas-8b-v2] you said: question {i}" for i in range(8)}
    done = await client.completions.create(model=MODEL, prompt="complete me")
    assert done.choices[0].text
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await client.embeddings.create(model=MODEL, input="embed me")
    assert exc.value.code == "scope_violation"
    await client.close()


def test_stream_chunks_arrive_as_the_upstream_sends_them(gateway: Gateway, world: World) -> None:
    stream = sdk(gateway, world.key("acme-internal/customer-support")).chat.completions.create(
        **chat(), stream=True, extra_headers={"x-mock-chunk-delay": "0.15", "x-mock-chunks": "4"})
    arrivals: list[float] = []
    text = ""
    for chunk in stream:
        assert chunk.usage is None  # the gateway asked for usage upstream and keeps that chunk to itself
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            text += chunk.choices[0].delta.content
    assert len(arrivals) == 4 and text
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(g > 0.08 for g in gaps), gaps  # not buffered: each chunk came when it was sent


async def test_stream_usage_is_passed_through_when_asked_and_settled(gateway: Gateway, world: World) -> None:
    client = openai.AsyncOpenAI(base_url=gateway[0] + "/v1", api_key=world.key("acme-internal/customer-support"),
                                max_retries=0, timeout=10)
    raw = await client.chat.completions.with_raw_response.create(
        **chat("count me"), stream=True, stream_options={"include_usage": True})
    usage = None
    async for chunk in raw.parse():
        if chunk.usage is not None:
            usage = chunk.usage
    await client.close()
    assert usage is not None and usage.total_tokens > 0
    records = await asyncio.to_thread(wait_for_records, gateway[1], raw.headers["x-request-id"])
    assert next(r for r in records if r["kind"] == "end")["total_tokens"] == usage.total_tokens


def test_errors_raise_the_sdk_classes_and_are_not_retried(gateway: Gateway, world: World) -> None:
    key = world.key("acme-internal/customer-support")
    with pytest.raises(openai.AuthenticationError) as auth:
        sdk(gateway, "rgk_nope", max_retries=3).chat.completions.create(**chat())
    assert auth.value.code == "invalid_api_key"
    assert auth.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(gateway, key, max_retries=3).chat.completions.create(**chat(), max_tokens=4096)
    assert denied.value.body["message"] == "use case 'customer-support' allows max_tokens ≤ 1024; the request asked for 4096"
    assert denied.value.body["param"] == "bounds.max_tokens"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(gateway, key).chat.completions.create(**chat(model="acme/other-model"))
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(gateway, key).chat.completions.create(model=MODEL, messages="not a list")  # type: ignore[arg-type]
    assert bad.value.code == "invalid_request" and bad.value.body["param"] == "messages"
    # max_retries=3 above: refusals a retry cannot fix reached the gateway once each.
    wait_for_records(gateway[1], denied.value.response.headers["x-request-id"])
    refusals = [r for r in log_records(gateway[1]) if r.get("reason_code") in ("invalid_api_key", "scope_violation")]
    assert len(refusals) == 2
    scope = next(r for r in refusals if r["reason_code"] == "scope_violation")
    assert scope["scope_violation"] is True and scope["use_case"] == "customer-support" and scope["rule"] == "bounds.max_tokens"
    metrics = httpx.get(gateway[0] + "/gateway/metrics").text
    assert (f'releasegate_scope_violations_total{{deployer="{world.deployer_ids["acme-internal"]}",model="{MODEL}",'
            'rule="bounds.max_tokens",stage="internal",use_case="customer-support",version="v1"} 1.0') in metrics


def test_upstream_failures_are_clear_and_others_keep_being_served(gateway: Gateway, world: World) -> None:
    client = sdk(gateway, world.key("acme-internal/customer-support"))
    with pytest.raises(openai.InternalServerError) as garbage:
        client.chat.completions.create(**chat(), extra_headers={"x-mock-garbage": "1"})
    assert garbage.value.status_code == 502 and garbage.value.code == "upstream_error"
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(**chat(), extra_headers={"x-mock-status": "500"})
    assert failed.value.status_code == 502 and "HTTP 500" in failed.value.message
    # An upstream that hangs past the version's timeout (1.5 s) is a 504 while others are served meanwhile.
    hung: dict[str, Any] = {}

    def hang() -> None:
        try:
            client.chat.completions.create(**chat(), extra_headers={"x-mock-delay": "10"})
        except openai.APIStatusError as exc:
            hung["error"] = exc

    t = threading.Thread(target=hang)
    t.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert client.chat.completions.create(**chat()).choices[0].message.content
    assert time.monotonic() - started < 1.0
    t.join(10)
    assert hung["error"].status_code == 504 and hung["error"].code == "upstream_timeout"


def test_bad_input_gets_clear_errors(gateway: Gateway, world: World) -> None:
    url, key = gateway[0], world.key("acme-internal/customer-support")
    auth = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/v1/chat/completions", content=b'{"model": ', headers={**auth, "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = c.post("/v1/chat/completions", content=b"model=x", headers={**auth, "content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        r = c.post("/v1/chat/completions", json={"messages": []}, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_required"
        r = c.post("/v1/chat/completions", json=[1, 2], headers=auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        r = c.get("/v1/chat/completions", headers=auth)
        assert r.status_code == 405
        r = c.post("/v1/nope", json={}, headers=auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
        big = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (5 * 1024 * 1024) + b'"}]}'
        r = c.post("/v1/chat/completions", content=big, headers={**auth, "content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert r.headers["x-should-retry"] == "false"

        def chunked() -> Any:  # no content-length: the limit is enforced while reading
            yield b'{"model": "x", "messages": [{"role": "user", "content": "'
            for _ in range(80):
                yield b"a" * 65536
            yield b'"}]}'

        r = c.post("/v1/chat/completions", content=chunked(), headers={**auth, "content-type": "application/json"})
        assert r.status_code == 413
    with pytest.raises(openai.APIStatusError) as too_big:
        sdk(gateway, key).chat.completions.create(**chat("b" * (5 * 1024 * 1024)))
    assert too_big.value.status_code == 413
    wait_for_records(gateway[1], too_big.value.response.headers["x-request-id"])
    codes = {r.get("reason_code") for r in log_records(gateway[1])}
    assert {"invalid_json", "unsupported_media_type", "model_required", "request_too_large"} <= codes


def test_slow_client_times_out_without_holding_up_others(world: World, start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(world.ctx, body_timeout=0.5)
    key = world.key("acme-internal/customer-support")
    result: dict[str, Any] = {}

    def slow_body() -> Any:
        yield b'{"model": "acme/atlas-8b", '
        time.sleep(1.5)
        yield b'"messages": []}'

    def slow() -> None:
        with httpx.Client(timeout=10) as c:
            result["r"] = c.post(gw[0] + "/v1/chat/completions", content=slow_body(),
                                 headers={"authorization": f"Bearer {key}", "content-type": "application/json"})

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.1)
    assert sdk(gw, key).chat.completions.create(**chat()).choices
    t.join(10)
    assert result["r"].status_code == 408 and result["r"].json()["error"]["code"] == "request_timeout"


def test_health_endpoint(gateway: Gateway) -> None:
    r = httpx.get(gateway[0] + "/gateway/healthz")
    assert r.status_code == 200 and r.json()["ok"] is True and r.json()["revision"] > 0


def test_a_client_leaving_mid_stream_stops_the_upstream_stream(gateway: Gateway, world: World) -> None:
    key = world.key("acme-internal/customer-support")
    with httpx.Client(timeout=10) as c, c.stream(
            "POST", gateway[0] + "/v1/chat/completions", json=chat(stream=True),
            headers={"authorization": f"Bearer {key}", "x-mock-chunk-delay": "0.1", "x-mock-chunks": "40"}) as r:
        request_id = r.headers["x-request-id"]
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    started = time.monotonic()
    end = next(x for x in wait_for_records(gateway[1], request_id) if x["kind"] == "end")
    assert end["client_disconnected"] is True
    assert end["latency_ms"] < 2500  # not the 4 s the whole stream would take
    assert time.monotonic() - started < 3
