"""The mock upstream ASGI app: entry point, lifespan, routing, auth, control endpoints."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

import orjson

from releasegate.mockupstream._asgi import (
    _JSON_HEADERS,
    Receive,
    Scope,
    Send,
    _ClientGone,
    _dumps,
    _error_body,
    _read_body,
    _respond,
    _sleep_or_disconnect,
)
from releasegate.mockupstream.faults import _ERROR_TYPES, GARBAGE_BODY
from releasegate.mockupstream.prompts import _Req
from releasegate.mockupstream.recording import MockState
from releasegate.mockupstream.responses import _Responder

__all__ = ["DEFAULT_MODELS", "MockUpstream", "create_mock_upstream"]

DEFAULT_MODELS: tuple[str, ...] = ("atlas-8b-v1", "atlas-8b-v2")


class MockUpstream(_Responder):
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
