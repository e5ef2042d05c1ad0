"""HTTP pieces of the weights endpoints: byte ranges, Hugging Face-style errors, a counted byte stream."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

CHUNK = 1024 * 1024  # measured: larger writes slow uvicorn's transport down
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(Exception):
    """The Range header asks for bytes the file does not have (HTTP 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a single ``bytes=`` range, or None for the whole file.

    Syntax we do not serve (several ranges, other units, garbage) is ignored as RFC 9110 allows,
    so the client gets the whole file with 200; a well-formed range outside the file is 416.
    """
    if header is None:
        return None
    m = _RANGE_RE.match(header.strip().replace(" ", ""))
    if m is None:
        return None
    first, last = m.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - n), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable
    return start, end


def _ascii(text: str) -> str:
    """Header-safe text: one line of ASCII."""
    return " ".join(text.encode("ascii", "replace").decode("ascii").split())[:1500]


def hf_error(status: int, hf_code: str, code: str, message: str, *, commit: str | None = None,
             extra: dict[str, str] | None = None, head: bool = False) -> Response:
    """An error the Hugging Face client understands: ``X-Error-Code`` and ``X-Error-Message`` headers
    and an ``{"error": message}`` body; releasegate's precise code in ``X-Releasegate-Code``."""
    headers = {"X-Error-Code": hf_code, "X-Error-Message": _ascii(message), "X-Releasegate-Code": code}
    if commit:
        headers["X-Repo-Commit"] = commit
    if extra:
        headers.update(extra)
    if head:
        return Response(status_code=status, headers=headers)
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


class CountedBody(Response):
    """Sends ``[start, end)`` of a file (``pread`` in big chunks) or the pieces of an iterator,
    stops when the client goes away, and reports the bytes it handed to the server (``on_done``)."""

    def __init__(self, *, status: int, headers: dict[str, str], start: int, end: int,
                 on_done: Callable[[int], None], file: Path | None = None,
                 pieces: Iterator[bytes] | None = None, chunk_size: int = CHUNK) -> None:
        super().__init__(status_code=status, headers=headers)
        self.file, self.pieces, self.start, self.end = file, pieces, start, end
        self.on_done, self.chunk_size = on_done, chunk_size
        self.headers["content-length"] = str(end - start)
        self._fd: int | None = None
        self._pos = start
        self._reported = False

    async def _next_chunk(self) -> bytes:
        """The next piece of the body; b"" once it is all out."""
        if self.pieces is not None:
            return await anyio.to_thread.run_sync(next, self.pieces, b"")
        if self._pos >= self.end:
            return b""
        if self._fd is None:
            assert self.file is not None
            self._fd = os.open(self.file, os.O_RDONLY)
        chunk = await anyio.to_thread.run_sync(os.pread, self._fd, min(self.chunk_size, self.end - self._pos), self._pos)
        self._pos += len(chunk)
        return chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0

        async def stream(cancel: anyio.CancelScope) -> None:
            nonlocal sent
            total = self.end - self.start
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            done = total == 0
            chunk = b"" if done else await self._next_chunk()
            while chunk:
                done = sent + len(chunk) >= total
                if done:
                    # Finish the source (a fingerprinted stream completes its cache copy) and write the
                    # record before the client has every byte, so the record is there when it sees the end.
                    await anyio.to_thread.run_sync(self._drain)
                    await anyio.to_thread.run_sync(self._close_and_report, sent + len(chunk))
                await send({"type": "http.response.body", "body": chunk, "more_body": not done})
                sent += len(chunk)
                if done:
                    break
                chunk = await self._next_chunk()
            if not done or total == 0:  # the source ended early (or was empty): end the body as it is
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            cancel.cancel()

        async def watch(cancel: anyio.CancelScope) -> None:
            # The server drops writes after a disconnect without telling us: listen for it.
            while (await receive())["type"] != "http.disconnect":
                pass
            cancel.cancel()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch, tg.cancel_scope)
                tg.start_soon(stream, tg.cancel_scope)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close_and_report, sent)

    def _drain(self) -> None:
        if self.pieces is not None:
            for _ in self.pieces:
                pass

    def _close_and_report(self, sent: int) -> None:
        if self._reported:
            return
        self._reported = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        close = getattr(self.pieces, "close", None)
        if close is not None:
            close()
        self.on_done(sent)
