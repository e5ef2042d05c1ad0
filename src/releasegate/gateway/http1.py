"""A lean HTTP/1.1 client for the gateway's hot path: keep-alive pools over asyncio, parsed by httptools.

Why not a general client: forwarding one POST is the gateway's largest per-request cost. Profiled
under load (py-spy, GIL samples, one process at ~3,700 req/s), aiohttp's client held the GIL about
27% of the time (a task per request to write the body, header multidicts, the connector's
bookkeeping); this module does the same exchange in a few callbacks. It does only what the gateway
needs: POST with a body already in memory, ``http``/``https``, keep-alive, a read timeout between
bytes, the body read whole or streamed as it arrives. Parsing (status line, headers, chunked
transfer-encoding) is httptools (llhttp, the parser uvicorn uses for the server side).

Failure model, as ``upstream.UpstreamClient`` expects it:

* ``ConnectError``: no connection could be opened (the request never left: safe to try the next upstream);
* ``TimeoutError``: nothing arrived for ``read_timeout`` seconds (headers or between body bytes);
* ``ProtocolError``: the peer closed the connection early or sent something that is not HTTP.

Idle connections are kept at most ``idle_timeout`` seconds (4 s: below uvicorn's default keep-alive
of 5 s, which vLLM and most Python model servers inherit), so a request is rarely written to a
connection the server is closing; one the server already closed is noticed (EOF) and dropped.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncGenerator, Iterable
from typing import Any
from urllib.parse import urlsplit

import httptools

__all__ = ["ConnectError", "Http1Pool", "ProtocolError", "Response"]

_HIGH_WATER = 1 << 20  # bytes buffered from a response before reading from the socket pauses


class ConnectError(Exception):
    """The connection could not be opened; nothing was sent."""


class ProtocolError(Exception):
    """The exchange broke: early close, or a response that is not HTTP/1.x."""


class _StaleConnection(ProtocolError):
    """A reused connection closed before any byte of the answer: the server had closed it while idle."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self, pool: Http1Pool, key: tuple[str, int, bool]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.response: Response | None = None
        self.parser: Any = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        response.last_read = self.loop.time()
        response.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response.fail(ProtocolError("the model server tried to switch protocols"))
            self.close()
        except httptools.HttpParserError as exc:
            response.fail(ProtocolError(f"the model server sent something that is not HTTP ({exc})"))
            self.close()

    def eof_received(self) -> bool | None:
        response = self.response
        if response is not None and response.headers_done and not response.done and response.until_close:
            response.on_message_complete()  # the body ran to the end of the connection
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None and not response.done:
            if response.headers_done and response.until_close and exc is None:
                response.on_message_complete()
            elif self.reused and not response.received:
                response.fail(_StaleConnection("the model server had closed the idle connection"))
            else:
                response.fail(ProtocolError("the model server closed the connection before the answer was complete"))

    # -- exchange -----------------------------------------------------------------------------

    def send(self, head: bytes, body: bytes, read_timeout: float) -> Response:
        response = Response(self, read_timeout)
        self.response = response
        self.parser = httptools.HttpResponseParser(response)
        assert self.transport is not None
        if len(body) < 65536:
            self.transport.write(head + body)  # one send for the usual request
        else:
            self.transport.writelines((head, body))  # no copy of a large body
        return response

    def finished(self, response: Response) -> None:
        """The caller is done with ``response``: keep the connection if it can carry another exchange."""
        if self.response is not response:
            return
        self.response = None
        if not self.closed and response.done and response.error is None and response.keep_alive:
            if response.paused and self.transport is not None:
                self.transport.resume_reading()
            self.idle_since = self.loop.time()
            self.pool.release(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """An answer: status and headers once ``start`` returns; then ``read`` it whole or iterate ``chunks``.

    Also the httptools callback target for its connection's parser.
    """

    __slots__ = ("_body", "_bytes", "_chunk_waiter", "_conn", "_headers_waiter", "_timer", "content_type", "done",
                 "error", "headers", "headers_done", "keep_alive", "last_read", "paused", "read_timeout", "received",
                 "status", "until_close")

    def __init__(self, conn: _Connection, read_timeout: float) -> None:
        self._conn = conn
        loop = conn.loop
        self.read_timeout = read_timeout
        self.last_read = loop.time()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_type = ""
        self.headers_done = False
        self.done = False
        self.until_close = False  # no length, not chunked: the body ends when the connection does
        self.keep_alive = False
        self.error: Exception | None = None
        self.paused = False
        self.received = False  # any byte of the answer yet
        self._body: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._headers_waiter: asyncio.Future[None] | None = loop.create_future()
        self._chunk_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = loop.call_at(self.last_read + read_timeout, self._check_timeout)

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:  # a second answer in the same bytes: nobody asked for it, so the connection is spent
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done and not self.done:  # not trailers, not a second answer
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.done:
            return
        parser = self._conn.parser
        self.status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        chunked = False
        length = False
        for name, value in self.headers:
            if name == b"content-type":
                self.content_type = value.decode("latin-1")
            elif name == b"content-length":
                length = True
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        self.until_close = not (chunked or length) and self.status not in (204, 304) and self.status >= 200
        if self.status < 200:  # 1xx (e.g. 100 Continue): the real answer follows
            self.headers = []
            return
        self.headers_done = True
        self._wake_headers()

    def on_body(self, chunk: bytes) -> None:
        if self.done:
            return
        self._body.append(chunk)
        self._bytes += len(chunk)
        if self._bytes > _HIGH_WATER and not self.paused and self._conn.transport is not None:
            self.paused = True
            self._conn.transport.pause_reading()
        self._wake_chunks()

    def on_message_complete(self) -> None:
        if not self.headers_done or self.done:  # the end of a 1xx, or of an answer nobody asked for
            return
        self.done = True
        self._cancel_timer()
        self._wake_chunks()

    # -- failure ------------------------------------------------------------------------------

    def fail(self, error: Exception) -> None:
        if self.done:
            return
        self.error = error
        self.done = True
        self._cancel_timer()
        self._wake_headers()
        self._wake_chunks()

    def _check_timeout(self) -> None:
        loop = self._conn.loop
        if self.paused:  # we stopped reading (a slow consumer): the server is not the one stalling
            self.last_read = loop.time()
        due = self.last_read + self.read_timeout
        if loop.time() < due:
            self._timer = loop.call_at(due, self._check_timeout)
            return
        self._timer = None
        self.fail(TimeoutError())
        self._conn.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake_headers(self) -> None:
        waiter = self._headers_waiter
        if waiter is not None:
            self._headers_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake_chunks(self) -> None:
        waiter = self._chunk_waiter
        if waiter is not None:
            self._chunk_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the caller's side ----------------------------------------------------------------------

    async def start(self) -> None:
        """Wait for the status line and headers."""
        if self._headers_waiter is not None:
            await self._headers_waiter
        if self.error is not None:
            raise self.error

    def _take(self) -> bytes:
        data = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body.clear()
        self._bytes = 0
        if self.paused and not self.done and self._conn.transport is not None:
            self.paused = False
            self.last_read = self._conn.loop.time()
            self._conn.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        """The whole body."""
        while not self.done:
            self._chunk_waiter = self._conn.loop.create_future()
            if self.paused and self._conn.transport is not None:  # reading it whole: no reason to hold back
                self.paused = False
                self.last_read = self._conn.loop.time()
                self._conn.transport.resume_reading()
            await self._chunk_waiter
        if self.error is not None:
            raise self.error
        return self._take()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives (whatever arrived since the last step, never empty)."""
        while True:
            if self._body:
                yield self._take()
                continue
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            self._chunk_waiter = self._conn.loop.create_future()
            await self._chunk_waiter

    def close(self) -> None:
        """Done with the answer (read or not): the connection goes back to the pool or is closed."""
        self._cancel_timer()
        self._conn.finished(self)


class Http1Pool:
    """Keep-alive connections per (host, port, tls). Create inside the running event loop."""

    def __init__(self, *, connect_timeout: float = 5.0, idle_timeout: float = 4.0, max_idle_per_host: int = 256,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle_per_host = max_idle_per_host
        self._ssl = ssl_context
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._targets: dict[str, tuple[tuple[str, int, bool], bytes, str]] = {}
        self._closed = False

    def _target(self, url: str) -> tuple[tuple[str, int, bool], bytes, str]:
        """(pool key, Host header, path prefix) of a base URL, cached."""
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConnectError(f"not an http(s) URL: {url!r}")
            tls = parts.scheme == "https"
            port = parts.port or (443 if tls else 80)
            default = port == (443 if tls else 80)
            host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
            host_header = (host if default else f"{host}:{port}").encode("idna")
            found = self._targets[url] = ((parts.hostname, port, tls), host_header, parts.path.rstrip("/"))
        return found

    async def _connect(self, key: tuple[str, int, bool]) -> _Connection:
        host, port, tls = key
        conn = _Connection(self, key)
        context: ssl.SSLContext | None = None
        if tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(lambda: conn, host, port, ssl=context,
                                                  server_hostname=host if tls else None)
        except TimeoutError:
            raise ConnectError(f"connecting to {host}:{port} timed out after {self.connect_timeout:g}s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        return conn

    def _reuse(self, key: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        horizon = self.loop.time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > horizon and conn.transport is not None \
                    and not conn.transport.is_closing():
                conn.reused = True
                return conn
            conn.close()
        return None

    def release(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle_per_host:
            conn.close()
            return
        idle.append(conn)

    async def post(self, base_url: str, path: str, body: bytes, headers: Iterable[tuple[str, str]], *,
                   read_timeout: float) -> Response:
        """Send ``POST base_url+path``; the response once its headers are in (body unread)."""
        key, host, prefix = self._target(base_url)
        try:
            lines = [b"POST ", (prefix + path).encode("ascii"), b" HTTP/1.1\r\nHost: ", host,
                     b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
        except UnicodeEncodeError:
            raise ProtocolError(f"the path {prefix + path!r} is not ASCII") from None
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                continue  # never let a value split the request
            try:
                lines += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
            except UnicodeEncodeError:
                continue  # not representable in an HTTP/1.1 header
        lines.append(b"\r\n")
        head = b"".join(lines)
        conn = self._reuse(key)
        for fresh in (conn is None, True):
            if fresh:
                conn = await self._connect(key)
            assert conn is not None
            response = conn.send(head, body, read_timeout)
            try:
                await response.start()
            except _StaleConnection:
                response.close()
                continue  # it never reached the server: once more, on a new connection
            except BaseException:
                response.close()
                raise
            return response
        raise ProtocolError("the model server closed a new connection before answering")

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
