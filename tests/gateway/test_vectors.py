"""The shared access vectors through the real gateway: /v1 over HTTP and the /authz/v1/check decision endpoint."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway_world import make_service
from releasegate.gateway.app import GatewayApp
from releasegate.mockupstream import MockUpstream
from releasegate.policy.access import REASONS
from releasegate.services.context import ServiceContext
from releasegate.settings import Settings
from releasegate.testing.server import run_in_thread

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
PATHS = {"chat.completions": "/v1/chat/completions", "completions": "/v1/completions",
         "embeddings": "/v1/embeddings", "responses": "/v1/responses"}


def access_world() -> Any:
    if "access_world" not in sys.modules:
        spec = importlib.util.spec_from_file_location("access_world", VECTORS_DIR / "access_world.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["access_world"] = module
        spec.loader.exec_module(module)
    return sys.modules["access_world"]


VECTORS = access_world().load().vectors


def body_for(request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An OpenAI request body that states exactly these facts."""
    endpoint = request.get("endpoint", "chat.completions")
    text = "x" * request.get("input_chars", 5)
    body: dict[str, Any] = {}
    if request.get("model") is not None:
        body["model"] = request["model"]
    if endpoint == "chat.completions":
        content: Any = text
        if request.get("images"):
            content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]
        body["messages"] = [{"role": "user", "content": content}]
        if request.get("logprobs"):
            body["logprobs"] = True
        if request.get("response_format"):
            body["response_format"] = {"type": "json_object"}
    elif endpoint == "completions":
        body["prompt"] = text
    elif endpoint == "embeddings":
        body["input"] = text
    else:
        body["input"] = text
    if request.get("tools"):
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for name in ("n", "max_tokens", "temperature", "top_p", "stream"):
        if name in request:
            body[name] = request[name]
    return PATHS[endpoint], body


@pytest.fixture(scope="module")
def vector_gateway(mock: tuple[MockUpstream, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A replica whose snapshot is the vector world (no store: the snapshot source is injected)."""
    tmp = tmp_path_factory.mktemp("vectors")
    world = access_world().load(mock[1] + "/v1")
    ctx = ServiceContext(db=None, settings=Settings(data_dir=tmp))  # type: ignore[arg-type]
    service = make_service(ctx, tmp, sources={"snapshot_source": lambda: world.snapshot,
                                              "revision_source": lambda: world.snapshot.revision})
    with run_in_thread(GatewayApp(service)) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client, world


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_through_v1(vector: dict[str, Any], vector_gateway: tuple[httpx.Client, Any]) -> None:
    client, world = vector_gateway
    path, body = body_for(vector["request"])
    token = world.token(vector)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    r = client.post(path, json=body, headers=headers)
    expect = vector["expect"]
    if expect["allowed"]:
        assert r.status_code == 200, r.text
        if "version" in expect:
            assert r.headers["x-releasegate-version"] == f"acme/atlas-8b:{expect['version']}"
        return
    assert r.status_code == REASONS[expect["code"]][0], r.text
    error = r.json()["error"]
    assert error["code"] == expect["code"] == r.headers["x-releasegate-reason"]
    assert set(error) == {"message", "type", "param", "code"}
    if "param" in expect:
        assert error["param"] == expect["param"]
    if "message_contains" in expect:
        assert expect["message_contains"] in error["message"]


@pytest.mark.parametrize("form", ["nginx", "envoy"])
@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_through_authz(vector: dict[str, Any], form: str, vector_gateway: tuple[httpx.Client, Any]) -> None:
    """nginx: /authz/v1/check with X-Original-URI; Envoy ext_authz: /authz/v1/check/<original path>."""
    client, world = vector_gateway
    path, _ = body_for(vector["request"])
    token = world.token(vector)
    headers = {"x-original-uri": path, "x-original-method": "POST"} if form == "nginx" else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if vector["request"].get("model"):
        headers["x-releasegate-model"] = vector["request"]["model"]
    headers["x-releasegate-deployer"] = "dep_spoofed"  # never trusted
    r = client.post("/authz/v1/check" + ("" if form == "nginx" else path), headers=headers)
    expect = vector.get("edge", vector["expect"])
    if expect["allowed"]:
        assert r.status_code == 200, r.text
        if "version" in expect:
            assert r.headers["x-releasegate-version"] == f"acme/atlas-8b:{expect['version']}"
        assert r.headers["x-releasegate-use-case"]
        assert r.headers["x-releasegate-deployer"] != "dep_spoofed"
        return
    status = REASONS[expect["code"]][0]
    assert r.status_code == (status if status in (401, 403, 429) else 403), r.text
    assert r.headers["x-releasegate-status"] == str(status)
    assert r.json()["error"]["code"] == expect["code"] == r.headers["x-releasegate-reason"]


def test_embeddings_and_responses_with_the_sdk(vector_gateway: tuple[httpx.Client, Any]) -> None:
    client, world = vector_gateway
    sdk = openai.OpenAI(base_url=str(client.base_url).rstrip("/") + "/v1", api_key=world.tokens["int-search"],
                        max_retries=0, timeout=10)
    emb = sdk.embeddings.create(model="acme/atlas-8b:v1", input=["one", "two"])
    assert len(emb.data) == 2 and emb.data[0].embedding
    resp = sdk.responses.create(model="acme/atlas-8b:v1", input="hello responses")
    assert "hello responses" in resp.output_text
    events = [e.type for e in sdk.responses.create(model="acme/atlas-8b:v1", input="stream me", stream=True)]
    assert events[-1] == "response.completed" and "response.output_text.delta" in events
