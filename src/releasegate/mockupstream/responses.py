"""OpenAI response and stream shapes: chat completions, completions, embeddings, the
Responses API, and the server-sent-events streaming core."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import struct
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from releasegate.mockupstream._asgi import (
    _JSON_HEADERS,
    _SSE_HEADERS,
    Receive,
    Send,
    _dumps,
    _error_body,
    _respond,
    _watch_disconnect,
)
from releasegate.mockupstream.prompts import (
    _completion_words,
    _embedding,
    _prompt_of_chat,
    _prompt_of_completion,
    _prompt_of_responses,
    _Req,
    _words,
)


class _Responder:
    """The endpoint handlers of :class:`MockUpstream` (which sets these attributes)."""

    name: str
    chunk_delay: float
    chunks: int | None
    embedding_dims: int
    _name_header: bytes

    # -- helpers ------------------------------------------------------------------------------

    def _extra_headers(
        self, req: _Req, base: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        rid = req.request_id or f"req_mock_{uuid.uuid4().hex}"
        return [
            *base,
            (b"x-request-id", rid.encode("latin-1")),
            (b"x-mock-upstream", self._name_header),
        ]

    async def _error(
        self,
        req: _Req,
        send: Send,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        param: str | None = None,
    ) -> None:
        await _respond(
            send,
            status,
            _error_body(message, type_, code, param),
            self._extra_headers(req, _JSON_HEADERS),
        )

    def _shape(self, req: _Req) -> tuple[float, int | None, int | None]:
        h = req.headers
        delay = float(h["x-mock-chunk-delay"]) if "x-mock-chunk-delay" in h else self.chunk_delay
        n = int(h["x-mock-chunks"]) if "x-mock-chunks" in h else self.chunks
        abort = int(h["x-mock-abort-after"]) if "x-mock-abort-after" in h else None
        return delay, n, abort

    # -- /v1/chat/completions -----------------------------------------------------------------

    async def _chat(self, req: _Req, receive: Receive, send: Send) -> None:
        body = req.body
        model = body["model"]
        said, prompt_tokens = _prompt_of_chat(body.get("messages"))
        delay, n_words, abort = self._shape(req)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        pieces, finish = _completion_words(model, said, n_words, max_tokens)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        cid = f"chatcmpl-mock{uuid.uuid4().hex}"
        created = int(time.time())
        fingerprint = f"fp_mock_{self.name}"
        n = body.get("n") or 1
        n = n if isinstance(n, int) and 1 <= n <= 16 else 1

        if not body.get("stream"):
            text = "".join(pieces)
            out = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": fingerprint,
                "choices": [
                    {
                        "index": i,
                        "message": {
                            "role": "assistant",
                            "content": text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                    for i in range(n)
                ],
                "usage": {
                    **usage,
                    "completion_tokens": len(pieces) * n,
                    "total_tokens": prompt_tokens + len(pieces) * n,
                },
                "service_tier": "default",
            }
            await _respond(send, 200, _dumps(out), self._extra_headers(req, _JSON_HEADERS))
            return

        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        base: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint,
        }
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            c = {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            return b"data: " + _dumps(c) + b"\n\n"

        tail = [chunk({}, finish)]
        if include_usage:
            tail.append(b"data: " + _dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        tail.append(b"data: [DONE]\n\n")
        await self._stream(
            req,
            receive,
            send,
            delay,
            abort,
            head=[chunk({"role": "assistant", "content": "", "refusal": None})],
            pieces=[chunk({"content": p}) for p in pieces],
            tail=tail,
        )

    # -- /v1/completions ----------------------------------------------------------------------

    async def _completions(self, req: _Req, receive: Receive, send: Send) -> None:
        body = req.body
        model = body["model"]
        said, prompt_tokens = _prompt_of_completion(body.get("prompt"))
        delay, n_words, abort = self._shape(req)
        pieces, finish = _completion_words(model, said, n_words, body.get("max_tokens"))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        cid = f"cmpl-mock{uuid.uuid4().hex}"
        created = int(time.time())
        base = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": f"fp_mock_{self.name}",
        }

        if not body.get("stream"):
            out = {
                **base,
                "choices": [
                    {"text": "".join(pieces), "index": 0, "logprobs": None, "finish_reason": finish}
                ],
                "usage": usage,
            }
            await _respond(send, 200, _dumps(out), self._extra_headers(req, _JSON_HEADERS))
            return

        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        if include_usage:
            base["usage"] = None

        def chunk(text: str, finish_reason: str | None = None) -> bytes:
            c = {
                **base,
                "choices": [
                    {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            return b"data: " + _dumps(c) + b"\n\n"

        tail = [chunk("", finish)]
        if include_usage:
            tail.append(b"data: " + _dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        tail.append(b"data: [DONE]\n\n")
        await self._stream(
            req, receive, send, delay, abort, head=[], pieces=[chunk(p) for p in pieces], tail=tail
        )

    # -- /v1/embeddings -----------------------------------------------------------------------

    async def _embeddings(self, req: _Req, receive: Receive, send: Send) -> None:
        body = req.body
        inp = body.get("input")
        items: list[Any]
        if isinstance(inp, str) or (
            isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp)
        ):
            items = [inp]
        elif isinstance(inp, list) and inp:
            items = inp
        else:
            await self._error(
                req,
                send,
                400,
                "'input' must be a non-empty string or array.",
                "invalid_request_error",
                None,
                "input",
            )
            return
        dims = body.get("dimensions")
        dims = dims if isinstance(dims, int) and 1 <= dims <= 8192 else self.embedding_dims
        as_b64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for i, item in enumerate(items):
            if isinstance(item, str):
                key = item.encode()
                tokens += _words(item)
            else:
                key = _dumps(item)
                tokens += len(item) if isinstance(item, list) else 1
            vec = _embedding(key, dims)
            emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if as_b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        out = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        await _respond(send, 200, _dumps(out), self._extra_headers(req, _JSON_HEADERS))

    # -- /v1/responses ------------------------------------------------------------------------

    async def _responses(self, req: _Req, receive: Receive, send: Send) -> None:
        body = req.body
        model = body["model"]
        said, input_tokens = _prompt_of_responses(body)
        delay, n_words, abort = self._shape(req)
        pieces, finish = _completion_words(model, said, n_words, body.get("max_output_tokens"))
        text = "".join(pieces)
        rid = f"resp_mock{uuid.uuid4().hex}"
        mid = f"msg_mock{uuid.uuid4().hex}"
        created = int(time.time())
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(pieces),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + len(pieces),
        }
        status = "completed" if finish == "stop" else "incomplete"

        def response(state: str, output: list[Any], usage_: Any) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "response",
                "created_at": created,
                "status": state,
                "error": None,
                "incomplete_details": None
                if state != "incomplete"
                else {"reason": "max_output_tokens"},
                "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"),
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": body.get("previous_response_id"),
                "reasoning": {"effort": None, "summary": None},
                "store": bool(body.get("store", True)),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": {"type": "text"}},
                "tool_choice": "auto",
                "tools": [],
                "top_p": body.get("top_p", 1.0),
                "truncation": "disabled",
                "usage": usage_,
                "user": None,
                "metadata": body.get("metadata") or {},
            }

        def message(state: str, content: list[Any]) -> dict[str, Any]:
            return {
                "id": mid,
                "type": "message",
                "status": state,
                "role": "assistant",
                "content": content,
            }

        part_done = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        final = response(status, [message("completed", [part_done])], usage)
        if not body.get("stream"):
            await _respond(send, 200, _dumps(final), self._extra_headers(req, _JSON_HEADERS))
            return

        seq = itertools.count()

        def event(type_: str, **fields: Any) -> bytes:
            payload = {"type": type_, "sequence_number": next(seq), **fields}
            return b"event: " + type_.encode() + b"\ndata: " + _dumps(payload) + b"\n\n"

        empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        loc = {"item_id": mid, "output_index": 0, "content_index": 0}
        head = [
            event("response.created", response=response("in_progress", [], None)),
            event("response.in_progress", response=response("in_progress", [], None)),
            event("response.output_item.added", output_index=0, item=message("in_progress", [])),
            event("response.content_part.added", **loc, part=empty_part),
        ]
        deltas = [event("response.output_text.delta", **loc, delta=p, logprobs=[]) for p in pieces]
        tail = [
            event("response.output_text.done", **loc, text=text, logprobs=[]),
            event("response.content_part.done", **loc, part=part_done),
            event(
                "response.output_item.done", output_index=0, item=message("completed", [part_done])
            ),
            event(
                "response.completed" if status == "completed" else "response.incomplete",
                response=final,
            ),
        ]
        await self._stream(req, receive, send, delay, abort, head=head, pieces=deltas, tail=tail)

    # -- streaming core -----------------------------------------------------------------------

    async def _stream(
        self,
        req: _Req,
        receive: Receive,
        send: Send,
        delay: float,
        abort: int | None,
        *,
        head: Iterable[bytes],
        pieces: Sequence[bytes],
        tail: Iterable[bytes],
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": self._extra_headers(req, _SSE_HEADERS),
            }
        )
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, gone)) if delay > 0 else None
        try:
            first = b"".join(head)
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            for i, piece in enumerate(pieces):
                if abort is not None and i >= abort:
                    # Return without finishing the body: uvicorn closes the connection and the
                    # client sees an incomplete chunked response, like an upstream dying mid-stream.
                    return
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gone.wait(), delay)
                    if gone.is_set():
                        return
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()
