"""The built-in ``moderation`` detector against a real OpenAI-style moderation server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from releasegate.detectors.base import DetectionInput, DetectorUnavailable, Flag
from releasegate.detectors.moderation import ModerationDetector
from releasegate.testing.server import run_in_thread

KEY = "sk-moderation-test"


def moderation_server(seen: list[dict[str, Any]]) -> Starlette:
    """OpenAI's /v1/moderations shape: 'attack' is violence, 'malware' is illicit; 'hang' never answers in time."""

    async def moderations(request: Request) -> Any:
        body = await request.json()
        seen.append({"body": body, "authorization": request.headers.get("authorization")})
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if any("hang" in t for t in texts):
            await asyncio.sleep(3)
        if any("garbage" in t for t in texts):
            return PlainTextResponse("<html>oops</html>")
        results = []
        for t in texts:
            cats = {"violence": "attack" in t, "illicit": "malware" in t}
            scores = {"violence": 0.91 if "attack" in t else 0.01, "illicit": 0.97 if "malware" in t else 0.02}
            results.append({"flagged": any(cats.values()), "categories": cats, "category_scores": scores})
        return JSONResponse({"id": "modr-1", "model": body["model"], "results": results})

    return Starlette(routes=[Route("/v1/moderations", moderations, methods=["POST"])])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    with run_in_thread(moderation_server(seen)) as base_url:
        yield base_url + "/v1", seen


def item(text: str, output: str | None = None) -> DetectionInput:
    return DetectionInput(request_id="req_1", deployer_id="dep_1", use_case="customer-support",
                          use_case_description="Answer customers' questions.", model="acme/atlas-8b", version="v1",
                          endpoint="chat.completions", input_text=text, output_text=output)


def detector(base_url: str, **settings: Any) -> ModerationDetector:
    return ModerationDetector.from_settings("moderation", {"base_url": base_url, "api_key_env": "RG_TEST_MOD_KEY",
                                                           "model": "omni-moderation-latest", **settings})


async def test_flagged_results_become_a_flag_with_the_top_category(
        server: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, seen = server
    monkeypatch.setenv("RG_TEST_MOD_KEY", KEY)
    d = detector(base_url)
    try:
        assert await d.inspect(item("where is my order?", output="it ships tomorrow")) is None
        assert seen[-1]["body"] == {"model": "omni-moderation-latest",
                                    "input": ["where is my order?", "it ships tomorrow"]}
        assert seen[-1]["authorization"] == f"Bearer {KEY}"
        flag = await d.inspect(item("plan an attack", output="here is malware"))
        assert flag == Flag("moderation", "illicit", 0.97, "output flagged by omni-moderation-latest")
        assert await detector(base_url, scan="input").inspect(item("hello", output="malware")) is None
    finally:
        await d.aclose()


async def test_an_endpoint_that_cannot_answer_is_unavailable_never_a_pass(
        server: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, _ = server
    monkeypatch.setenv("RG_TEST_MOD_KEY", KEY)
    d = detector(base_url, timeout=0.3)
    try:
        with pytest.raises(DetectorUnavailable, match=r"did not answer within 0.3s"):
            await d.inspect(item("please hang"))
        with pytest.raises(DetectorUnavailable, match="not a moderation result"):
            await d.inspect(item("garbage"))
        monkeypatch.setenv("RG_TEST_MOD_KEY", "sk-wrong")
        with pytest.raises(DetectorUnavailable, match="answered HTTP 401"):
            await d.inspect(item("hello"))
        monkeypatch.delenv("RG_TEST_MOD_KEY")
        with pytest.raises(DetectorUnavailable, match=r"RG_TEST_MOD_KEY .* is not set"):
            await d.inspect(item("hello"))
    finally:
        await d.aclose()
    closed = detector("http://127.0.0.1:9/v1")  # nothing listens on the discard port
    monkeypatch.setenv("RG_TEST_MOD_KEY", KEY)
    with pytest.raises(DetectorUnavailable, match="could not be reached"):
        await closed.inspect(item("hello"))
    await closed.aclose()
