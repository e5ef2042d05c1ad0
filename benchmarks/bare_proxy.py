"""The floor for a Python proxy: raw ASGI + the gateway's own upstream client, no policy, no logging, no limits.

The same HTTP stack as releasegate (uvicorn on the client side, ``releasegate.gateway.http1`` on the
upstream side), so the gap between this row and releasegate's is what the policy, the limits and the
durable log cost. Run: ``BARE_PROXY_UPSTREAM=http://127.0.0.1:PORT uvicorn bare_proxy:app --app-dir benchmarks --workers 2``.
"""

from __future__ import annotations

import os
from typing import Any

from releasegate.gateway.http1 import Http1Pool

UPSTREAM = os.environ.get("BARE_PROXY_UPSTREAM", "http://127.0.0.1:8001")
DROP = {b"host", b"content-length", b"connection", b"transfer-encoding"}
DROP_OUT = {b"content-length", b"transfer-encoding", b"connection"}


class BareProxy:
    def __init__(self) -> None:
        self.pool: Http1Pool | None = None  # made in the worker's own event loop

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if self.pool is None:
            self.pool = Http1Pool()
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in DROP]
        response = await self.pool.post(UPSTREAM, scope["path"], body, headers, read_timeout=60)
        out = [(k, v) for k, v in response.headers if k not in DROP_OUT]
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        async for chunk in response.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        response.close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


app = BareProxy()
