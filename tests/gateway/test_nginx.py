"""nginx ``auth_request`` in front of the mock model server, deciding through /authz/v1/check (real nginx)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from gateway.nginx import error_log, nginx_binary, run_nginx
from gateway_world import EXAMPLE, MODEL, World, build_world, chat, make_ctx, plan_text
from processes import free_port
from releasegate.gateway.service import GatewayService
from releasegate.mockupstream import MockUpstream

Gateway = tuple[str, GatewayService]


def site(port: int, gateway: str, model_server: str) -> str:
    """The documented nginx site (docs/gateway.md): auth_request to releasegate, then proxy to the model."""
    g, m = urlsplit(gateway).netloc, urlsplit(model_server).netloc
    return f"""
    upstream releasegate {{ server {g}; keepalive 16; }}
    upstream model_server {{ server {m}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location /v1/ {{
            auth_request /_releasegate_check;
            auth_request_set $rg_deployer $upstream_http_x_releasegate_deployer;
            auth_request_set $rg_use_case $upstream_http_x_releasegate_use_case;
            auth_request_set $rg_version $upstream_http_x_releasegate_version;
            auth_request_set $rg_upstream_model $upstream_http_x_releasegate_upstream_model;
            auth_request_set $rg_request_id $upstream_http_x_request_id;
            auth_request_set $rg_reason $upstream_http_x_releasegate_reason;
            auth_request_set $rg_status $upstream_http_x_releasegate_status;
            auth_request_set $rg_error $upstream_http_x_releasegate_error;
            auth_request_set $rg_retry_after $upstream_http_retry_after;
            error_page 401 = @rg_401;
            error_page 403 = @rg_403;
            error_page 500 = @rg_500;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header X-Releasegate-Deployer $rg_deployer;
            proxy_set_header X-Releasegate-Use-Case $rg_use_case;
            proxy_set_header X-Releasegate-Version $rg_version;
            proxy_set_header X-Releasegate-Upstream-Model $rg_upstream_model;
            proxy_set_header X-Request-Id $rg_request_id;
            proxy_hide_header X-Request-Id;
            add_header X-Request-Id $rg_request_id always;
            proxy_buffering off;
            proxy_pass http://model_server;
        }}
        location = /_releasegate_check {{
            internal;
            proxy_pass http://releasegate/authz/v1/check;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Releasegate-Model $http_x_releasegate_model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location @rg_401 {{
            default_type application/json;
            add_header X-Releasegate-Reason $rg_reason always;
            add_header X-Request-Id $rg_request_id always;
            add_header X-Should-Retry false always;
            return 401 $rg_error;
        }}
        location @rg_403 {{
            default_type application/json;
            add_header X-Releasegate-Reason $rg_reason always;
            add_header X-Request-Id $rg_request_id always;
            add_header X-Should-Retry false always;
            return 403 $rg_error;
        }}
        location @rg_500 {{
            default_type application/json;
            add_header X-Releasegate-Reason $rg_reason always;
            add_header Retry-After $rg_retry_after always;
            if ($rg_status = 429) {{
                return 429 $rg_error;
            }}
            return 503 '{{"error": {{"message": "the releasegate decision endpoint did not answer; nothing is forwarded", "type": "api_error", "param": null, "code": "policy_unavailable"}}}}';
        }}
    }}
"""


@pytest.fixture(scope="module")
def edge_world(mock: tuple[MockUpstream, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    nginx_binary()  # skip early, loudly, if nginx is missing
    tmp = tmp_path_factory.mktemp("edge")
    ctx = make_ctx(f"sqlite:///{tmp / 'rg.db'}", tmp / "data")
    yield build_world(ctx, plan_text(EXAMPLE.read_text(), mock[1] + "/v1", limits="{rpm: 4, tpm: 100000}"))
    ctx.db.dispose()


@pytest.fixture
def edge(edge_world: World, mock: tuple[MockUpstream, str], start_gateway: Callable[..., Gateway],
         tmp_path: Path) -> Iterator[str]:
    url, _ = start_gateway(edge_world.ctx)
    port = free_port()
    with run_nginx(tmp_path / "nginx", site(port, url, mock[1]), port) as base:
        yield base
    assert "emerg" not in error_log(tmp_path / "nginx")


def sdk(edge: str, key: str, model: str = f"{MODEL}:v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=edge + "/v1", api_key=key, max_retries=0, timeout=10,
                         default_headers={"X-Releasegate-Model": model})


def test_nginx_allows_and_passes_the_decision_upstream(edge: str, edge_world: World, upstream: MockUpstream) -> None:
    key = edge_world.key("acme-internal/customer-support")
    raw = sdk(edge, key).chat.completions.with_raw_response.create(
        **chat(), extra_headers={"X-Releasegate-Deployer": "dep_spoofed", "X-Releasegate-Use-Case": "anything"})
    assert raw.parse().choices[0].message.content
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_")
    seen = upstream.state.snapshot(request_id=request_id)
    assert len(seen) == 1
    headers = seen[0]["headers"]
    assert headers["x-releasegate-deployer"] == edge_world.deployer_ids["acme-internal"]  # not the spoofed one
    assert headers["x-releasegate-use-case"] == "customer-support"
    assert headers["x-releasegate-version"] == f"{MODEL}:v1"
    assert headers["x-releasegate-upstream-model"] == "atlas-8b-v1"
    assert key not in str(headers)


def test_nginx_denies_with_openai_errors(edge: str, edge_world: World, upstream: MockUpstream) -> None:
    with pytest.raises(openai.AuthenticationError) as bad_key:
        sdk(edge, "rgk_not_a_key").chat.completions.create(**chat())
    assert bad_key.value.code == "invalid_api_key"
    assert bad_key.value.response.headers["x-releasegate-reason"] == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError) as outsider:
        sdk(edge, edge_world.key("bluebank/customer-support")).chat.completions.create(**chat())
    assert outsider.value.code == "not_in_audience" and "bluebank" in outsider.value.message
    with pytest.raises(openai.PermissionDeniedError) as scope:
        sdk(edge, edge_world.key("acme-internal/customer-support")).embeddings.create(model=MODEL, input="x")
    assert scope.value.code == "scope_violation"
    with pytest.raises(openai.PermissionDeniedError) as unknown:
        sdk(edge, edge_world.key("acme-internal/customer-support"), model="acme/other").chat.completions.create(**chat())
    assert unknown.value.code == "model_not_found"
    assert upstream.requests == []  # nothing denied reached the model server


def test_nginx_passes_rate_limits_as_429(edge: str, edge_world: World) -> None:
    client = sdk(edge, edge_world.key("acme-internal/code-assistant"))
    for _ in range(4):
        client.chat.completions.create(**chat())
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(**chat())
    assert limited.value.code == "rate_limited"
    assert int(limited.value.response.headers["retry-after"]) >= 1
