"""The gateway's server protocol: a response's head leaves with its body in one write, order intact.

Real sockets (a socketpair under a real asyncio transport); the peer's non-blocking reads show what
has been sent and when.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from releasegate.gateway.serving import GatewayHttpProtocol, _CoalescingTransport
from releasegate.testing.server import run_in_thread

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


def sent(peer: socket.socket) -> bytes:
    """Everything the other side has sent so far (non-blocking)."""
    out = b""
    while True:
        try:
            chunk = peer.recv(65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


@pytest.fixture
async def pair() -> AsyncIterator[tuple[_CoalescingTransport, socket.socket]]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    yield _CoalescingTransport(transport, loop), peer
    transport.close()
    peer.close()


async def test_a_head_waits_for_its_body_and_both_leave_together(pair: tuple[_CoalescingTransport, socket.socket]) -> None:
    t, peer = pair
    t.write(HEAD)
    await asyncio.sleep(0.01)  # a lone head is not held for long: it goes on the next iteration
    assert sent(peer) == HEAD
    t.write(HEAD)
    assert sent(peer) == b""  # held...
    t.write(b"{}")
    assert sent(peer) == HEAD + b"{}"  # ...and sent with the body


async def test_order_is_kept_and_close_flushes(pair: tuple[_CoalescingTransport, socket.socket]) -> None:
    t, peer = pair
    t.write(b"data: 1\n\n")  # not a head: straight out
    assert sent(peer) == b"data: 1\n\n"
    t.write(HEAD)
    t.close()
    await asyncio.sleep(0.01)
    assert sent(peer) == HEAD


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    if scope["path"] == "/stream":
        for i in range(3):
            await send({"type": "http.response.body", "body": b"event %d\n" % i, "more_body": True})
            await asyncio.sleep(0.05)
    await send({"type": "http.response.body", "body": b"done", "more_body": False})


def test_uvicorn_with_the_protocol_serves_plain_and_streamed_answers() -> None:
    with run_in_thread(echo_app, http=GatewayHttpProtocol, lifespan="off") as url, httpx.Client(base_url=url) as c:
        for _ in range(3):  # keep-alive: several answers on one connection
            r = c.get("/plain")
            assert (r.status_code, r.text, r.headers["content-type"]) == (200, "done", "text/plain")
        with c.stream("GET", "/stream") as r:
            assert r.status_code == 200
            assert list(r.iter_lines()) == ["event 0", "event 1", "event 2", "done"]
