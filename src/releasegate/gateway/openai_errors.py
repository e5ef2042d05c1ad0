"""OpenAI-style error responses: the body, status and headers that make the ``openai`` SDK raise the right class.

Body: ``{"error": {"message", "type", "param", "code"}}``. Headers: ``x-request-id``, the
``x-releasegate-reason`` code, ``x-should-retry: false`` for denials a retry cannot fix (the SDK
then does not retry 401/403/404/413 or a halt), ``retry-after`` and ``x-ratelimit-*`` on 429.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from releasegate.policy.access import NO_RETRY, REASONS

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_TYPE = (b"content-type", b"application/json")


def status_of(code: str) -> int:
    return REASONS.get(code, (500, "api_error"))[0]


def error_object(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The ``error`` member of an OpenAI error body."""
    return {"message": message, "type": REASONS.get(code, (500, "api_error"))[1], "param": param, "code": code}


def error_body(code: str, message: str, param: str | None = None) -> bytes:
    return orjson.dumps({"error": error_object(code, message, param)})


def error_header_value(code: str, message: str, param: str | None = None) -> bytes:
    """The error body as one ASCII header line (for edge proxies that cannot pass a body through)."""
    return json.dumps({"error": error_object(code, message, param)}, ensure_ascii=True, separators=(",", ":")).encode()


def error_headers(code: str, request_id: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> Headers:
    headers: Headers = [JSON_TYPE, (b"x-request-id", request_id.encode()), (b"x-releasegate-reason", code.encode())]
    if code in NO_RETRY:
        headers.append((b"x-should-retry", b"false"))
    headers.extend(extra)
    return headers


def limit_headers(headers: dict[str, str], retry_after: float | None) -> Headers:
    """``x-ratelimit-*`` headers from a LimitDecision, and ``retry-after`` (whole seconds, rounded up)."""
    out: Headers = [(k.encode(), v.encode()) for k, v in headers.items()]
    if retry_after is not None:
        out.append((b"retry-after", str(max(1, int(-(-retry_after // 1)))).encode()))
        out.append((b"retry-after-ms", str(max(1, int(retry_after * 1000))).encode()))
    return out


async def send_json(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, code: str, message: str, *, request_id: str, param: str | None = None,
                     extra: Iterable[tuple[bytes, bytes]] = (), status: int | None = None) -> int:
    """Send an OpenAI-style error; returns the status sent."""
    status = status or status_of(code)
    await send_json(send, status, error_body(code, message, param), error_headers(code, request_id, extra))
    return status
