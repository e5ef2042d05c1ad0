"""MOCK OpenAI-compatible model server: a stand-in for vLLM in the demo, tests and benchmarks.

THIS IS NOT A MODEL. Every answer is a deterministic echo such as
``"[mock atlas-8b-v1] you said: hello there"``; token counts are whitespace-separated words.

It is a plain ASGI callable (no framework on the hot path) so benchmarks can push tens of
thousands of requests through it. Endpoints:

* ``GET  /v1/models``, ``GET /v1/models/{id}``
* ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/responses``
  in OpenAI's response shapes; ``"stream": true`` gives OpenAI's server-sent events
  (``data: {chunk}\\n\\n`` ... ``data: [DONE]\\n\\n``; a final ``usage`` chunk when
  ``stream_options.include_usage`` is true; the Responses API event stream for
  ``/v1/responses``), with ``chunk_delay`` seconds before every content chunk.
* Control: ``GET /_mock/requests[?request_id=X&path=/v1/...]``, ``POST /_mock/reset``,
  ``GET /_mock/health``. Never authenticated, never recorded.

Fault injection by request header (see :data:`FAULT_HEADERS`):

* ``x-mock-status: 500``      answer with that status and an OpenAI error body
* ``x-mock-delay: 2.5``       sleep that many seconds before answering (upstream hang)
* ``x-mock-garbage: 1``       answer 200 with bytes that are not JSON
* ``x-mock-chunk-delay: 0.2`` override ``chunk_delay`` for this request
* ``x-mock-chunks: N``        make the completion exactly N words = N streamed content chunks
* ``x-mock-abort-after: K``   streaming only: drop the connection after K content chunks

Every ``/v1`` request is recorded *before* it is answered (method, path, query, headers
including ``authorization``, ``x-request-id``, parsed JSON body) in a bounded in-memory list
(``app.state.requests``) and, with ``record_file=``, appended as one flushed JSON line.

Run it::

    python -m releasegate.mockupstream --host 127.0.0.1 --port 8001 \\
        [--chunk-delay 0.05] [--api-key sk-upstream] [--record-file upstream.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import os
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any
from urllib.parse import parse_qs

import orjson

__all__ = [
    "DEFAULT_MODELS",
    "FAULT_HEADERS",
    "MockState",
    "MockUpstream",
    "create_mock_upstream",
    "main",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MODELS: tuple[str, ...] = ("atlas-8b-v1", "atlas-8b-v2")
FAULT_HEADERS: tuple[str, ...] = (
    "x-mock-status",
    "x-mock-delay",
    "x-mock-garbage",
    "x-mock-chunk-delay",
    "x-mock-chunks",
    "x-mock-abort-after",
)
GARBAGE_BODY = b"\xff\xfe<<mock upstream garbage: this is not JSON>>\x00{{"
_ECHO_LIMIT = 200  # characters of the last user message echoed back
_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _words(text: str) -> int:
    return len(text.split())


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


class _ClientGone(Exception):
    """The client disconnected while we were waiting."""


class MockState:
    """What the mock upstream saw. Thread-safe: tests read it from another thread."""

    def __init__(self, max_recorded: int = 10_000, record_file: str | None = None) -> None:
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self.total = 0
        self.record_file = record_file
        self._fh: Any = None
        self._lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.total += 1
            entry["seq"] = self.total
            self.requests.append(entry)
            if self.record_file is not None:
                if self._fh is None:
                    self._fh = open(self.record_file, "ab")  # noqa: SIM115 - long-lived handle
                self._fh.write(_dumps(entry) + b"\n")
                self._fh.flush()

    def snapshot(
        self, request_id: str | None = None, path: str | None = None
    ) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self.requests)
        if request_id is not None:
            items = [r for r in items if r.get("request_id") == request_id]
        if path is not None:
            items = [r for r in items if r.get("path") == path]
        return items

    def seen(self, request_id: str) -> bool:
        return bool(self.snapshot(request_id=request_id))

    def last(self) -> dict[str, Any] | None:
        with self._lock:
            return self.requests[-1] if self.requests else None

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.total = 0

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


# --------------------------------------------------------------------------------------------
# request helpers


def _text_of(content: Any) -> str:
    """Text of an OpenAI message ``content``: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return " ".join(parts)
    return ""


def _prompt_of_chat(messages: Any) -> tuple[str, int]:
    last_user = ""
    total = 0
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                continue
            text = _text_of(m.get("content"))
            total += _words(text)
            if m.get("role") == "user":
                last_user = text
    return last_user, total


def _prompt_of_completion(prompt: Any) -> tuple[str, int]:
    if isinstance(prompt, str):
        return prompt, _words(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            return f"<{len(prompt)} tokens>", len(prompt)
        texts = [p if isinstance(p, str) else f"<{len(p)} tokens>" for p in prompt]
        total = sum(_words(p) if isinstance(p, str) else len(p) for p in prompt)
        return texts[-1], total
    return "", 0


def _prompt_of_responses(body: dict[str, Any]) -> tuple[str, int]:
    total = 0
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        total += _words(instructions)
    inp = body.get("input")
    if isinstance(inp, str):
        return inp, total + _words(inp)
    last_user = ""
    if isinstance(inp, list):
        for item in inp:
            if not isinstance(item, dict):
                continue
            text = _text_of(item.get("content"))
            total += _words(text)
            if item.get("role", "user") == "user":
                last_user = text
    return last_user, total


def _completion_words(
    model: str, said: str, n_words: int | None, max_tokens: Any
) -> tuple[list[str], str]:
    """Deterministic completion as a list of word pieces (" word" after the first) + finish."""
    said = " ".join(said.split())
    if len(said) > _ECHO_LIMIT:
        said = said[:_ECHO_LIMIT] + "..."
    words = f"[mock {model}] you said: {said}".split()
    if n_words is not None:
        n_words = max(n_words, 1)
        if len(words) >= n_words:
            words = words[:n_words]
        else:
            words.extend(itertools.islice(itertools.cycle(_FILLER), n_words - len(words)))
    finish = "stop"
    if (
        isinstance(max_tokens, int)
        and not isinstance(max_tokens, bool)
        and 0 < max_tokens < len(words)
    ):
        words = words[:max_tokens]
        finish = "length"
    pieces = [words[0]] + [" " + w for w in words[1:]]
    return pieces, finish


def _embedding(text_key: bytes, dims: int) -> list[float]:
    raw = hashlib.shake_256(text_key).digest(dims)
    vec = [(b - 127.5) / 127.5 for b in raw]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [v / norm for v in vec]


class _Req:
    __slots__ = ("body", "headers", "method", "path", "query", "request_id")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body: Any = None
        self.request_id: str | None = headers.get("x-request-id")


# --------------------------------------------------------------------------------------------
# the app


class MockUpstream:
    """The mock server (an ASGI callable). Build it with :func:`create_mock_upstream`."""

    def __init__(
        self,
        *,
        name: str = "mock",
        chunk_delay: float = 0.0,
        chunks: int | None = None,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        strict_models: bool = False,
        record_file: str | os.PathLike[str] | None = None,
        max_recorded: int = 10_000,
        embedding_dims: int = 64,
    ) -> None:
        self.name = name
        self.chunk_delay = float(chunk_delay)
        self.chunks = chunks
        self.api_key = api_key
        self.models = list(models)
        self.strict_models = strict_models
        self.embedding_dims = embedding_dims
        self.state = MockState(max_recorded, os.fspath(record_file) if record_file else None)
        self._created = int(time.time())
        self._name_header = name.encode("latin-1", "replace")
        self._auth_expected = f"Bearer {api_key}" if api_key else None
        self._models_body = _dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": self._created, "owned_by": name}
                    for m in self.models
                ],
            }
        )
        self._post_routes: dict[str, Callable[[_Req, Receive, Send], Awaitable[None]]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
            "/v1/responses": self._responses,
        }

    # convenience accessors for in-process tests
    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.state.snapshot()

    def reset(self) -> None:
        self.state.reset()

    def close(self) -> None:
        self.state.close()

    # -- ASGI entry point ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        req = _Req(method, path, scope.get("query_string", b"").decode("latin-1"), headers)

        if path.startswith("/_mock/"):
            await self._control(req, receive, send)
            return

        raw = await _read_body(receive) if method in ("POST", "PUT", "PATCH") else b""
        body_error = None
        if raw:
            try:
                req.body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body_error = "We could not parse the JSON body of your request."
                req.body = None
        entry: dict[str, Any] = {
            "time": time.time(),
            "method": method,
            "path": path,
            "query": req.query,
            "headers": headers,
            "request_id": req.request_id,
            "body": req.body,
            "client": list(scope["client"]) if scope.get("client") else None,
        }
        if body_error is not None:
            entry["body_text"] = raw[:4096].decode("utf-8", "replace")
        self.state.record(entry)

        try:
            delay = headers.get("x-mock-delay")
            if delay:
                await _sleep_or_disconnect(receive, float(delay))

            if (
                self._auth_expected is not None
                and headers.get("authorization") != self._auth_expected
            ):
                got = headers.get("authorization")
                shown = (
                    "none"
                    if not got
                    else (got[7:13] + "***" if got.startswith("Bearer ") else "***")
                )
                await self._error(
                    req,
                    send,
                    401,
                    f"Incorrect API key provided: {shown}. (mock upstream '{self.name}')",
                    "invalid_request_error",
                    "invalid_api_key",
                )
                return

            status = headers.get("x-mock-status")
            if status and status != "200":
                code = int(status)
                type_, err_code = _ERROR_TYPES.get(code, ("server_error", None))
                await self._error(
                    req,
                    send,
                    code,
                    f"mock upstream '{self.name}' injected HTTP {code} (x-mock-status)",
                    type_,
                    err_code,
                )
                return

            if headers.get("x-mock-garbage", "0") not in ("", "0", "false"):
                await _respond(send, 200, GARBAGE_BODY, self._extra_headers(req, _JSON_HEADERS))
                return

            if method == "GET":
                if path == "/v1/models":
                    await _respond(
                        send, 200, self._models_body, self._extra_headers(req, _JSON_HEADERS)
                    )
                    return
                if path.startswith("/v1/models/"):
                    await self._model(req, path[len("/v1/models/") :], send)
                    return
            elif method == "POST":
                handler = self._post_routes.get(path)
                if handler is not None:
                    if body_error is not None or not isinstance(req.body, dict):
                        await self._error(
                            req,
                            send,
                            400,
                            body_error or "The request body must be a JSON object.",
                            "invalid_request_error",
                            None,
                        )
                        return
                    model = req.body.get("model")
                    if not isinstance(model, str) or not model:
                        await self._error(
                            req,
                            send,
                            400,
                            "you must provide a model parameter",
                            "invalid_request_error",
                            None,
                            "model",
                        )
                        return
                    if self.strict_models and model not in self.models:
                        await self._error(
                            req,
                            send,
                            404,
                            f"The model `{model}` does not exist or you do not have access to it.",
                            "invalid_request_error",
                            "model_not_found",
                        )
                        return
                    await handler(req, receive, send)
                    return
            if path in self._post_routes or path == "/v1/models":
                await self._error(
                    req,
                    send,
                    405,
                    f"Method {method} not allowed on {path}.",
                    "invalid_request_error",
                    "method_not_allowed",
                )
                return
            await self._error(
                req, send, 404, f"Invalid URL ({method} {path})", "invalid_request_error", None
            )
        except _ClientGone:
            return

    # -- helpers ------------------------------------------------------------------------------

    def _extra_headers(
        self, req: _Req, base: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        rid = req.request_id or f"req_mock_{uuid.uuid4().hex}"
        return [
            *base,
            (b"x-request-id", rid.encode("latin-1")),
            (b"x-mock-upstream", self._name_header),
        ]

    async def _error(
        self,
        req: _Req,
        send: Send,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        param: str | None = None,
    ) -> None:
        await _respond(
            send,
            status,
            _error_body(message, type_, code, param),
            self._extra_headers(req, _JSON_HEADERS),
        )

    def _shape(self, req: _Req) -> tuple[float, int | None, int | None]:
        h = req.headers
        delay = float(h["x-mock-chunk-delay"]) if "x-mock-chunk-delay" in h else self.chunk_delay
        n = int(h["x-mock-chunks"]) if "x-mock-chunks" in h else self.chunks
        abort = int(h["x-mock-abort-after"]) if "x-mock-abort-after" in h else None
        return delay, n, abort

    async def _model(self, req: _Req, model_id: str, send: Send) -> None:
        if self.strict_models and model_id not in self.models:
            await self._error(
                req,
                send,
                404,
                f"The model '{model_id}' does not exist",
                "invalid_request_error",
                "model_not_found",
            )
            return
        body = {"id": model_id, "object": "model", "created": self._created, "owned_by": self.name}
        await _respond(send, 200, _dumps(body), self._extra_headers(req, _JSON_HEADERS))

    async def _control(self, req: _Req, receive: Receive, send: Send) -> None:
        if req.method == "POST":
            await _read_body(receive)
        if req.path == "/_mock/requests" and req.method == "GET":
            q = parse_qs(req.query)
            items = self.state.snapshot(
                request_id=q["request_id"][0] if "request_id" in q else None,
                path=q["path"][0] if "path" in q else None,
            )
            body = {
                "name": self.name,
                "total": self.state.total,
                "count": len(items),
                "requests": items,
            }
            await _respond(send, 200, _dumps(body), _JSON_HEADERS)
        elif req.path == "/_mock/reset" and req.method == "POST":
            self.state.reset()
            await _respond(send, 200, b'{"ok":true}', _JSON_HEADERS)
        elif req.path == "/_mock/health" and req.method == "GET":
            body = {"ok": True, "name": self.name, "mock": True, "models": self.models}
            await _respond(send, 200, _dumps(body), _JSON_HEADERS)
        else:
            await _respond(
                send,
                404,
                _error_body(
                    f"Unknown mock control endpoint {req.path}", "invalid_request_error", None
                ),
                _JSON_HEADERS,
            )

    # -- /v1/chat/completions -----------------------------------------------------------------

    async def _chat(self, req: _Req, receive: Receive, send: Send) -> None:
        body = req.body
        model = body["model"]
        said, prompt_tokens = _prompt_of_chat(body.get("messages"))
        delay, n_words, abort = self._shape(req)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        pieces, finish = _completion_words(model, said, n_words, max_tokens)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        cid = f"chatcmpl-mock{uuid.uuid4().hex}"
        created = int(time.time())
        fingerprint = f"fp_mock_{self.name}"
        n = body.get("n") or 1
        n = n if isinstance(n, int) and 1 <= n <= 16 else 1

        if not body.get("stream"):
            text = "".join(pieces)
            out = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": fingerprint,
                "choices": [
                    {
                        "index": i,
                        "message": {
                            "role": "assistant",
                            "content": text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                    for i in range(n)
                ],
                "usage": {
                    **usage,
                    "completion_tokens": len(pieces) * n,
                    "total_tokens": prompt_tokens + len(pieces) * n,
                },
                "service_tier": "default",
            }
            await _respond(send, 200, _dumps(out), self._extra_headers(req, _JSON_HEADERS))
            return

        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        base: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint,
        }
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            c = {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            return b"data: " + _dumps(c) + b"\n\n"

        tail = [chunk({}, finish)]
        if include_usage:
            tail.append(b"data: " + _dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        tail.append(b"data: [DONE]\n\n")
        await self._stream(
            req,
            receive,
            send,
            delay,
            abort,
            head=[chunk({"role": "assistant", "content": "", "refusal": None})],
            pieces=[chunk({"content": p}) for p in pieces],
            tail=tail,
        )

    # -- /v1/completions ----------------------------------------------------------------------

    async def _completions(self, req: _Req, receive: Receive, send: Send) -> None:
        body = req.body
        model = body["model"]
        said, prompt_tokens = _prompt_of_completion(body.get("prompt"))
        delay, n_words, abort = self._shape(req)
        pieces, finish = _completion_words(model, said, n_words, body.get("max_tokens"))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        cid = f"cmpl-mock{uuid.uuid4().hex}"
        created = int(time.time())
        base = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": f"fp_mock_{self.name}",
        }

        if not body.get("stream"):
            out = {
                **base,
                "choices": [
                    {"text": "".join(pieces), "index": 0, "logprobs": None, "finish_reason": finish}
                ],
                "usage": usage,
            }
            await _respond(send, 200, _dumps(out), self._extra_headers(req, _JSON_HEADERS))
            return

        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        if include_usage:
            base["usage"] = None

        def chunk(text: str, finish_reason: str | None = None) -> bytes:
            c = {
                **base,
                "choices": [
                    {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            return b"data: " + _dumps(c) + b"\n\n"

        tail = [chunk("", finish)]
        if include_usage:
            tail.append(b"data: " + _dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        tail.append(b"data: [DONE]\n\n")
        await self._stream(
            req, receive, send, delay, abort, head=[], pieces=[chunk(p) for p in pieces], tail=tail
        )

    # -- /v1/embeddings -----------------------------------------------------------------------

    async def _embeddings(self, req: _Req, receive: Receive, send: Send) -> None:
        body = req.body
        inp = body.get("input")
        items: list[Any]
        if isinstance(inp, str) or (
            isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp)
        ):
            items = [inp]
        elif isinstance(inp, list) and inp:
            items = inp
        else:
            await self._error(
                req,
                send,
                400,
                "'input' must be a non-empty string or array.",
                "invalid_request_error",
                None,
                "input",
            )
            return
        dims = body.get("dimensions")
        dims = dims if isinstance(dims, int) and 1 <= dims <= 8192 else self.embedding_dims
        as_b64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for i, item in enumerate(items):
            if isinstance(item, str):
                key = item.encode()
                tokens += _words(item)
            else:
                key = _dumps(item)
                tokens += len(item) if isinstance(item, list) else 1
            vec = _embedding(key, dims)
            emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if as_b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        out = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        await _respond(send, 200, _dumps(out), self._extra_headers(req, _JSON_HEADERS))

    # -- /v1/responses ------------------------------------------------------------------------

    async def _responses(self, req: _Req, receive: Receive, send: Send) -> None:
        body = req.body
        model = body["model"]
        said, input_tokens = _prompt_of_responses(body)
        delay, n_words, abort = self._shape(req)
        pieces, finish = _completion_words(model, said, n_words, body.get("max_output_tokens"))
        text = "".join(pieces)
        rid = f"resp_mock{uuid.uuid4().hex}"
        mid = f"msg_mock{uuid.uuid4().hex}"
        created = int(time.time())
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(pieces),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + len(pieces),
        }
        status = "completed" if finish == "stop" else "incomplete"

        def response(state: str, output: list[Any], usage_: Any) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "response",
                "created_at": created,
                "status": state,
                "error": None,
                "incomplete_details": None
                if state != "incomplete"
                else {"reason": "max_output_tokens"},
                "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"),
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": body.get("previous_response_id"),
                "reasoning": {"effort": None, "summary": None},
                "store": bool(body.get("store", True)),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": {"type": "text"}},
                "tool_choice": "auto",
                "tools": [],
                "top_p": body.get("top_p", 1.0),
                "truncation": "disabled",
                "usage": usage_,
                "user": None,
                "metadata": body.get("metadata") or {},
            }

        def message(state: str, content: list[Any]) -> dict[str, Any]:
            return {
                "id": mid,
                "type": "message",
                "status": state,
                "role": "assistant",
                "content": content,
            }

        part_done = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        final = response(status, [message("completed", [part_done])], usage)
        if not body.get("stream"):
            await _respond(send, 200, _dumps(final), self._extra_headers(req, _JSON_HEADERS))
            return

        seq = itertools.count()

        def event(type_: str, **fields: Any) -> bytes:
            payload = {"type": type_, "sequence_number": next(seq), **fields}
            return b"event: " + type_.encode() + b"\ndata: " + _dumps(payload) + b"\n\n"

        empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        loc = {"item_id": mid, "output_index": 0, "content_index": 0}
        head = [
            event("response.created", response=response("in_progress", [], None)),
            event("response.in_progress", response=response("in_progress", [], None)),
            event("response.output_item.added", output_index=0, item=message("in_progress", [])),
            event("response.content_part.added", **loc, part=empty_part),
        ]
        deltas = [event("response.output_text.delta", **loc, delta=p, logprobs=[]) for p in pieces]
        tail = [
            event("response.output_text.done", **loc, text=text, logprobs=[]),
            event("response.content_part.done", **loc, part=part_done),
            event(
                "response.output_item.done", output_index=0, item=message("completed", [part_done])
            ),
            event(
                "response.completed" if status == "completed" else "response.incomplete",
                response=final,
            ),
        ]
        await self._stream(req, receive, send, delay, abort, head=head, pieces=deltas, tail=tail)

    # -- streaming core -----------------------------------------------------------------------

    async def _stream(
        self,
        req: _Req,
        receive: Receive,
        send: Send,
        delay: float,
        abort: int | None,
        *,
        head: Iterable[bytes],
        pieces: Sequence[bytes],
        tail: Iterable[bytes],
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": self._extra_headers(req, _SSE_HEADERS),
            }
        )
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, gone)) if delay > 0 else None
        try:
            first = b"".join(head)
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            for i, piece in enumerate(pieces):
                if abort is not None and i >= abort:
                    # Return without finishing the body: uvicorn closes the connection and the
                    # client sees an incomplete chunked response, like an upstream dying mid-stream.
                    return
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gone.wait(), delay)
                    if gone.is_set():
                        return
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()


# --------------------------------------------------------------------------------------------
# ASGI plumbing


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


async def _sleep_or_disconnect(receive: Receive, seconds: float) -> None:
    if seconds <= 0:
        return
    gone = asyncio.Event()
    watcher = asyncio.ensure_future(_watch_disconnect(receive, gone))
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), seconds)
    finally:
        watcher.cancel()
    if gone.is_set():
        raise _ClientGone


# --------------------------------------------------------------------------------------------
# public factory + runner


def create_mock_upstream(
    *,
    name: str = "mock",
    chunk_delay: float = 0.0,
    chunks: int | None = None,
    api_key: str | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    strict_models: bool = False,
    record_file: str | os.PathLike[str] | None = None,
    max_recorded: int = 10_000,
    embedding_dims: int = 64,
) -> MockUpstream:
    """Build the MOCK model server ASGI app.

    ``name`` labels the instance (``x-mock-upstream`` response header, ``owned_by``,
    ``system_fingerprint``) so tests can tell several upstreams apart. ``chunks`` fixes the
    completion length in words (default: the echo sentence). ``api_key`` makes every ``/v1``
    request require ``Authorization: Bearer <api_key>`` (401 ``invalid_api_key`` otherwise).
    ``strict_models`` makes unknown models 404 ``model_not_found``.
    """
    return MockUpstream(
        name=name,
        chunk_delay=chunk_delay,
        chunks=chunks,
        api_key=api_key,
        models=models,
        strict_models=strict_models,
        record_file=record_file,
        max_recorded=max_recorded,
        embedding_dims=embedding_dims,
    )


BANNER = """\
==============================================================================
  MOCK MODEL SERVER (releasegate.mockupstream) -- NOT A REAL MODEL
  Deterministic fake OpenAI-compatible answers for demos, tests and benchmarks.
  name={name} models={models}
  listening on {url}/v1   (control: {url}/_mock/requests, /_mock/reset)
  chunk_delay={chunk_delay}s api_key={auth} record_file={record_file}
=============================================================================="""


def main(argv: Sequence[str] | None = None) -> int:
    import socket

    import uvicorn

    p = argparse.ArgumentParser(
        prog="python -m releasegate.mockupstream",
        description="MOCK OpenAI-compatible model server (not a real model).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port", type=int, default=8001, help="0 picks a free port (printed in the banner)"
    )
    p.add_argument("--name", default="mock")
    p.add_argument("--chunk-delay", type=float, default=0.0)
    p.add_argument("--chunks", type=int, default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model ids")
    p.add_argument("--strict-models", action="store_true")
    p.add_argument("--record-file", default=None)
    p.add_argument("--max-recorded", type=int, default=10_000)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)

    app = create_mock_upstream(
        name=args.name,
        chunk_delay=args.chunk_delay,
        chunks=args.chunks,
        api_key=args.api_key,
        models=[m for m in args.models.split(",") if m],
        strict_models=args.strict_models,
        record_file=args.record_file,
        max_recorded=args.max_recorded,
    )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    port = sock.getsockname()[1]
    url = f"http://[{args.host}]:{port}" if ":" in args.host else f"http://{args.host}:{port}"
    print(
        BANNER.format(
            name=args.name,
            models=",".join(app.models),
            url=url,
            chunk_delay=args.chunk_delay,
            auth="required" if args.api_key else "none",
            record_file=args.record_file or "-",
        ),
        flush=True,
    )
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level=args.log_level,
        access_log=False,
        ws="none",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
