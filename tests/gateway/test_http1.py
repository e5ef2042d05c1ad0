"""gateway.http1 against real sockets: keep-alive, framing, streaming, timeouts, broken peers, the pool.

Most servers here are ``asyncio.start_server`` handlers that write exact bytes, so the framing (and how
it is split across TCP writes) is under the test's control; the mock model server covers the real
OpenAI-shaped exchange. Nothing is mocked on the client side.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from releasegate.gateway.http1 import ConnectError, Http1Pool, ProtocolError, Response
from releasegate.mockupstream import MockUpstream

# -- a raw loopback server -------------------------------------------------------------------------


@dataclass
class Request:
    """One request as the server read it off the wire."""

    conn: int  # index of the TCP connection it arrived on
    head: bytes
    body: bytes

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        out = []
        for line in self.head.split(b"\r\n")[1:]:
            if line:
                name, sep, value = line.partition(b":")
                assert sep, f"a header line without a colon: {line!r}"
                out.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        return out

    def header(self, name: str) -> str | None:
        found = [v for n, v in self.headers if n == name]
        assert len(found) <= 1, f"{name} sent {len(found)} times"
        return found[0] if found else None


@dataclass
class Conn:
    """The server's side of one accepted connection."""

    server: Server
    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def request(self) -> Request | None:
        """The next request on this connection; None when the client closed it between requests."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            self.server.eof.add(self.index)
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        req = Request(self.index, head, await self.reader.readexactly(length))
        self.server.requests.append(req)
        return req

    async def send(self, *parts: bytes, gap: float = 0.0) -> None:
        """Write ``parts`` one write each (``gap`` seconds apart, so they leave as separate segments)."""
        for i, part in enumerate(parts):
            if i and gap:
                await asyncio.sleep(gap)
            self.writer.write(part)
            await self.writer.drain()

    async def until_eof(self) -> None:
        """Wait (sending nothing) until the client closes the connection."""
        while await self.reader.read(65536):
            pass
        self.server.eof.add(self.index)

    async def echo(self) -> None:
        """Answer every further request on this connection with ``echo:<body>``."""
        while (req := await self.request()) is not None:
            await self.send(ok(b"echo:" + req.body))


Handler = Callable[[Conn], Awaitable[None]]


@dataclass
class Server:
    """``asyncio.start_server`` on 127.0.0.1: every accepted connection runs ``handler(conn)``."""

    handler: Handler
    accepted: int = 0
    requests: list[Request] = field(default_factory=list)
    eof: set[int] = field(default_factory=set)  # connections the client closed
    url: str = ""
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(self, self.accepted, reader, writer)
        self.accepted += 1
        try:
            await self.handler(conn)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the test is over, or the client went away: both are the client's business here
        finally:
            self._tasks.discard(task)
            writer.close()


def ok(body: bytes, *headers: bytes, status: bytes = b"200 OK") -> bytes:
    """A complete Content-Length response."""
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


def chunked(pieces: Iterable[bytes]) -> bytes:
    """A chunked body (pieces must be non-empty), terminator included."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
UNTIL_CLOSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def fetch(pool: Http1Pool, url: str, body: bytes = b"x", *, path: str = "/",
                headers: Sequence[tuple[str, str]] = (), timeout: float = 3.0) -> tuple[Response, bytes]:
    """POST, read the whole body, close: (response, body)."""
    response = await pool.post(url, path, body, list(headers), read_timeout=timeout)
    try:
        return response, await response.read()
    finally:
        response.close()


def closed_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def pool() -> AsyncIterator[Http1Pool]:
    p = Http1Pool(connect_timeout=2.0)
    yield p
    await p.aclose()


async def echo(conn: Conn) -> None:
    await conn.echo()


# -- 1. keep-alive ---------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(pool: Http1Pool) -> None:
    async def handler(conn: Conn) -> None:
        while (req := await conn.request()) is not None:
            await conn.send(ok(b"echo:" + req.body, b"Content-Type: text/plain; charset=utf-8", b"X-Up: yes"))

    async with Server(handler) as srv:
        for i in range(5):
            response, body = await fetch(pool, srv.url, b"r%d" % i)
            assert (response.status, body) == (200, b"echo:r%d" % i)
            assert response.content_type == "text/plain; charset=utf-8"
            assert (b"x-up", b"yes") in response.headers  # names lowercased, values as sent
            assert (b"content-length", b"%d" % len(body)) in response.headers
        assert srv.accepted == 1
        assert [r.conn for r in srv.requests] == [0] * 5


async def test_connection_close_from_the_server_is_honoured(pool: Http1Pool) -> None:
    async def handler(conn: Conn) -> None:  # says close but leaves it to the client to do it
        req = await conn.request()
        assert req is not None
        await conn.send(ok(b"bye:" + req.body, b"Connection: close"))
        await conn.until_eof()

    async with Server(handler) as srv:
        for i in range(3):
            _, body = await fetch(pool, srv.url, b"%d" % i)
            assert body == b"bye:%d" % i
        assert srv.accepted == 3  # a new connection each time
        await eventually(lambda: srv.eof == {0, 1, 2})  # and the client closed each one


async def test_http10_response_without_keep_alive_is_not_reused(pool: Http1Pool) -> None:
    async def handler(conn: Conn) -> None:
        req = await conn.request()
        assert req is not None
        await conn.send(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await conn.until_eof()

    async with Server(handler) as srv:
        for _ in range(2):
            assert (await fetch(pool, srv.url))[1] == b"ok"
        assert srv.accepted == 2


# -- 2. framing ------------------------------------------------------------------------------------

PIECES = [b"a", b"bcdef", b"\r\n", b"0\r\n\r\n", b"x" * 1000, b"y" * 70000, b"z"]  # data that looks like framing
PAYLOAD = b"".join(PIECES)


def framed(kind: str) -> list[bytes]:
    """PAYLOAD as a ``kind`` response, cut into many writes at awkward places (inside sizes, CRLFs, data)."""
    if kind == "content-length":
        data = ok(PAYLOAD, b"Content-Type: text/plain")
    elif kind == "chunked":
        data = CHUNKED_HEAD + chunked(PIECES)
    else:
        data = UNTIL_CLOSE_HEAD + PAYLOAD
    start = data.index(b"\r\n\r\n")
    cuts = [*range(5, 30, 7), *range(start, start + 40), *range(start + 1000, len(data), 9000),
            len(data) - 1, len(data) - 3, len(data) - 5]
    return split(data, cuts)


@pytest.mark.parametrize("kind", ["content-length", "chunked", "until-close"])
async def test_bodies_are_read_whole_and_exactly(pool: Http1Pool, kind: str) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.request() is not None
            await conn.send(*framed(kind), gap=0.002)
            if kind == "until-close":
                return  # closing the connection ends the body
        await conn.echo()

    async with Server(handler) as srv:
        response, body = await fetch(pool, srv.url)
        assert response.status == 200 and body == PAYLOAD
        # the framing ended exactly where it should: the next exchange gets its own answer
        assert (await fetch(pool, srv.url, b"next"))[1] == b"echo:next"
        assert srv.accepted == (2 if kind == "until-close" else 1)


@pytest.mark.parametrize("kind", ["content-length", "chunked", "until-close"])
async def test_bodies_streamed_with_chunks_are_exact(pool: Http1Pool, kind: str) -> None:
    async def handler(conn: Conn) -> None:
        assert await conn.request() is not None
        await conn.send(*framed(kind), gap=0.002)
        if kind != "until-close":
            await conn.until_eof()

    async with Server(handler) as srv:
        response = await pool.post(srv.url, "/", b"x", [], read_timeout=3)
        got = [chunk async for chunk in response.chunks()]
        response.close()
        assert b"".join(got) == PAYLOAD and all(got)  # never an empty chunk


@pytest.mark.parametrize("status", [204, 304])
async def test_statuses_without_a_body_end_at_the_headers(pool: Http1Pool, status: int) -> None:
    async def handler(conn: Conn) -> None:  # no length, and the connection stays open
        while await conn.request() is not None:
            await conn.send(b"HTTP/1.1 %d Whatever\r\nX-Status: %d\r\n\r\n" % (status, status))

    async with Server(handler) as srv:
        started = time.monotonic()
        for _ in range(2):
            response, body = await fetch(pool, srv.url, timeout=3)
            assert (response.status, body) == (status, b"")
        assert time.monotonic() - started < 1.5  # not waiting for a close or the read timeout
        assert srv.accepted == 1


async def test_an_interim_100_continue_is_skipped(pool: Http1Pool) -> None:
    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n", ok(b"final", b"X-Final: 1"), gap=0.01)

    async with Server(handler) as srv:
        for _ in range(2):
            response, body = await fetch(pool, srv.url)
            assert (response.status, body) == (200, b"final")
            assert (b"x-final", b"1") in response.headers and (b"x-interim", b"1") not in response.headers
        assert srv.accepted == 1


# -- 3. streaming ----------------------------------------------------------------------------------

FIRST, SECOND = b"data: {\"n\": 1}\n\n", b"data: {\"n\": 2}\n\n"


@pytest.mark.parametrize("kind", ["chunked", "content-length", "until-close"])
async def test_chunks_yield_data_as_it_arrives(pool: Http1Pool, kind: str) -> None:
    second_sent: list[float] = []

    async def handler(conn: Conn) -> None:
        assert await conn.request() is not None
        if kind == "chunked":
            head, one, two = CHUNKED_HEAD, chunked([FIRST])[:-5], chunked([SECOND])
        elif kind == "content-length":
            head, one, two = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(FIRST + SECOND), FIRST, SECOND
        else:
            head, one, two = UNTIL_CLOSE_HEAD, FIRST, SECOND
        await conn.send(head + one)
        await asyncio.sleep(0.2)
        second_sent.append(time.monotonic())
        await conn.send(two)
        if kind != "until-close":
            await conn.until_eof()

    async with Server(handler) as srv:
        response = await pool.post(srv.url, "/", b"x", [], read_timeout=3)
        received: list[tuple[float, bytes]] = []
        async for chunk in response.chunks():
            received.append((time.monotonic(), chunk))
        response.close()
    assert received[0][1] == FIRST
    assert received[0][0] < second_sent[0]  # the first event was in hand before the second was sent
    assert b"".join(c for _, c in received) == FIRST + SECOND


# -- 4. the request on the wire --------------------------------------------------------------------


async def test_the_request_on_the_wire(pool: Http1Pool) -> None:
    async with Server(echo) as srv:
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "héllo"}]})
        headers = [("content-type", "application/json"), ("x-request-id", "rid-1"),
                   ("x-cr", "a\rInjected-CR: 1"), ("x-lf", "b\nInjected-LF: 1"),
                   ("x-split", "c\r\n\r\nPOST /smuggled HTTP/1.1\r\nContent-Length: 0"),
                   ("x-name\r\nInjected-Name", "1"), ("authorization", "Bearer sk-up"), ("x-empty", "")]
        _, answer = await fetch(pool, srv.url + "/v1/", body, path="/chat/completions", headers=headers)
        assert answer == b"echo:" + body
        await fetch(pool, srv.url, b"", path="/plain")

        first, second = srv.requests  # nothing smuggled in between
        assert first.request_line == b"POST /v1/chat/completions HTTP/1.1"
        assert first.body == body
        assert first.headers == [
            ("host", f"127.0.0.1:{srv.port}"),
            ("content-length", str(len(body))),
            ("content-type", "application/json"),
            ("x-request-id", "rid-1"),
            ("authorization", "Bearer sk-up"),
            ("x-empty", ""),
        ]
        assert b"Injected" not in first.head and b"smuggled" not in first.head
        assert second.request_line == b"POST /plain HTTP/1.1"
        assert second.header("content-length") == "0" and second.body == b""
        assert second.conn == first.conn == 0


async def test_a_large_request_body_is_sent_whole(pool: Http1Pool) -> None:
    big = random.Random(1).randbytes((2 << 20) + 7)

    async def handler(conn: Conn) -> None:
        while (req := await conn.request()) is not None:
            await conn.send(ok(b"%d:%d" % (len(req.body), req.body == big)))

    async with Server(handler) as srv:
        for _ in range(2):
            assert (await fetch(pool, srv.url, big))[1] == b"%d:1" % len(big)
        assert srv.accepted == 1


# -- 5. read timeout -------------------------------------------------------------------------------


async def test_a_server_that_never_answers_times_out(pool: Http1Pool) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.request() is not None
            await conn.until_eof()
        else:
            await conn.echo()

    async with Server(handler) as srv:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await pool.post(srv.url, "/", b"x", [], read_timeout=0.3)
        assert 0.24 <= time.monotonic() - started <= 1.8
        await eventually(lambda: 0 in srv.eof)  # the client hung up
        assert (await fetch(pool, srv.url, b"again"))[1] == b"echo:again"
        assert srv.accepted == 2


def first_ten_bytes(kind: str) -> bytes:
    """An answer's head and the first 10 bytes of a longer body (``content-length`` or ``chunked``)."""
    if kind == "content-length":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
    return CHUNKED_HEAD + b"a\r\n0123456789\r\n"


@pytest.mark.parametrize("consume", ["read", "chunks"])
@pytest.mark.parametrize("kind", ["content-length", "chunked"])
async def test_a_server_stalling_mid_body_times_out(pool: Http1Pool, consume: str, kind: str) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.request() is not None
            await conn.send(first_ten_bytes(kind))
            await conn.until_eof()
        else:
            await conn.echo()

    async with Server(handler) as srv:
        started = time.monotonic()
        response = await pool.post(srv.url, "/", b"x", [], read_timeout=0.3)
        assert response.status == 200  # the headers came at once
        got: list[bytes] = []
        with pytest.raises(TimeoutError):
            if consume == "read":
                await response.read()
            else:
                async for chunk in response.chunks():
                    got.append(chunk)
        assert 0.24 <= time.monotonic() - started <= 1.8
        response.close()
        if consume == "chunks":
            assert b"".join(got) == b"0123456789"  # what did arrive was delivered first
        await eventually(lambda: 0 in srv.eof)
        assert (await fetch(pool, srv.url, b"again"))[1] == b"echo:again"
        assert srv.accepted == 2  # the stalled connection was not reused


async def test_the_read_timeout_is_between_bytes_not_for_the_whole_body(pool: Http1Pool) -> None:
    async def handler(conn: Conn) -> None:
        assert await conn.request() is not None
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n", *[b"%d" % i for i in range(8)], gap=0.06)
        await conn.until_eof()

    async with Server(handler) as srv:
        started = time.monotonic()
        _, body = await fetch(pool, srv.url, timeout=0.3)
        assert body == b"01234567" and time.monotonic() - started >= 0.45  # longer than read_timeout in all


# -- 6. broken peers -------------------------------------------------------------------------------


@pytest.mark.parametrize("consume", ["read", "chunks"])
@pytest.mark.parametrize("kind", ["content-length", "chunked"])
async def test_the_server_closing_mid_body_is_a_protocol_error(pool: Http1Pool, consume: str, kind: str) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.request() is not None
            await conn.send(first_ten_bytes(kind))
            await asyncio.sleep(0.05)
            return  # closes
        await conn.echo()

    async with Server(handler) as srv:
        started = time.monotonic()
        response = await pool.post(srv.url, "/", b"x", [], read_timeout=3)
        got: list[bytes] = []
        with pytest.raises(ProtocolError):
            if consume == "read":
                await response.read()
            else:
                async for chunk in response.chunks():
                    got.append(chunk)
        response.close()
        assert time.monotonic() - started < 1.5  # noticed at once, not at the read timeout
        if consume == "chunks":
            assert b"".join(got) == b"0123456789"
        assert (await fetch(pool, srv.url, b"again"))[1] == b"echo:again"


async def test_the_server_closing_before_answering_is_a_protocol_error(pool: Http1Pool) -> None:
    async def handler(conn: Conn) -> None:
        assert await conn.request() is not None

    async with Server(handler) as srv:
        started = time.monotonic()
        with pytest.raises(ProtocolError):
            await pool.post(srv.url, "/", b"x", [], read_timeout=3)
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("garbage", [
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"hello there\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\n",
    CHUNKED_HEAD + b"zz\r\nnot a chunk size\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
], ids=["ssh-banner", "text", "bad-length", "bad-chunk-size", "upgrade"])
async def test_garbage_instead_of_http_is_a_protocol_error(pool: Http1Pool, garbage: bytes) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.request() is not None
            await conn.send(garbage)
            await conn.until_eof()  # the connection stays open: the error is the bytes, not a close
        else:
            await conn.echo()

    async with Server(handler) as srv:
        started = time.monotonic()
        with pytest.raises(ProtocolError):
            response = await pool.post(srv.url, "/", b"x", [], read_timeout=3)
            try:
                await response.read()
            finally:
                response.close()
        assert time.monotonic() - started < 1.5
        await eventually(lambda: 0 in srv.eof)  # the client dropped that connection
        assert (await fetch(pool, srv.url, b"again"))[1] == b"echo:again"
        assert srv.accepted == 2


async def test_nothing_listening_is_a_fast_connect_error(pool: Http1Pool) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectError):
        await pool.post(closed_url(), "/", b"x", [], read_timeout=3)
    assert time.monotonic() - started < 1.0
    with pytest.raises(ConnectError):
        await pool.post("ftp://127.0.0.1:21", "/", b"x", [], read_timeout=3)


# -- 7. idle connections ---------------------------------------------------------------------------


async def test_an_idle_connection_the_server_closed_is_not_reused(pool: Http1Pool) -> None:
    async def handler(conn: Conn) -> None:  # closes a connection after 0.1 s without a request
        while True:
            try:
                req = await asyncio.wait_for(conn.request(), 0.1)
            except TimeoutError:
                return
            if req is None:
                return
            await conn.send(ok(b"echo:" + req.body))

    async with Server(handler) as srv:
        assert (await fetch(pool, srv.url, b"1"))[1] == b"echo:1"
        await asyncio.sleep(0.3)
        assert (await fetch(pool, srv.url, b"2"))[1] == b"echo:2"
        assert srv.accepted == 2
        assert [r.conn for r in srv.requests] == [0, 1]


async def test_connections_idle_longer_than_idle_timeout_are_not_reused() -> None:
    pool = Http1Pool(idle_timeout=0.15)
    try:
        async with Server(echo) as srv:
            await fetch(pool, srv.url)
            await fetch(pool, srv.url)  # at once: reused
            assert srv.accepted == 1
            await asyncio.sleep(0.4)
            assert (await fetch(pool, srv.url, b"late"))[1] == b"echo:late"
            assert srv.accepted == 2
            await eventually(lambda: 0 in srv.eof)  # the stale one was closed, not leaked
    finally:
        await pool.aclose()


async def test_at_most_max_idle_per_host_connections_are_kept() -> None:
    pool = Http1Pool(max_idle_per_host=2)
    try:
        async with Server(echo) as srv:
            for wave in range(2):
                responses = await asyncio.gather(*(pool.post(srv.url, "/", b"%d" % i, [], read_timeout=3)
                                                   for i in range(5)))
                for i, response in enumerate(responses):
                    assert await response.read() == b"echo:%d" % i
                for response in responses:
                    response.close()
                assert srv.accepted == (5 if wave == 0 else 8)  # 2 kept, 3 new
            await eventually(lambda: len(srv.eof) == 6)  # 3 closed after each wave
    finally:
        await pool.aclose()


async def test_aclose_closes_idle_connections() -> None:
    pool = Http1Pool()
    async with Server(echo) as srv:
        await fetch(pool, srv.url)
        await pool.aclose()
        await eventually(lambda: srv.eof == {0})


# -- 8. responses closed early ---------------------------------------------------------------------

BIG = random.Random(7).randbytes(3 << 20)


@pytest.mark.parametrize("how", ["complete-unread", "partial-unread", "one-chunk-streamed", "big-unread"])
async def test_a_response_closed_before_its_body_was_read_does_not_poison_the_pool(pool: Http1Pool,
                                                                                    how: str) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.request() is not None
            if how == "complete-unread":
                await conn.send(ok(b"FIRST-ANSWER"))
            elif how == "big-unread":
                await conn.send(ok(BIG))
            else:  # the rest of the body comes after the client gave up on it
                await conn.send(CHUNKED_HEAD + b"5\r\nFIRST\r\n")
                await asyncio.sleep(0.3)
                await conn.send(b"6\r\n-REST-\r\n0\r\n\r\n")
        await conn.echo()

    async with Server(handler) as srv:
        response = await pool.post(srv.url, "/", b"x", [], read_timeout=3)
        if how == "one-chunk-streamed":
            stream = response.chunks()
            assert await anext(stream) == b"FIRST"
            await stream.aclose()
        else:
            await asyncio.sleep(0.1)  # let (part of) the body arrive
        response.close()
        for i in range(3):
            assert (await fetch(pool, srv.url, b"mine-%d" % i))[1] == b"echo:mine-%d" % i
        if how != "complete-unread":  # an unfinished body: that connection cannot carry another exchange
            assert srv.accepted == 2


async def test_a_cancelled_post_closes_its_connection(pool: Http1Pool) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.request() is not None
            await conn.until_eof()  # never answers
        else:
            await conn.echo()

    async with Server(handler) as srv:
        task = asyncio.create_task(pool.post(srv.url, "/", b"x", [], read_timeout=5))
        await eventually(lambda: len(srv.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: 0 in srv.eof)
        assert (await fetch(pool, srv.url, b"mine"))[1] == b"echo:mine"
        assert srv.accepted == 2


# -- 9. concurrency --------------------------------------------------------------------------------


async def test_concurrent_posts_each_get_their_own_answer(pool: Http1Pool) -> None:
    async def handler(conn: Conn) -> None:
        while (req := await conn.request()) is not None:
            tag = req.header("x-tag") or "?"
            await asyncio.sleep(0.002 * (int(req.body) % 7))  # answers finish out of order
            await conn.send(ok(b"%s|%s" % (tag.encode(), req.body)))

    async def one(i: int) -> bytes:
        return (await fetch(pool, srv.url, b"%d" % i, headers=[("x-tag", f"t{i}")]))[1]

    async with Server(handler) as srv:
        for _ in range(2):
            answers = await asyncio.gather(*(one(i) for i in range(50)))
            assert answers == [b"t%d|%d" % (i, i) for i in range(50)]
        assert srv.accepted == 50  # the second wave reused the first wave's connections


async def test_concurrent_chat_completions_through_the_mock_model_server(pool: Http1Pool,
                                                                          mock: tuple[MockUpstream, str]) -> None:
    base = mock[1] + "/v1"

    async def one(i: int) -> str:
        body = orjson.dumps({"model": "atlas-8b-v1", "messages": [{"role": "user", "content": f"number {i}"}]})
        response, raw = await fetch(pool, base, body, path="/chat/completions",
                                    headers=[("content-type", "application/json"), ("x-request-id", f"r{i}")])
        assert response.status == 200 and response.content_type.startswith("application/json")
        answer: str = orjson.loads(raw)["choices"][0]["message"]["content"]
        return answer

    answers = await asyncio.gather(*(one(i) for i in range(50)))
    assert [a.endswith(f"you said: number {i}") for i, a in enumerate(answers)] == [True] * 50


async def test_a_mock_model_server_stream_arrives_event_by_event(pool: Http1Pool,
                                                                 mock: tuple[MockUpstream, str]) -> None:
    body = orjson.dumps({"model": "atlas-8b-v1", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    headers = [("content-type", "application/json"), ("x-mock-chunks", "3"), ("x-mock-chunk-delay", "0.1")]
    response = await pool.post(mock[1] + "/v1", "/chat/completions", body, headers, read_timeout=3)
    assert response.status == 200 and response.content_type.startswith("text/event-stream")
    times: list[float] = []
    data = b""
    async for chunk in response.chunks():
        times.append(time.monotonic())
        data += chunk
    response.close()
    assert data.endswith(b"data: [DONE]\n\n") and data.count(b"data: ") >= 5
    assert times[-1] - times[0] >= 0.2  # spread over the stream, not buffered to the end

    aborted = await pool.post(mock[1] + "/v1", "/chat/completions", body,
                              [*headers, ("x-mock-abort-after", "1")], read_timeout=3)
    with pytest.raises(ProtocolError):
        await aborted.read()
    aborted.close()


# -- 10. large bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("consume", ["read", "chunks"])
@pytest.mark.parametrize("kind", ["content-length", "chunked"])
async def test_a_large_response_is_intact(pool: Http1Pool, consume: str, kind: str) -> None:
    async def handler(conn: Conn) -> None:
        assert await conn.request() is not None
        if kind == "content-length":
            await conn.send(ok(BIG))
        else:
            await conn.send(CHUNKED_HEAD + chunked(BIG[i:i + 65536] for i in range(0, len(BIG), 65536)))
        await conn.echo()

    async with Server(handler) as srv:
        response = await pool.post(srv.url, "/", b"x", [], read_timeout=5)
        await asyncio.sleep(0.15)  # let more than the high-water mark pile up: reading pauses
        if consume == "read":
            body = await response.read()
        else:
            parts = []
            async for chunk in response.chunks():
                parts.append(chunk)
                await asyncio.sleep(0.005)
            body = b"".join(parts)
        response.close()
        assert len(body) == len(BIG) and body == BIG
        # the connection (paused while it was full) is reusable and in sync
        assert (await fetch(pool, srv.url, b"after"))[1] == b"echo:after"
        assert srv.accepted == 1


# -- the same exchanges on uvloop (what uvicorn runs the gateway on when it is installed) -----------


async def test_a_connection_the_server_closed_right_after_answering_is_retried_fresh(pool: Http1Pool) -> None:
    """The server closes its side just after a keep-alive answer (no ``Connection: close``): the next
    request, written to that connection before its EOF is seen, goes out again on a new one."""

    async def answer_then_close(conn: Conn) -> None:
        req = await conn.request()
        assert req is not None
        await conn.send(ok(b"n%d" % conn.index))

    async with Server(answer_then_close) as server:
        bodies = [(await fetch(pool, server.url))[1] for _ in range(3)]
    assert bodies == [b"n0", b"n1", b"n2"]
    assert len(server.requests) == 3 and server.accepted == 3


async def test_headers_that_cannot_be_encoded_are_left_out_and_leak_nothing(pool: Http1Pool) -> None:
    async with Server(echo) as server:
        _, body = await fetch(pool, server.url, b"a", headers=[("x-a", "€"), ("x-b", "ok")])
        assert body == b"echo:a"
        assert server.requests[0].header("x-a") is None and server.requests[0].header("x-b") == "ok"
        with pytest.raises(ProtocolError):
            await pool.post(server.url, "/€", b"x", [], read_timeout=2)
        assert (await fetch(pool, server.url, b"b"))[1] == b"echo:b"
        assert server.accepted == 1  # the connection went back to the pool both times


async def test_a_slow_consumer_is_not_a_stalled_server(pool: Http1Pool) -> None:
    """Reading paused because the consumer is slow must not count as the server stalling."""
    payload = random.Random(7).randbytes(3 << 20)

    async def big(conn: Conn) -> None:
        await conn.request()
        await conn.send(ok(payload))
        await conn.until_eof()

    async with Server(big) as server:
        response = await pool.post(server.url, "/", b"x", [], read_timeout=0.3)
        got = bytearray()
        try:
            async for chunk in response.chunks():
                got += chunk
                await asyncio.sleep(0.35)  # slower than the read timeout, every step
        finally:
            response.close()
        assert bytes(got) == payload


async def test_bytes_after_a_complete_answer_are_not_mistaken_for_it(pool: Http1Pool) -> None:
    async def two_answers(conn: Conn) -> None:
        if conn.index == 0:
            await conn.request()
            await conn.send(ok(b"hello") + ok(b"world", status=b"201 Created"))
        await conn.echo()

    async with Server(two_answers) as server:
        response, body = await fetch(pool, server.url)
        assert (response.status, body) == (200, b"hello")
        assert [v for n, v in response.headers if n == b"content-length"] == [b"5"]
        response, body = await fetch(pool, server.url, b"next")
        assert body == b"echo:next" and server.accepted == 2  # the spoiled connection was not reused


def test_core_exchanges_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        pool = Http1Pool()
        try:
            async with Server(echo) as srv:
                for i in range(3):
                    assert (await fetch(pool, srv.url, b"%d" % i))[1] == b"echo:%d" % i
                assert srv.accepted == 1

            async def framing(conn: Conn) -> None:
                assert await conn.request() is not None
                await conn.send(*framed("chunked"), gap=0.001)
                await conn.echo()

            async with Server(framing) as srv:
                assert (await fetch(pool, srv.url))[1] == PAYLOAD
                assert (await fetch(pool, srv.url, b"n"))[1] == b"echo:n" and srv.accepted == 1

            async def big(conn: Conn) -> None:
                assert await conn.request() is not None
                await conn.send(ok(BIG))
                await conn.echo()

            async with Server(big) as srv:
                response = await pool.post(srv.url, "/", b"x", [], read_timeout=5)
                await asyncio.sleep(0.2)
                assert await response.read() == BIG
                response.close()
                assert (await fetch(pool, srv.url, b"n"))[1] == b"echo:n" and srv.accepted == 1

            async def stall(conn: Conn) -> None:
                assert await conn.request() is not None
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                if conn.index == 0:
                    await conn.until_eof()

            async with Server(stall) as srv:
                response = await pool.post(srv.url, "/", b"x", [], read_timeout=0.3)
                with pytest.raises(TimeoutError):
                    await response.read()
                response.close()
                response = await pool.post(srv.url, "/", b"x", [], read_timeout=3)
                with pytest.raises(ProtocolError):  # closed mid-body
                    await response.read()
                response.close()
                assert srv.accepted == 2

            with pytest.raises(ConnectError):
                await pool.post(closed_url(), "/", b"x", [], read_timeout=1)
        finally:
            await pool.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files (the test's own little CA of one)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_https_upstreams_are_verified_and_kept_alive(tmp_path: Path) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                body = await reader.readexactly(length)
                writer.write(ok(b"tls:" + body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        pool = Http1Pool(ssl_context=trusting)
        try:
            assert [(await fetch(pool, url, b"%d" % i))[1] for i in range(3)] == [b"tls:0", b"tls:1", b"tls:2"]
            assert accepted == 1  # one TLS connection, kept alive
        finally:
            await pool.aclose()
        # The default context trusts the system's CAs only: a self-signed upstream is refused, never used.
        strict = Http1Pool()
        try:
            with pytest.raises(ConnectError, match="cannot connect"):
                await fetch(strict, url)
        finally:
            await strict.aclose()
    finally:
        server.close()
        await server.wait_closed()
