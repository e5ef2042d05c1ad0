"""The gateway's HTTP server protocol: uvicorn's httptools protocol, with a response's head and body in one write.

uvicorn writes a response's status line and headers as soon as the app sends ``http.response.start``
and the body with the next message: two ``send(2)`` calls for every answer. On this machine a loopback
``send`` costs about as much as the gateway's whole access decision, and uvloop makes it holding the
GIL: profiled under load, the two writes were ~20% of the time one gateway process held the GIL. Here
the head is held back until the next write in the same event-loop iteration (the body, when the app
sends both at once, as the gateway does for every non-streamed answer) and both leave in one ``send``.
If nothing follows in that iteration (a stream waiting for its first event), the head is written on
the next iteration, microseconds later. Order is never changed: a held write is always written before
(or together with) anything written after it.

Use ``uvicorn.run(app, http=GatewayHttpProtocol, ...)`` (a protocol class is accepted where the name
``"httptools"`` is).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["GatewayHttpProtocol"]


class _CoalescingTransport:
    """A transport that holds back a response head until the next write of the same iteration."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
            return
        if isinstance(data, bytes) and data.startswith(b"HTTP/1.") and data.endswith(b"\r\n\r\n"):
            self._held = data
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing each non-streamed answer with one ``send``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
