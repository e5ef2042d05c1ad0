"""The floor for a Python proxy: raw ASGI + one pooled httpx client, no policy, no logging, no limits.

Run: ``BARE_PROXY_UPSTREAM=http://127.0.0.1:PORT uvicorn bare_proxy:app --app-dir benchmarks --workers 2``.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

UPSTREAM = os.environ.get("BARE_PROXY_UPSTREAM", "http://127.0.0.1:8001")
DROP = {b"host", b"content-length", b"connection", b"transfer-encoding"}


class BareProxy:
    def __init__(self) -> None:
        self.client: httpx.AsyncClient | None = None  # made in the worker's own event loop

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if self.client is None:
            self.client = httpx.AsyncClient(base_url=UPSTREAM, timeout=60, limits=httpx.Limits(max_connections=1024))
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(k, v) for k, v in scope["headers"] if k not in DROP]
        request = self.client.build_request(scope["method"], scope["path"], content=body, headers=headers)
        response = await self.client.send(request, stream=True)
        out = [(k.encode(), v.encode()) for k, v in response.headers.items()
               if k not in ("content-length", "transfer-encoding", "connection")]
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await response.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


app = BareProxy()
