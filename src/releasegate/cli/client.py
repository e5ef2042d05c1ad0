"""One interface, two transports: the CLI talks to the local store or to a server's API.

``LocalClient`` calls the services in-process as the local operator; ``RemoteClient``
sends the same calls to ``/api/v1`` with a bearer token. Both raise ``ReleasegateError``.
"""

from __future__ import annotations

import getpass
import os
from datetime import timedelta
from typing import IO, Any, Protocol

import httpx

from releasegate.audit.checkpoint import Checkpoint
from releasegate.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    Refused,
    ReleasegateError,
    Unauthenticated,
)
from releasegate.plan.loader import LoadedPlan
from releasegate.services import applications, audit, deployers, keys, plans, principals, rollouts
from releasegate.services.context import Actor, ServiceContext


class Client(Protocol):
    def plan_diff(self, loaded: LoadedPlan) -> dict[str, Any]: ...
    def plan_apply(self, loaded: LoadedPlan, *, force_reason: str | None) -> dict[str, Any]: ...
    def plan_show(self, model: str, revision: int | None) -> dict[str, Any]: ...
    def plan_history(self, model: str) -> list[dict[str, Any]]: ...
    def status(self, model: str | None) -> list[dict[str, Any]]: ...
    def transition(self, model: str, version: str, action: str, *, reason: str, override_reason: str | None) -> dict[str, Any]: ...
    def version_history(self, model: str, version: str) -> list[dict[str, Any]]: ...
    def retarget(self, model: str, alias: str, targets: dict[str, int], *, reason: str) -> dict[str, Any]: ...
    def deployer_create(self, name: str, contact_email: str | None) -> dict[str, Any]: ...
    def deployer_list(self) -> list[dict[str, Any]]: ...
    def deployer_show(self, ref: str) -> dict[str, Any]: ...
    def deployer_add_member(self, ref: str, email: str, role: str) -> dict[str, Any]: ...
    def deployer_set_status(self, ref: str, status: str, reason: str) -> dict[str, Any]: ...
    def application_submit(self, deployer: str, model: str, use_cases: list[str], description: str) -> dict[str, Any]: ...
    def application_list(self, status: str | None, deployer: str | None) -> list[dict[str, Any]]: ...
    def application_show(self, app_id: str) -> dict[str, Any]: ...
    def application_approve(self, app_id: str, tier: str, use_cases: list[str] | None, waitlist: bool, reason: str | None) -> dict[str, Any]: ...
    def application_reject(self, app_id: str, reason: str) -> dict[str, Any]: ...
    def key_issue(self, deployer: str, model: str, use_case: str, name: str, expires_in_days: float | None) -> dict[str, Any]: ...
    def key_list(self, deployer: str | None) -> list[dict[str, Any]]: ...
    def key_revoke(self, key_id: str, reason: str | None) -> dict[str, Any]: ...
    def key_rotate(self, key_id: str, grace_hours: float) -> dict[str, Any]: ...
    def token_create(self, name: str, role: str, email: str | None, deployer: str | None) -> dict[str, Any]: ...
    def token_list(self) -> list[dict[str, Any]]: ...
    def token_revoke(self, ref: str) -> dict[str, Any]: ...
    def audit_verify(self) -> dict[str, Any]: ...
    def audit_list(self, target: str | None, limit: int) -> list[dict[str, Any]]: ...
    def audit_export(self, out: IO[bytes], since: int) -> int: ...
    def audit_checkpoint(self) -> dict[str, Any]: ...
    def audit_check(self, checkpoint: dict[str, Any], trusted_public_key: str | None) -> dict[str, Any]: ...


def local_actor() -> Actor:
    """The operator at this machine: admin over the local store, named for the audit trail."""
    name = os.environ.get("RELEASEGATE_ACTOR") or f"local:{getpass.getuser()}"
    return Actor(name=name, role="admin")


class LocalClient:
    def __init__(self, ctx: ServiceContext, actor: Actor | None = None) -> None:
        self.ctx = ctx
        self.actor = actor or local_actor()

    def plan_diff(self, loaded: LoadedPlan) -> dict[str, Any]:
        return plans.diff(self.ctx, self.actor, loaded)

    def plan_apply(self, loaded: LoadedPlan, *, force_reason: str | None) -> dict[str, Any]:
        return plans.apply(self.ctx, self.actor, loaded, force_reason=force_reason).to_dict()

    def plan_show(self, model: str, revision: int | None) -> dict[str, Any]:
        return plans.show(self.ctx, self.actor, model, revision)

    def plan_history(self, model: str) -> list[dict[str, Any]]:
        return plans.history(self.ctx, self.actor, model)

    def status(self, model: str | None) -> list[dict[str, Any]]:
        return rollouts.status(self.ctx, self.actor, model)

    def transition(self, model: str, version: str, action: str, *, reason: str, override_reason: str | None) -> dict[str, Any]:
        return rollouts.transition(self.ctx, self.actor, model, version, action, reason=reason, override_reason=override_reason)

    def version_history(self, model: str, version: str) -> list[dict[str, Any]]:
        return rollouts.history(self.ctx, self.actor, model, version)

    def retarget(self, model: str, alias: str, targets: dict[str, int], *, reason: str) -> dict[str, Any]:
        return rollouts.retarget(self.ctx, self.actor, model, alias, targets, reason=reason)

    def deployer_create(self, name: str, contact_email: str | None) -> dict[str, Any]:
        return deployers.create(self.ctx, self.actor, name=name, contact_email=contact_email)

    def deployer_list(self) -> list[dict[str, Any]]:
        return deployers.list_all(self.ctx, self.actor)

    def deployer_show(self, ref: str) -> dict[str, Any]:
        return deployers.show(self.ctx, self.actor, ref)

    def deployer_add_member(self, ref: str, email: str, role: str) -> dict[str, Any]:
        return deployers.add_member(self.ctx, self.actor, ref, email=email, role=role)

    def deployer_set_status(self, ref: str, status: str, reason: str) -> dict[str, Any]:
        return deployers.set_status(self.ctx, self.actor, ref, status, reason=reason)

    def application_submit(self, deployer: str, model: str, use_cases: list[str], description: str) -> dict[str, Any]:
        return applications.submit(self.ctx, self.actor, deployer=deployer, model=model, use_cases=use_cases, description=description)

    def application_list(self, status: str | None, deployer: str | None) -> list[dict[str, Any]]:
        return applications.list_all(self.ctx, self.actor, status=status, deployer=deployer)

    def application_show(self, app_id: str) -> dict[str, Any]:
        return applications.show(self.ctx, self.actor, app_id)

    def application_approve(self, app_id: str, tier: str, use_cases: list[str] | None, waitlist: bool, reason: str | None) -> dict[str, Any]:
        return applications.approve(self.ctx, self.actor, app_id, tier=tier, use_cases=use_cases, waitlist=waitlist, reason=reason)

    def application_reject(self, app_id: str, reason: str) -> dict[str, Any]:
        return applications.reject(self.ctx, self.actor, app_id, reason=reason)

    def key_issue(self, deployer: str, model: str, use_case: str, name: str, expires_in_days: float | None) -> dict[str, Any]:
        expires = timedelta(days=expires_in_days) if expires_in_days else None
        return keys.issue(self.ctx, self.actor, deployer=deployer, model=model, use_case=use_case, name=name, expires_in=expires)

    def key_list(self, deployer: str | None) -> list[dict[str, Any]]:
        return keys.list_keys(self.ctx, self.actor, deployer=deployer)

    def key_revoke(self, key_id: str, reason: str | None) -> dict[str, Any]:
        return keys.revoke(self.ctx, self.actor, key_id, reason=reason)

    def key_rotate(self, key_id: str, grace_hours: float) -> dict[str, Any]:
        return keys.rotate(self.ctx, self.actor, key_id, grace=timedelta(hours=grace_hours))

    def token_create(self, name: str, role: str, email: str | None, deployer: str | None) -> dict[str, Any]:
        return principals.create(self.ctx, self.actor, name=name, role=role, email=email, deployer=deployer)

    def token_list(self) -> list[dict[str, Any]]:
        return principals.list_all(self.ctx, self.actor)

    def token_revoke(self, ref: str) -> dict[str, Any]:
        return principals.revoke(self.ctx, self.actor, ref)

    def audit_verify(self) -> dict[str, Any]:
        return audit.verify(self.ctx, self.actor)

    def audit_list(self, target: str | None, limit: int) -> list[dict[str, Any]]:
        return audit.list_entries(self.ctx, self.actor, target=target, limit=limit)

    def audit_export(self, out: IO[bytes], since: int) -> int:
        return audit.export(self.ctx, self.actor, out, since=since)

    def audit_checkpoint(self) -> dict[str, Any]:
        return audit.checkpoint(self.ctx, self.actor).to_dict()

    def audit_check(self, checkpoint: dict[str, Any], trusted_public_key: str | None) -> dict[str, Any]:
        return audit.check_checkpoint(self.ctx, self.actor, Checkpoint.from_dict(checkpoint), trusted_public_key=trusted_public_key)


_STATUS_ERRORS: dict[int, type[ReleasegateError]] = {
    400: InvalidInput, 401: Unauthenticated, 403: Forbidden, 404: NotFound, 409: Refused, 413: InvalidInput, 422: InvalidInput,
}


class RemoteClient:
    """The same calls over HTTP to a releasegate server."""

    def __init__(self, base_url: str, token: str | None, *, transport: httpx.BaseTransport | None = None, timeout: float = 30.0) -> None:
        if not token:
            raise Unauthenticated("set RELEASEGATE_TOKEN (or --token) to talk to a server", code="missing_token")
        self.http = httpx.Client(base_url=base_url.rstrip("/") + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                                 transport=transport, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ReleasegateError(f"cannot reach the releasegate server at {self.http.base_url}: {exc}", code="server_unreachable") from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                code, message, details = err["code"], err["message"], err.get("details") or {}
            except (ValueError, KeyError, TypeError):
                code, message, details = "http_error", f"HTTP {resp.status_code}: {resp.text[:200]}", {}
            cls = _STATUS_ERRORS.get(resp.status_code, ReleasegateError)
            raise cls(message, code=code, details=details)
        return resp.json()

    @staticmethod
    def _m(model: str) -> str:
        if "/" not in model:
            raise InvalidInput(f"model {model!r} must be written org/name", code="invalid_model")
        return model

    def plan_diff(self, loaded: LoadedPlan) -> dict[str, Any]:
        return self._call("POST", "/plans/diff", json={"text": loaded.text, "source": loaded.source})  # type: ignore[no-any-return]

    def plan_apply(self, loaded: LoadedPlan, *, force_reason: str | None) -> dict[str, Any]:
        return self._call("POST", "/plans/apply", json={"text": loaded.text, "source": loaded.source,  # type: ignore[no-any-return]
                                                         "force": force_reason is not None, "reason": force_reason})

    def plan_show(self, model: str, revision: int | None) -> dict[str, Any]:
        return self._call("GET", f"/models/{self._m(model)}/plan", params={"revision": revision} if revision else None)  # type: ignore[no-any-return]

    def plan_history(self, model: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/models/{self._m(model)}/plan/history")  # type: ignore[no-any-return]

    def status(self, model: str | None) -> list[dict[str, Any]]:
        return self._call("GET", f"/models/{self._m(model)}" if model else "/models")  # type: ignore[no-any-return]

    def transition(self, model: str, version: str, action: str, *, reason: str, override_reason: str | None) -> dict[str, Any]:
        return self._call("POST", f"/models/{self._m(model)}/versions/{version}/{action}",  # type: ignore[no-any-return]
                          json={"reason": reason, "override_reason": override_reason})

    def version_history(self, model: str, version: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/models/{self._m(model)}/versions/{version}/history")  # type: ignore[no-any-return]

    def retarget(self, model: str, alias: str, targets: dict[str, int], *, reason: str) -> dict[str, Any]:
        return self._call("POST", f"/models/{self._m(model)}/aliases/{alias}/retarget", json={"targets": targets, "reason": reason})  # type: ignore[no-any-return]

    def deployer_create(self, name: str, contact_email: str | None) -> dict[str, Any]:
        return self._call("POST", "/deployers", json={"name": name, "contact_email": contact_email})  # type: ignore[no-any-return]

    def deployer_list(self) -> list[dict[str, Any]]:
        return self._call("GET", "/deployers")  # type: ignore[no-any-return]

    def deployer_show(self, ref: str) -> dict[str, Any]:
        return self._call("GET", f"/deployers/{ref}")  # type: ignore[no-any-return]

    def deployer_add_member(self, ref: str, email: str, role: str) -> dict[str, Any]:
        return self._call("POST", f"/deployers/{ref}/members", json={"email": email, "role": role})  # type: ignore[no-any-return]

    def deployer_set_status(self, ref: str, status: str, reason: str) -> dict[str, Any]:
        return self._call("POST", f"/deployers/{ref}/status", json={"status": status, "reason": reason})  # type: ignore[no-any-return]

    def application_submit(self, deployer: str, model: str, use_cases: list[str], description: str) -> dict[str, Any]:
        return self._call("POST", "/applications", json={"deployer": deployer, "model": model, "use_cases": use_cases, "description": description})  # type: ignore[no-any-return]

    def application_list(self, status: str | None, deployer: str | None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"status": status, "deployer": deployer}.items() if v}
        return self._call("GET", "/applications", params=params)  # type: ignore[no-any-return]

    def application_show(self, app_id: str) -> dict[str, Any]:
        return self._call("GET", f"/applications/{app_id}")  # type: ignore[no-any-return]

    def application_approve(self, app_id: str, tier: str, use_cases: list[str] | None, waitlist: bool, reason: str | None) -> dict[str, Any]:
        return self._call("POST", f"/applications/{app_id}/approve",  # type: ignore[no-any-return]
                          json={"tier": tier, "use_cases": use_cases, "waitlist": waitlist, "reason": reason})

    def application_reject(self, app_id: str, reason: str) -> dict[str, Any]:
        return self._call("POST", f"/applications/{app_id}/reject", json={"reason": reason})  # type: ignore[no-any-return]

    def key_issue(self, deployer: str, model: str, use_case: str, name: str, expires_in_days: float | None) -> dict[str, Any]:
        return self._call("POST", "/keys", json={"deployer": deployer, "model": model, "use_case": use_case, "name": name,  # type: ignore[no-any-return]
                                                 "expires_in_days": expires_in_days})

    def key_list(self, deployer: str | None) -> list[dict[str, Any]]:
        return self._call("GET", "/keys", params={"deployer": deployer} if deployer else None)  # type: ignore[no-any-return]

    def key_revoke(self, key_id: str, reason: str | None) -> dict[str, Any]:
        return self._call("POST", f"/keys/{key_id}/revoke", json={"reason": reason})  # type: ignore[no-any-return]

    def key_rotate(self, key_id: str, grace_hours: float) -> dict[str, Any]:
        return self._call("POST", f"/keys/{key_id}/rotate", json={"grace_hours": grace_hours})  # type: ignore[no-any-return]

    def token_create(self, name: str, role: str, email: str | None, deployer: str | None) -> dict[str, Any]:
        return self._call("POST", "/tokens", json={"name": name, "role": role, "email": email, "deployer": deployer})  # type: ignore[no-any-return]

    def token_list(self) -> list[dict[str, Any]]:
        return self._call("GET", "/tokens")  # type: ignore[no-any-return]

    def token_revoke(self, ref: str) -> dict[str, Any]:
        return self._call("POST", f"/tokens/{ref}/revoke")  # type: ignore[no-any-return]

    def audit_verify(self) -> dict[str, Any]:
        return self._call("GET", "/audit/verify")  # type: ignore[no-any-return]

    def audit_list(self, target: str | None, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if target:
            params["target"] = target
        return self._call("GET", "/audit", params=params)  # type: ignore[no-any-return]

    def audit_export(self, out: IO[bytes], since: int) -> int:
        try:
            resp = self.http.get("/audit/export", params={"since": since})
        except httpx.HTTPError as exc:
            raise ReleasegateError(f"cannot reach the releasegate server at {self.http.base_url}: {exc}", code="server_unreachable") from exc
        if resp.status_code >= 400:
            self._call("GET", "/audit/export", params={"since": since})  # raises the server's error
        out.write(resp.content)
        return resp.content.count(b"\n")

    def audit_checkpoint(self) -> dict[str, Any]:
        return self._call("POST", "/audit/checkpoint")  # type: ignore[no-any-return]

    def audit_check(self, checkpoint: dict[str, Any], trusted_public_key: str | None) -> dict[str, Any]:
        return self._call("POST", "/audit/checkpoint/check", json={"checkpoint": checkpoint, "trusted_public_key": trusted_public_key})  # type: ignore[no-any-return]
