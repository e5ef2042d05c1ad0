"""Upstream pools: failover and passive health, credentials, the SSE relay that keeps usage for the gateway."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from releasegate.gateway.routing import UpstreamHealth, build_backend
from releasegate.gateway.upstream import SSERelay, UpstreamClient, UpstreamFailure, usage_of
from releasegate.mockupstream import MockUpstream
from releasegate.plan.schema import ApiBackend


def closed_port() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_a_dead_upstream_is_skipped_for_its_cooldown(mock: tuple[MockUpstream, str]) -> None:
    dead, alive = closed_port(), mock[1] + "/v1"
    backend, _ = build_backend("m:v1", "v1", ApiBackend(upstreams=[dead, alive], upstream_model="atlas-8b-v1"), env={})
    health = UpstreamHealth(cooldown=30)
    client = UpstreamClient(health)
    body = orjson.dumps({"model": "atlas-8b-v1", "messages": [{"role": "user", "content": "hi"}]})
    try:
        for _ in range(4):
            response, used = await client.open(backend, "/chat/completions", body, [("content-type", "application/json")])
            assert used == alive and response.status == 200
            assert usage_of(orjson.loads(await response.read())) is not None
            response.close()
        assert health.cooling() == [dead]
        assert health.order((dead, alive)) == [alive, dead]  # healthy first, the cooling one as a last resort
        only_dead, _ = build_backend("m:v2", "v2", ApiBackend(upstreams=[dead]), env={})
        with pytest.raises(UpstreamFailure) as exc:
            await client.open(only_dead, "/chat/completions", body, [])
        assert exc.value.code == "upstream_unavailable"
    finally:
        await client.aclose()


def test_upstream_credentials_from_env_or_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("sk-from-file\n")
    api = ApiBackend(upstreams=["http://127.0.0.1:1/v1"], upstream_key_env="UP_KEY", upstream_key_file="key",
                     timeout=timedelta(seconds=7))
    from_env, problem = build_backend("m:v1", "v1", api, env={"UP_KEY": "sk-env"}, base_dir=str(tmp_path))
    assert from_env.authorization == "Bearer sk-env" and problem is None and from_env.timeout == 7
    from_file, _ = build_backend("m:v1", "v1", api, env={}, base_dir=str(tmp_path))
    assert from_file.authorization == "Bearer sk-from-file"
    assert "sk-from-file" not in repr(from_file)
    missing, problem = build_backend("m:v1", "v1", ApiBackend(upstreams=["http://x:1"], upstream_key_env="NOPE"), env={})
    assert missing.authorization is None and problem is not None and "NOPE" in problem


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_sse_relay_forwards_whole_events_and_keeps_the_usage_chunk() -> None:
    content = event({"choices": [{"delta": {"content": "hi"}}], "usage": None})
    usage = event({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}})
    relay = SSERelay(strip_usage=True)
    assert relay.feed(content[:10]) == b""  # half an event waits for its end
    assert relay.feed(content[10:]) == content
    assert relay.feed(usage + b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert relay.usage is not None and relay.usage.total_tokens == 5
    passing = SSERelay(strip_usage=False)
    assert passing.feed(content + usage) == content + usage and passing.usage is not None
    responses = SSERelay(strip_usage=True)
    done = b"event: response.completed\n" + event({"type": "response.completed", "response": {
        "usage": {"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}}})
    assert responses.feed(done) == done  # not a chat usage chunk: passed through, usage still read
    assert responses.usage is not None and responses.usage.total_tokens == 10
