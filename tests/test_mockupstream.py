"""The MOCK model server, exercised over real loopback HTTP with the real ``openai`` SDK."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from releasegate.mockupstream import GARBAGE_BODY, MockUpstream, create_mock_upstream
from releasegate.testing.server import ServerThread, run_in_thread

MODEL = "atlas-8b-v1"
USER = [{"role": "user", "content": "hello there friend"}]


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[MockUpstream, str]]:
    app = create_mock_upstream(name="unit")
    with run_in_thread(app) as base_url:
        yield app, base_url


@pytest.fixture
def app(mock: tuple[MockUpstream, str]) -> MockUpstream:
    mock[0].reset()
    return mock[0]


@pytest.fixture
def base_url(mock: tuple[MockUpstream, str]) -> str:
    return mock[1]


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=base_url + "/v1", api_key="sk-client", max_retries=0, timeout=10)
    yield c
    c.close()


# -- shapes -----------------------------------------------------------------------------------


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["atlas-8b-v1", "atlas-8b-v2"]
    assert client.models.retrieve("atlas-8b-v2").owned_by == "unit"


def test_chat_completion_sync(client: openai.OpenAI, app: MockUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=USER, extra_headers={"x-request-id": "req-sync-1"}
    )
    assert raw.headers["x-request-id"] == "req-sync-1"
    assert raw.headers["x-mock-upstream"] == "unit"
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "[mock atlas-8b-v1] you said: hello there friend"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (3, 7, 10)

    seen = app.state.snapshot(request_id="req-sync-1")
    assert len(seen) == 1
    assert seen[0]["method"] == "POST"
    assert seen[0]["path"] == "/v1/chat/completions"
    assert seen[0]["headers"]["authorization"] == "Bearer sk-client"
    assert seen[0]["body"]["messages"] == USER


def test_chat_max_tokens_truncates(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
    assert r.choices[0].message.content == "[mock atlas-8b-v1]"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 2


async def test_chat_completion_async(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="k", max_retries=0) as c:
        r = await c.chat.completions.create(
            model="atlas-8b-v2",
            messages=[{"role": "user", "content": [{"type": "text", "text": "async hi"}]}],
        )
        assert r.model == "atlas-8b-v2"
        assert r.choices[0].message.content == "[mock atlas-8b-v2] you said: async hi"
        chunks = [
            ch
            async for ch in await c.chat.completions.create(
                model=MODEL, messages=USER, stream=True, extra_headers={"x-mock-chunks": "4"}
            )
        ]
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == "[mock atlas-8b-v1] you said:"


def test_chat_stream_chunks_are_spaced(client: openai.OpenAI) -> None:
    delay, n = 0.1, 5
    start = time.monotonic()
    arrivals: list[float] = []
    pieces: list[str] = []
    usage = None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-chunk-delay": str(delay), "x-mock-chunks": str(n)},
    )
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == MODEL
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert len(arrivals) == n
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(g >= delay * 0.7 for g in gaps), gaps
    assert arrivals[-1] >= delay * n * 0.9
    assert "".join(pieces) == "[mock atlas-8b-v1] you said: hello"
    assert usage is not None and usage.completion_tokens == n and usage.prompt_tokens == 3


def test_chat_stream_wire_format(base_url: str) -> None:
    body = {
        "model": MODEL,
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", base_url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(p["usage"] is None for p in payloads[:-1])  # include_usage: null until the end
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}
    assert len({p["id"] for p in payloads}) == 1


def test_stream_without_include_usage_has_no_usage_key(base_url: str) -> None:
    body = {"model": MODEL, "messages": USER, "stream": True}
    raw = httpx.post(base_url + "/v1/chat/completions", json=body).text
    chunks = [json.loads(e[6:]) for e in raw.split("\n\n") if e.startswith("data: {")]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


def test_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="one two three")
    assert r.object == "text_completion"
    assert r.choices[0].text == "[mock atlas-8b-v1] you said: one two three"
    assert r.usage is not None and r.usage.prompt_tokens == 3
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="x", stream=True)
        if c.choices
    )
    assert text == "[mock atlas-8b-v1] you said: x"


def test_embeddings(client: openai.OpenAI, base_url: str) -> None:
    r = client.embeddings.create(
        model="atlas-embed", input=["alpha beta", "gamma"]
    )  # SDK asks base64
    assert r.model == "atlas-embed"
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == 64
    assert r.usage.prompt_tokens == 3 and r.usage.total_tokens == 3
    again = client.embeddings.create(model="atlas-embed", input="alpha beta", dimensions=8)
    assert len(again.data[0].embedding) == 8
    # float and base64 encodings agree, and vectors are deterministic
    raw = httpx.post(
        base_url + "/v1/embeddings",
        json={"model": "e", "input": "alpha beta", "encoding_format": "float"},
    ).json()
    floats = raw["data"][0]["embedding"]
    assert floats == pytest.approx(r.data[0].embedding, rel=1e-6)
    b64 = httpx.post(
        base_url + "/v1/embeddings",
        json={"model": "e", "input": "alpha beta", "encoding_format": "base64"},
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack("<64f", base64.b64decode(b64))
    assert list(decoded) == pytest.approx(floats, rel=1e-6)
    assert "completion_tokens" not in raw["usage"]


def test_responses_api(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="how are you", instructions="be brief")
    assert r.object == "response"
    assert r.status == "completed"
    assert r.model == MODEL
    assert r.output_text == "[mock atlas-8b-v1] you said: how are you"
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (5, 7, 12)

    events = list(
        client.responses.create(
            model=MODEL,
            input=[{"role": "user", "content": "streamed please"}],
            stream=True,
            extra_headers={"x-mock-chunks": "3"},
        )
    )
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 3
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == deltas == "[mock atlas-8b-v1] you"
    assert done.response.usage is not None and done.response.usage.output_tokens == 3


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, openai.BadRequestError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_fault_status(client: openai.OpenAI, app: MockUpstream, status: int, exc: type) -> None:
    with pytest.raises(exc) as info:
        client.chat.completions.create(
            model=MODEL, messages=USER, extra_headers={"x-mock-status": str(status)}
        )
    err = info.value
    assert err.status_code == status
    assert isinstance(err.body, dict)
    assert set(err.body) == {"message", "type", "param", "code"}
    assert str(status) in err.body["message"]
    assert len(app.requests) == 1  # max_retries=0: exactly one upstream hit


def test_fault_delay_is_an_upstream_hang(base_url: str, app: MockUpstream) -> None:
    c = openai.OpenAI(base_url=base_url + "/v1", api_key="k", max_retries=0, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(
            model=MODEL,
            messages=USER,
            extra_headers={"x-mock-delay": "5", "x-request-id": "hang-1"},
        )
    assert time.monotonic() - t0 < 3
    assert app.state.seen("hang-1")  # recorded before the hang
    c.close()
    ok = httpx.post(
        base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": USER},
        headers={"x-mock-delay": "0.3"},
    )
    assert ok.status_code == 200 and ok.elapsed.total_seconds() >= 0.25


def test_fault_garbage(client: openai.OpenAI, base_url: str) -> None:
    r = httpx.post(
        base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": USER},
        headers={"x-mock-garbage": "1"},
    )
    assert r.status_code == 200
    assert r.content == GARBAGE_BODY
    with pytest.raises(ValueError):  # json.JSONDecodeError inside the SDK
        client.chat.completions.create(
            model=MODEL, messages=USER, extra_headers={"x-mock-garbage": "1"}
        )


def test_fault_abort_mid_stream(base_url: str) -> None:
    body = {"model": MODEL, "messages": USER, "stream": True}
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            base_url + "/v1/chat/completions",
            json=body,
            headers={"x-mock-abort-after": "2", "x-mock-chunk-delay": "0.01"},
        ) as r,
    ):
        for line in r.iter_lines():
            if line:
                received.append(line)
    assert 1 <= len(received) <= 3
    assert "data: [DONE]" not in received


def test_bad_requests(base_url: str) -> None:
    r = httpx.post(
        base_url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(base_url + "/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.get(base_url + "/v1/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(base_url + "/v1/chat/completions")
    assert r.status_code == 405


def test_api_key_required() -> None:
    app = create_mock_upstream(name="keyed", api_key="sk-upstream")
    with run_in_thread(app) as url:
        bad = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model=MODEL, messages=USER)
        assert info.value.code == "invalid_api_key"
        assert info.value.type == "invalid_request_error"
        assert httpx.post(url + "/v1/chat/completions", json={"model": MODEL}).status_code == 401
        good = openai.OpenAI(base_url=url + "/v1", api_key="sk-upstream", max_retries=0)
        assert good.chat.completions.create(model=MODEL, messages=USER).choices
        # control endpoints need no key
        assert httpx.get(url + "/_mock/requests").json()["count"] == 3
        bad.close()
        good.close()


def test_strict_models() -> None:
    app = create_mock_upstream(models=["only-one"], strict_models=True)
    with run_in_thread(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="other", messages=USER)
        assert c.chat.completions.create(model="only-one", messages=USER).model == "only-one"
        c.close()


# -- recording --------------------------------------------------------------------------------


def test_recording_over_http(client: openai.OpenAI, base_url: str) -> None:
    assert httpx.post(base_url + "/_mock/reset").json() == {"ok": True}
    for i in range(3):
        client.chat.completions.create(
            model=MODEL, messages=USER, extra_headers={"x-request-id": f"rid-{i}"}
        )
    client.embeddings.create(model="e", input="x", extra_headers={"x-request-id": "rid-emb"})
    everything = httpx.get(base_url + "/_mock/requests").json()
    assert everything["count"] == 4 and everything["total"] == 4
    one = httpx.get(base_url + "/_mock/requests", params={"request_id": "rid-1"}).json()
    assert one["count"] == 1
    req = one["requests"][0]
    assert req["headers"]["authorization"] == "Bearer sk-client"
    assert req["request_id"] == "rid-1"
    assert req["body"]["model"] == MODEL
    emb = httpx.get(base_url + "/_mock/requests", params={"path": "/v1/embeddings"}).json()
    assert [r["request_id"] for r in emb["requests"]] == ["rid-emb"]
    httpx.post(base_url + "/_mock/reset")
    assert httpx.get(base_url + "/_mock/requests").json()["count"] == 0


def test_recording_is_bounded() -> None:
    app = create_mock_upstream(max_recorded=5)
    with run_in_thread(app) as url, httpx.Client(base_url=url) as h:
        for i in range(12):
            h.post(
                "/v1/embeddings",
                json={"model": "e", "input": str(i)},
                headers={"x-request-id": str(i)},
            )
    assert [r["request_id"] for r in app.requests] == ["7", "8", "9", "10", "11"]
    assert app.state.total == 12


def test_record_file_is_flushed_before_answer(tmp_path: Path) -> None:
    path = tmp_path / "upstream.jsonl"
    app = create_mock_upstream(record_file=path)
    with run_in_thread(app) as url:
        for i in range(3):
            r = httpx.post(
                url + "/v1/chat/completions",
                json={"model": MODEL, "messages": USER},
                headers={"x-request-id": f"durable-{i}", "authorization": "Bearer up"},
            )
            assert r.status_code == 200
            # readable by another reader as soon as the answer arrived
            lines = path.read_text().splitlines()
            assert json.loads(lines[-1])["request_id"] == f"durable-{i}"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["headers"]["authorization"] == "Bearer up"


# -- runner and helper ------------------------------------------------------------------------


@contextlib.contextmanager
def _cli_mock(*args: str) -> Iterator[tuple[str, str]]:
    """``python -m releasegate.mockupstream --port 0 ARGS``; yields (base URL, banner) once it answers."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "releasegate.mockupstream", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = []
        url = None
        deadline = time.monotonic() + 20
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner.append(line)
            m = re.search(r"listening on (http://\S+)/v1", line)
            if m:
                url = m.group(1)
        text = "".join(banner)
        assert url is not None, text
        for _ in range(100):
            try:
                if httpx.get(url + "/_mock/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url, text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_cli_runner(tmp_path: Path) -> None:
    record = tmp_path / "seen.jsonl"
    with _cli_mock("--api-key", "sk-up", "--record-file", str(record), "--name", "cli") as (url, banner):
        assert "MOCK MODEL SERVER" in banner and "NOT A REAL MODEL" in banner, banner
        c = openai.OpenAI(base_url=url + "/v1", api_key="sk-up", max_retries=0)
        r = c.chat.completions.create(
            model=MODEL, messages=USER, extra_headers={"x-request-id": "cli-1"}
        )
        assert r.choices[0].message.content.startswith("[mock atlas-8b-v1]")
        c.close()
        assert json.loads(record.read_text().splitlines()[-1])["request_id"] == "cli-1"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_cli_stream_pacing_on_either_event_loop(loop: str) -> None:
    """Paced chunks leave when paced on both loops. On asyncio the listening socket must say it is
    TCP, or asyncio skips TCP_NODELAY and Nagle holds the first content chunk of every request after
    the first on a keep-alive connection until the client's delayed ACK (about 40 ms on Linux)."""
    body = json.dumps({"model": MODEL, "stream": True, "messages": USER}).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nContent-Type: application/json\r\n"
    request += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    firsts = []
    with _cli_mock("--loop", loop, "--chunk-delay", "0.005", "--chunks", "4") as (url, _):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(5):
                started = time.perf_counter()
                sock.sendall(request)
                seen, first = b"", None
                while not seen.endswith(b"0\r\n\r\n"):
                    data = sock.recv(65536)
                    assert data, "the mock closed the connection"
                    seen += data
                    if first is None and re.search(rb'"content":"[^"]', seen):
                        first = time.perf_counter() - started
                assert first is not None
                firsts.append(first)
    later = sorted(firsts[1:])
    assert later[len(later) // 2] < 0.025, f"first content after {[round(f * 1000, 1) for f in firsts]} ms on {loop}"


def test_run_in_thread_several_servers_and_clean_shutdown() -> None:
    apps = [create_mock_upstream(name=f"s{i}") for i in range(3)]
    with run_in_thread(apps[0]) as u0, run_in_thread(apps[1]) as u1, run_in_thread(apps[2]) as u2:
        assert len({u0, u1, u2}) == 3
        for i, u in enumerate((u0, u1, u2)):
            assert httpx.get(u + "/v1/models").headers["x-mock-upstream"] == f"s{i}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(u0 + "/v1/models")


def test_run_in_thread_shuts_down_with_a_stream_in_flight() -> None:
    app = create_mock_upstream(chunk_delay=0.5)
    t0 = time.monotonic()
    with run_in_thread(app, shutdown_timeout=1.0) as url, httpx.stream(
        "POST", url + "/v1/chat/completions",
        json={"model": MODEL, "messages": USER, "stream": True}, headers={"x-mock-chunks": "100"},
    ) as r:  # fmt: skip
        next(r.iter_lines())
    assert time.monotonic() - t0 < 8


def test_run_in_thread_reports_startup_failure() -> None:
    async def broken(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "nope"})

    with pytest.raises(RuntimeError, match="failed to start"), run_in_thread(broken):
        pass


def test_server_thread_start_stop() -> None:
    server = ServerThread(create_mock_upstream())
    url = server.start()
    assert server.running
    assert httpx.get(url + "/_mock/health").json()["mock"] is True
    server.stop()
    assert not server.running
