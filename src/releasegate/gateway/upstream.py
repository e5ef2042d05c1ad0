"""Talking to model servers: one pooled HTTP client per process, failover across a pool, SSE relay.

One long-lived keep-alive pool (``gateway.http1``: no environment proxies, no redirects, no cookies)
serves every request of a gateway process. A connection that cannot be opened is retried on the pool's next
upstream (the request never reached the first); anything after the request was sent is not retried,
because a completion is not idempotent.

Streaming: events are forwarded as soon as each one is complete (no buffering beyond one event).
Token usage of a stream comes from its final ``usage`` chunk; the gateway asks for it
(``stream_options.include_usage``) when the client did not and then removes that chunk, so a client
sees exactly the stream it asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from releasegate.gateway.http1 import ConnectError, Http1Pool, ProtocolError, Response
from releasegate.gateway.routing import Backend, UpstreamHealth

# Request headers never passed to a model server: hop-by-hop, the client's credentials, and ours.
DROP_REQUEST_HEADERS = frozenset({
    b"authorization", b"host", b"content-length", b"content-type", b"connection", b"keep-alive", b"transfer-encoding",
    b"te", b"trailer", b"upgrade", b"proxy-authorization", b"proxy-connection", b"cookie", b"x-request-id",
    b"accept-encoding", b"api-key", b"openai-organization", b"openai-project", b"expect",
})
# Response headers the gateway sets itself or that describe the upstream hop only.
DROP_RESPONSE_HEADERS = frozenset({
    b"content-length", b"connection", b"keep-alive", b"transfer-encoding", b"content-encoding", b"server", b"date",
    b"x-request-id", b"set-cookie", b"alt-svc",
})


class UpstreamFailure(Exception):
    """No usable answer from the pool: ``code`` is upstream_unavailable, upstream_timeout or upstream_error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


def usage_of(obj: Any) -> Usage | None:
    """Token usage of a response body or stream chunk (chat, completions, embeddings, responses)."""
    if not isinstance(obj, dict):
        return None
    u = obj.get("usage")
    if not isinstance(u, dict):
        resp = obj.get("response")
        u = resp.get("usage") if isinstance(resp, dict) else None
        if not isinstance(u, dict):
            return None
    prompt = u.get("prompt_tokens", u.get("input_tokens", 0)) or 0
    completion = u.get("completion_tokens", u.get("output_tokens", 0)) or 0
    total = u.get("total_tokens") or (prompt + completion)
    try:
        return Usage(int(prompt), int(completion), int(total))
    except (TypeError, ValueError):
        return None


class SSERelay:
    """Cuts an upstream event stream into complete events, notes the usage, optionally drops the usage chunk."""

    __slots__ = ("_buf", "strip_usage", "usage")

    MAX_PENDING = 1 << 20  # an "event" this large without a boundary is passed through as is

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: Usage | None = None
        self._buf = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes that can be forwarded now."""
        data = self._buf + chunk if self._buf else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            if len(data) > self.MAX_PENDING:
                self._buf = b""
                return data
            self._buf = data
            return b""
        complete, self._buf = data[: end + 2], data[end + 2:]
        if b'"usage":{' not in complete and b'"usage": {' not in complete:
            return complete
        out: list[bytes] = []
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            if b'"usage"' in event and self._take_usage(event):
                continue
            out.append(event + b"\n\n")
        return b"".join(out)

    def _take_usage(self, event: bytes) -> bool:
        """Record the usage in ``event``; True if the event should be dropped."""
        payload = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        usage = usage_of(obj)
        if usage is None:
            return False
        self.usage = usage
        return self.strip_usage and obj.get("choices") == []

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest


class UpstreamResponse:
    """An upstream answer whose body is not read yet. Read or stream it, then ``close`` it."""

    __slots__ = ("_response", "content_type", "status")

    def __init__(self, response: Response) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.content_type

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers worth passing to the client."""
        return [(k, v) for k, v in self._response.headers if k not in DROP_RESPONSE_HEADERS]

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except TimeoutError:
            raise UpstreamFailure("upstream_timeout", "the model server stopped answering mid-response") from None
        except ProtocolError as exc:
            raise UpstreamFailure("upstream_error", f"the model server broke off its answer ({exc})") from None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; UpstreamFailure if the upstream stalls or breaks off."""
        try:
            async for chunk in self._response.chunks():
                yield chunk
        except TimeoutError:
            raise UpstreamFailure("upstream_timeout", "the model server stopped sending the stream (timeout)") from None
        except ProtocolError as exc:
            raise UpstreamFailure("upstream_error", f"the model server broke off the stream ({exc})") from None

    def close(self) -> None:
        self._response.close()


class UpstreamClient:
    """The process-wide pooled client. ``open`` returns the response of the first reachable upstream.

    The transport is ``gateway.http1`` (keep-alive pools, httptools parsing), not a general-purpose
    client: forwarding is the gateway's largest per-request cost. Measured on this 2-core box, one
    gateway process under 16 connections: httpx 0.28 under 200 req/s (its pool scans every connection
    per request), aiohttp ~3,700 req/s with aiohttp holding the GIL ~27% of the time, and http1 (see
    docs/benchmarks.md for the side-by-side figures). Create it inside the running event loop (the
    replica's lifespan).
    """

    def __init__(self, health: UpstreamHealth, *, max_connections: int = 1024, connect_timeout: float = 5.0) -> None:
        self.health = health
        self.connect_timeout = connect_timeout
        self._pool = Http1Pool(connect_timeout=connect_timeout, max_idle_per_host=max_connections)

    async def open(self, backend: Backend, path: str, body: bytes, headers: list[tuple[str, str]]) -> tuple[UpstreamResponse, str]:
        """Send the request; (response with unread body, upstream URL). UpstreamFailure when none answered."""
        tried = 0
        for base in self.health.order(backend.urls):
            tried += 1
            try:
                response = await self._pool.post(base, path, body, headers, read_timeout=backend.timeout)
            except ConnectError:
                self.health.failed(base)
                continue
            except TimeoutError:
                self.health.failed(base)
                raise UpstreamFailure("upstream_timeout", f"the model server for {backend.name} did not answer within "
                                      f"{backend.timeout:g}s") from None
            except ProtocolError as exc:
                self.health.failed(base)
                raise UpstreamFailure("upstream_error", f"the model server for {backend.name} failed: {exc}") from None
            if response.status in (502, 503, 504):
                self.health.failed(base)
            else:
                self.health.succeeded(base)
            return UpstreamResponse(response), base
        raise UpstreamFailure("upstream_unavailable", f"no model server for {backend.name} could be reached "
                              f"(tried {tried}); try again shortly")

    async def aclose(self) -> None:
        await self._pool.aclose()
