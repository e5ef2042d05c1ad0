"""The decision endpoint for edge proxies: nginx ``auth_request`` and Envoy ``ext_authz`` (HTTP service).

Two spellings of one check (no request body is ever read: edge proxies do not send it):

* nginx: ``/authz/v1/check`` with the original request in ``X-Original-URI`` and ``X-Original-Method``;
* Envoy: ``/authz/v1/check/<original path>`` (``path_prefix: /authz/v1/check``), method as received.

Inputs: ``Authorization: Bearer rgk_…``, and the model from ``X-Releasegate-Model`` or a ``model=``
query parameter of the original URI (else the key's model name, i.e. its default target). Decided:
key, deployer, audience, version state, endpoint scope and limits (rpm; token budgets as far as
already spent, since the edge never reports usage). Features and parameter bounds need the body,
so only the built-in ``/v1`` proxy checks them.

Allow: 200 and ``x-releasegate-deployer``, ``-use-case``, ``-version``, ``-upstream-model``,
``-stage``, ``x-request-id`` for the proxy to pass upstream. Deny: 401 (key problems), 429 (limits)
or 403 (everything else, including 404/503-class reasons: an edge proxy only understands these),
with the OpenAI error body, ``x-releasegate-reason``, ``x-releasegate-status`` (the status the
built-in gateway would have used) and ``x-releasegate-error`` (the body as one ASCII header line,
for nginx, which drops the body of an auth subrequest).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from releasegate.gateway.openai_errors import (
    JSON_TYPE,
    error_body,
    error_header_value,
    limit_headers,
    send_json,
)
from releasegate.gateway.scope import ENDPOINT_PATHS
from releasegate.gateway.service import (
    STALE_MESSAGE,
    bearer_token,
    new_record,
    note_caller,
    note_decision,
    start_record,
)
from releasegate.policy.access import REASONS, Decision, RequestFacts, authorize, identify

if TYPE_CHECKING:
    from releasegate.gateway.app import GatewayApp, Send

PREFIX = "/authz/v1/check"


def _original(scope: MutableMapping[str, Any], headers: dict[bytes, bytes]) -> tuple[str, str, str]:
    """(method, path, query) of the request the proxy is asking about."""
    path: str = scope["path"]
    if len(path) > len(PREFIX) + 1 and path.startswith(PREFIX + "/"):
        query = scope.get("query_string", b"").decode("latin-1")
        return scope["method"], path[len(PREFIX):], query
    uri = headers.get(b"x-original-uri", b"").decode("latin-1")
    method = headers.get(b"x-original-method", scope["method"].encode()).decode("latin-1")
    parts = urlsplit(uri)
    return method.upper(), parts.path, parts.query


async def check(app: GatewayApp, scope: MutableMapping[str, Any], send: Send) -> None:
    """Answer one edge-proxy check (see the module docstring)."""
    svc = app.service
    headers = dict(scope["headers"])
    method, path, query = _original(scope, headers)
    endpoint = ENDPOINT_PATHS.get(path)
    record = new_record(scope, endpoint)
    record["kind"], record["path"], record["method"] = "authz", path, method
    snap = svc.fresh_snapshot()
    if snap is None:
        await _deny(app, send, record, "policy_stale", STALE_MESSAGE)
        return
    auth = headers.get(b"authorization")
    caller = identify(snap.view, bearer_token(auth), svc.now())
    if isinstance(caller, Decision):
        note_decision(record, caller)
        assert caller.code is not None
        await _deny(app, send, record, caller.code, caller.message, caller.param)
        return
    note_caller(record, caller)
    is_models = path == "/v1/models" or path.startswith("/v1/models/")
    if endpoint is None and not is_models:
        await _deny(app, send, record, "unknown_url", f"{method} {path} is not an endpoint of this gateway")
        return
    if is_models:
        await _allow(app, send, record, caller.deployer.id, caller.key.use_case, None, None, None, [])
        return
    model_header = headers.get(b"x-releasegate-model")
    if model_header:
        model = model_header.decode("latin-1").strip()
    else:
        model = (parse_qs(query).get("model") or [caller.key.model])[0]
    record["model"] = model
    decision = authorize(caller, RequestFacts(endpoint=endpoint, model=model, body_seen=False))
    note_decision(record, decision)
    if not decision.allowed:
        assert decision.code is not None
        await _deny(app, send, record, decision.code, decision.message, decision.param)
        return
    v = decision.version
    assert v is not None and decision.limits is not None
    backend = snap.backends.get((v.model, v.version))
    granted = await svc.acquire(caller.deployer.id, decision.limits, 0)
    if granted is not None:
        # The edge reports no completion, so the slot is freed at once: rpm holds, concurrency cannot.
        await svc.settle(caller.deployer.id, decision.limits, 0, 0)
        if not granted.allowed:
            code = "limiter_unavailable" if granted.reason == "limiter_unavailable" else "rate_limited"
            record["limit"] = granted.reason
            await _deny(app, send, record, code, granted.message or "rate limit reached", granted.reason,
                        limit_headers(granted.headers, granted.retry_after))
            return
    try:
        await svc.request_log.record_start(start_record(record))
    except Exception:
        await _deny(app, send, record, "log_unavailable", "the gateway cannot record requests right now; retry shortly")
        return
    extra = limit_headers(granted.headers, None) if granted is not None else []
    await _allow(app, send, record, caller.deployer.id, caller.key.use_case, v.qualified,
                 backend.upstream_model if backend else v.upstream_model, v.stage_name, extra)


async def _allow(app: GatewayApp, send: Send, record: dict[str, Any], deployer: str, use_case: str,
                 version: str | None, upstream_model: str | None, stage: str | None,
                 extra: list[tuple[bytes, bytes]]) -> None:
    headers = [
        JSON_TYPE,
        (b"x-request-id", record["id"].encode()),
        (b"x-releasegate-deployer", deployer.encode()),
        (b"x-releasegate-use-case", use_case.encode()),
    ]
    if version is not None:
        headers.append((b"x-releasegate-version", version.encode()))
    if upstream_model is not None:
        headers.append((b"x-releasegate-upstream-model", upstream_model.encode()))
    if stage is not None:
        headers.append((b"x-releasegate-stage", stage.encode()))
    await send_json(send, 200, b"{}", headers + extra)
    record["status"], record["outcome"] = 200, "allowed"
    app._end(record)


async def _deny(app: GatewayApp, send: Send, record: dict[str, Any], code: str, message: str, param: str | None = None,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    true_status = REASONS.get(code, (500, ""))[0]
    status = true_status if true_status in (401, 403, 429) else 403
    headers = [
        JSON_TYPE,
        (b"x-request-id", record["id"].encode()),
        (b"x-releasegate-reason", code.encode()),
        (b"x-releasegate-status", str(true_status).encode()),
        (b"x-releasegate-error", error_header_value(code, message, param)),
        *(extra or []),
    ]
    await send_json(send, status, error_body(code, message, param), headers)
    record["status"], record["reason_code"], record["outcome"] = status, code, "denied"
    if param:
        record["rule"] = param
    if code == "scope_violation":
        record["scope_violation"] = True
    app._end(record)
