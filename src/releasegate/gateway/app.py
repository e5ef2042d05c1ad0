"""The gateway's ASGI app: the OpenAI-compatible ``/v1`` surface and the ``/authz`` decision endpoint.

A raw ASGI callable (no framework on the hot path): every request costs a handful of dict lookups
in the compiled snapshot, one limiter call when limits apply, one durable log write, and the
upstream exchange. Anything else (the admin API, the console) goes to ``fallback``.

Per request, in order: a fresh snapshot (else ``policy_stale``), the key and deployer (before the
body is read), content type, the body (bounded while reading), the decision, limits, the durable
start record, the upstream exchange, the completion record. Every refusal is recorded with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import orjson

from releasegate.detectors.base import DetectionInput
from releasegate.detectors.runner import ModelDetectors
from releasegate.detectors.text import input_text, output_text
from releasegate.gateway import authz
from releasegate.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from releasegate.gateway.openai_errors import (
    JSON_TYPE,
    error_body,
    limit_headers,
    send_error,
    send_json,
)
from releasegate.gateway.scope import (
    ENDPOINT_PATHS,
    MAX_TOKENS_FIELD,
    BadRequest,
    estimate_tokens,
    request_facts,
)
from releasegate.gateway.service import (
    STALE_MESSAGE,
    GatewayService,
    bearer_token,
    count,
    new_record,
    new_request_id,
    note_caller,
    note_decision,
    render_metrics,
    start_record,
)
from releasegate.gateway.upstream import (
    DROP_REQUEST_HEADERS,
    SSERelay,
    UpstreamFailure,
    UpstreamResponse,
    Usage,
    usage_of,
)
from releasegate.policy.access import Caller, Decision, authorize, identify, model_names, resolve

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)


class TooLarge(Exception):
    pass


async def read_body(receive: Receive, declared: int | None, limit: int) -> bytes | None:
    """The whole body, refusing (TooLarge) as soon as it exceeds ``limit``; None if the client left."""
    if declared is not None and declared > limit:
        raise TooLarge
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise TooLarge
        return body
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


class GatewayApp:
    """ASGI: ``/v1/*`` and ``/authz/v1/check*`` here, everything else to ``fallback`` (or a 404)."""

    def __init__(self, service: GatewayService, *, fallback: ASGIApp | None = None) -> None:
        self.service = service
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/v1/"):
                endpoint = ENDPOINT_PATHS.get(path)
                if endpoint is not None:
                    await self.completion(scope, receive, send, endpoint)
                elif path == "/v1/models" or path.startswith("/v1/models/"):
                    await self.models(scope, send)
                else:
                    await self.refuse(send, new_record(scope, None), "unknown_url",
                                      f"{scope['method']} {path} is not an endpoint of this gateway")
                return
            if path.startswith("/authz/v1/check"):
                await authz.check(self, scope, send)
                return
            if path == "/gateway/healthz":
                await self.healthz(send)
                return
            if path == "/metrics" or path == "/gateway/metrics":  # before the fallback: the admin app never sees it
                # In a thread: collectors registered by ``serve`` read the store at scrape time.
                body = await asyncio.to_thread(render_metrics, self.service)
                await send_json(send, 200, body, [(b"content-type", METRICS_CONTENT_TYPE)])
                return
            if self.fallback is not None:
                await self.fallback(scope, receive, send)
                return
            await send_error(send, "unknown_url", f"{path} is not an endpoint of this gateway", request_id=new_request_id())
        elif kind == "lifespan":
            await self.lifespan(scope, receive, send)
        elif self.fallback is not None:
            await self.fallback(scope, receive, send)

    # -- lifespan ------------------------------------------------------------------------------

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the replica (and the fallback app's own lifespan), stop both on shutdown."""
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with contextlib.AsyncExitStack() as stack:
            try:
                router = getattr(self.fallback, "router", None)
                lifespan_context = getattr(router, "lifespan_context", None)
                if lifespan_context is not None:
                    await stack.enter_async_context(lifespan_context(self.fallback))
                await self.service.start()
                stack.push_async_callback(self.service.stop)
            except Exception as exc:
                log.exception("gateway startup failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})

    # -- refusals ------------------------------------------------------------------------------

    async def refuse(self, send: Send, record: dict[str, Any], code: str, message: str, *, param: str | None = None,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Send an OpenAI-style error and record the refusal with its reason."""
        status = await send_error(send, code, message, request_id=record["id"], param=param, extra=extra or ())
        record["status"], record["reason_code"], record["outcome"] = status, code, "denied"
        if param:
            record["rule"] = param
        if code == "scope_violation":
            record["scope_violation"] = True
        self._end(record)

    async def refuse_decision(self, send: Send, record: dict[str, Any], d: Decision) -> None:
        note_decision(record, d)
        assert d.code is not None
        await self.refuse(send, record, d.code, d.message, param=d.param)

    def _end(self, record: dict[str, Any]) -> None:
        record["latency_ms"] = round((time.perf_counter() - record.pop("_t0")) * 1000, 3)
        record["at"] = time.time()  # the end record's time; the start record kept the arrival time
        count(self.service, record)
        try:
            self.service.request_log.record_end(record)
        except Exception as exc:  # never fails the response; the log's own durability covers the rest
            log.error("request log record_end failed for %s: %s", record["id"], exc)

    # -- /v1/models ----------------------------------------------------------------------------

    async def models(self, scope: Scope, send: Send) -> None:
        record = new_record(scope, None)
        snap = self.service.fresh_snapshot()
        if snap is None:
            await self.refuse(send, record, "policy_stale", STALE_MESSAGE)
            return
        caller = identify(snap.view, _token(scope["headers"]), self.service.now())
        if isinstance(caller, Decision):
            await self.refuse_decision(send, record, caller)
            return
        note_caller(record, caller)
        names = model_names(caller.model, caller.deployer) if caller.model is not None else []
        owner = caller.key.model.split("/", 1)[0]
        path: str = scope["path"]
        if path != "/v1/models":
            wanted = unquote(path[len("/v1/models/"):])
            found = caller.model is not None and not isinstance(resolve(caller.model, wanted, caller.deployer), Decision)
            if not found:
                await self.refuse(send, record, "model_not_found", f"the model {wanted!r} does not exist or this key "
                                  "may not use it", param="model")
                return
            body = orjson.dumps({"id": wanted, "object": "model", "created": 0, "owned_by": owner})
        else:
            body = orjson.dumps({"object": "list", "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": owner} for n in names]})
        await send_json(send, 200, body, [JSON_TYPE, (b"x-request-id", record["id"].encode())])
        record["status"], record["outcome"] = 200, "allowed"
        self._end(record)

    async def healthz(self, send: Send) -> None:
        snap = self.service.fresh_snapshot()
        body = orjson.dumps({
            "ok": snap is not None, "revision": snap.revision if snap else None,
            "snapshot_age_s": round(self.service.staleness(), 3), "cooling_upstreams": self.service.health.cooling(),
        })
        await send_json(send, 200 if snap is not None else 503, body, [JSON_TYPE])

    # -- completions ---------------------------------------------------------------------------

    async def completion(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        svc = self.service
        record = new_record(scope, endpoint)
        snap = svc.fresh_snapshot()
        if snap is None:
            await self.refuse(send, record, "policy_stale", STALE_MESSAGE)
            return
        token = ctype = None
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = value
            elif name == b"content-type":
                ctype = value
            elif name == b"content-length":
                with contextlib.suppress(ValueError):
                    declared = int(value)
        caller = identify(snap.view, bearer_token(token), svc.now())
        if isinstance(caller, Decision):
            await self.refuse_decision(send, record, caller)
            return
        note_caller(record, caller)
        if scope["method"] != "POST":
            await self.refuse(send, record, "method_not_allowed", f"{scope['path']} accepts POST only, not {scope['method']}")
            return
        if ctype is None or not ctype.lower().startswith(b"application/json"):
            await self.refuse(send, record, "unsupported_media_type",
                              "send the request body as JSON with 'Content-Type: application/json'")
            return
        limit = svc.config.max_body_bytes
        try:
            async with asyncio.timeout(svc.config.body_timeout):
                raw = await read_body(receive, declared, limit)
        except TooLarge:
            await self.refuse(send, record, "request_too_large", f"the request body is larger than the gateway's "
                              f"limit of {limit} bytes")
            return
        except TimeoutError:
            await self.refuse(send, record, "request_timeout", f"the request body did not arrive within "
                              f"{svc.config.body_timeout:g}s")
            return
        if raw is None:
            record["status"], record["reason_code"], record["outcome"] = 499, "client_disconnected", "denied"
            self._end(record)
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await self.refuse(send, record, "invalid_json", f"the request body is not valid JSON: {exc.msg} "
                              f"(at character {exc.pos})")
            return
        if not isinstance(body, dict):
            await self.refuse(send, record, "invalid_request", "the request body must be a JSON object")
            return
        try:
            facts = request_facts(endpoint, body)
        except BadRequest as exc:
            await self.refuse(send, record, "invalid_request", exc.message, param=exc.param)
            return
        record["model"], record["stream"] = facts.model, facts.stream
        decision = authorize(caller, facts)
        if not decision.allowed:
            await self.refuse_decision(send, record, decision)
            return
        await self.forward(scope, receive, send, record, snap, caller, decision, body, facts)

    async def forward(self, scope: Scope, receive: Receive, send: Send, record: dict[str, Any], snap: Any, caller: Caller,
                      decision: Decision, body: dict[str, Any], facts: Any) -> None:
        svc = self.service
        v = decision.version
        assert v is not None and decision.limits is not None
        note_decision(record, decision)
        backend = snap.backends.get((v.model, v.version))
        if backend is None or svc.upstream is None:
            await self.refuse(send, record, "upstream_unavailable", f"{v.qualified} has no model server configured")
            return
        # What goes upstream: the upstream's model name, a usage chunk on streams, the use case's token bound.
        body["model"] = backend.upstream_model
        endpoint = record["endpoint"]
        strip_usage = False
        if facts.stream and endpoint in ("chat.completions", "completions"):
            opts = body.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage")):
                body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
                strip_usage = True
        rule = caller.model.use_cases.get(caller.key.use_case) if caller.model else None
        bound = rule.bounds.max_tokens if rule is not None else None
        bound_field = MAX_TOKENS_FIELD.get(endpoint)
        if bound is not None and facts.max_tokens is None and bound_field:
            body[bound_field] = bound
        estimate = estimate_tokens(facts, default_bound=bound)
        deployer_id = caller.deployer.id
        limits = decision.limits
        detectors = svc.detectors.models.get(v.model) if svc.detectors.models else None
        granted = await svc.acquire(deployer_id, limits, estimate)
        extra = limit_headers(granted.headers, None) if granted is not None and granted.headers else []
        if granted is not None and not granted.allowed:
            code = "limiter_unavailable" if granted.reason == "limiter_unavailable" else "rate_limited"
            record["limit"] = granted.reason
            await self.refuse(send, record, code, granted.message or f"rate limit reached ({granted.reason})",
                              param=granted.reason, extra=limit_headers(granted.headers, granted.retry_after))
            return
        actual = 0
        try:
            text: str | None = None  # the request's text, extracted at most once and only for detectors
            if detectors is not None and detectors.inline:
                text = input_text(endpoint, body)
                item = _detection_input(record, caller.key.use_case, endpoint, text, None, detectors)
                if await self._inline_refusal(send, record, item, detectors):
                    return
            payload = orjson.dumps(body)
            headers = _upstream_headers(scope["headers"], record["id"], backend.authorization, caller, v.qualified)
            try:
                await svc.request_log.record_start(start_record(record))
            except Exception as exc:
                log.error("request log unavailable, refusing %s: %s", record["id"], exc)
                await self.refuse(send, record, "log_unavailable", "the gateway cannot record requests right now, so it "
                                  "forwards none; retry shortly")
                return
            answer: list[Any] | None = [] if detectors is not None and detectors.asynchronous else None
            usage = await self._exchange(send, receive, record, backend, scope["path"][3:], payload, headers,
                                         facts.stream, strip_usage, extra, keep=answer)
            if usage is not None:
                actual = usage.total_tokens
                record["prompt_tokens"], record["completion_tokens"], record["total_tokens"] = (
                    usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
            elif record.get("status") == 200:
                actual = estimate  # served without a usage report (or the client left mid-stream): charge the reservation
            self._end(record)
            if answer is not None and detectors is not None:  # after the end record, so flags follow it in the log
                said = output_text(endpoint, answer[0]) if answer else None
                text = input_text(endpoint, body) if text is None else text
                svc.detectors.submit(_detection_input(record, caller.key.use_case, endpoint, text, said, detectors),
                                     detectors.asynchronous, record)
        finally:
            if granted is not None:
                await svc.settle(deployer_id, limits, estimate, actual)

    async def _exchange(self, send: Send, receive: Receive, record: dict[str, Any], backend: Any, path: str, payload: bytes,
                        headers: list[tuple[str, str]], stream: bool, strip_usage: bool,
                        extra: list[tuple[bytes, bytes]], keep: list[Any] | None = None) -> Usage | None:
        """Forward, relay the answer, and note status/outcome in ``record``; the usage if the upstream reported it.

        ``keep``, when given, receives the parsed JSON answer of a 200 non-streamed response (for detectors).
        """
        svc = self.service
        assert svc.upstream is not None
        rid = record["id"]
        sent = time.perf_counter()
        try:
            response, base = await svc.upstream.open(backend, path, payload, headers)
        except UpstreamFailure as failure:
            record["upstream_ms"] = round((time.perf_counter() - sent) * 1000, 3)
            await self._upstream_error(send, record, failure.code, failure.message)
            return None
        record["upstream"] = base
        ours = [(b"x-request-id", rid.encode()), (b"x-releasegate-version", backend.name.encode()), *extra]
        try:
            ctype = response.content_type
            if response.status == 200 and stream and ctype.startswith("text/event-stream"):
                return await self._relay_stream(send, receive, record, response, strip_usage, ours)
            try:
                content = await response.read()
            except UpstreamFailure as failure:
                await self._upstream_error(send, record, failure.code, f"{failure.message} ({backend.name})")
                return None
            status = response.status
            parsed: Any = None
            if ctype.startswith("application/json"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    parsed = orjson.loads(content)
            if status == 200 and parsed is None:
                await self._upstream_error(send, record, "upstream_error", f"the model server for {backend.name} answered "
                                           "with something that is not a JSON response")
                return None
            if status >= 500 or status in (401, 403):
                detail = ""
                if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                    detail = f": {str(parsed['error'].get('message', ''))[:200]}"
                await self._upstream_error(send, record, "upstream_error",
                                           f"the model server for {backend.name} answered HTTP {status}{detail}")
                return None
            await send_json(send, status, content, response.headers() + ours)
            record["status"] = status
            record["outcome"] = "allowed"
            if keep is not None and status == 200:
                keep.append(parsed)
            return usage_of(parsed) if status == 200 else None
        finally:
            response.close()
            # The model server's share of the latency (to its last byte relayed); the rest is the gateway's.
            record["upstream_ms"] = round((time.perf_counter() - sent) * 1000, 3)

    async def _relay_stream(self, send: Send, receive: Receive, record: dict[str, Any], response: UpstreamResponse,
                            strip_usage: bool, ours: list[tuple[bytes, bytes]]) -> Usage | None:
        await send({"type": "http.response.start", "status": 200, "headers": response.headers() + ours})
        record["status"], record["outcome"] = 200, "allowed"
        relay = SSERelay(strip_usage=strip_usage)
        failure: UpstreamFailure | None = None
        # The body was read in full, so the next message is the client leaving: stop generating for nobody.
        left = asyncio.ensure_future(receive())
        try:
            async for chunk in response.chunks():
                if left.done():
                    record["client_disconnected"] = True
                    return relay.usage
                out = relay.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except UpstreamFailure as exc:
            failure = exc
        finally:
            left.cancel()
        rest = relay.flush()
        if failure is not None:
            # Headers are gone already: end the stream with an error event (the SDK raises on it).
            rest += b"data: " + error_body(failure.code, failure.message) + b"\n\n"
            record["reason_code"], record["outcome"] = failure.code, "error"
        await send({"type": "http.response.body", "body": rest, "more_body": False})
        return relay.usage

    async def _inline_refusal(self, send: Send, record: dict[str, Any], item: DetectionInput,
                              detectors: ModelDetectors) -> bool:
        """Run the inline detectors on the input; True if the request was refused (flagged, or not judged)."""
        flags, errors = await self.service.detectors.inspect_inline(item, detectors.inline, record)
        if errors:
            record["detector_errors"] = errors
        if flags:
            record["flags"] = flags
            await self.refuse(send, record, "content_flagged", "the request was refused because a misuse check of "
                              f"this release flagged its content ({', '.join(sorted(flags))})")
            return True
        if errors:  # fail closed: an inline check that could not judge is not a pass
            await self.refuse(send, record, "detector_unavailable", "a misuse check this release requires before "
                              f"forwarding could not judge the request ({', '.join(sorted(errors))}); retry shortly")
            return True
        return False

    async def _upstream_error(self, send: Send, record: dict[str, Any], code: str, message: str) -> None:
        status = await send_error(send, code, message, request_id=record["id"])
        record["status"], record["reason_code"], record["outcome"] = status, code, "error"


def _detection_input(record: dict[str, Any], use_case: str, endpoint: str, text: str, answer: str | None,
                     detectors: ModelDetectors) -> DetectionInput:
    return DetectionInput(record["id"], record.get("deployer_id") or "", use_case, detectors.descriptions.get(use_case, ""),
                          record.get("model_name") or "", record.get("version") or "", endpoint, text, answer)


def _token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            return bearer_token(value)
    return None


def _upstream_headers(client_headers: list[tuple[bytes, bytes]], request_id: str, authorization: str | None,
                      caller: Caller, version: str) -> list[tuple[str, str]]:
    """The client's headers minus credentials, hop-by-hop and any ``x-releasegate-*``; plus ours."""
    out = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in client_headers
           if n not in DROP_REQUEST_HEADERS and not n.startswith(b"x-releasegate-")]
    out.append(("content-type", "application/json"))
    out.append(("x-request-id", request_id))
    out.append(("x-releasegate-deployer", caller.deployer.id))
    out.append(("x-releasegate-use-case", caller.key.use_case))
    out.append(("x-releasegate-version", version))
    if authorization is not None:
        out.append(("authorization", authorization))
    return out
