"""Weights administration and the licensee's side of gating: registration, terms, access requests, grants."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from releasegate.api.deps import Ctx, CurrentActor
from releasegate.errors import InvalidInput
from releasegate.weights import access, downloads, registry, terms

router = APIRouter(prefix="/api/v1/weights", tags=["weights"])


class RegisterBody(BaseModel):
    version: str
    path: str | None = Field(None, description="Not accepted over the API: the server registers the plan's versions.<v>.weights.path.")


class PublishBody(BaseModel):
    texts: dict[str, str] | None = Field(None, description="Terms id -> Markdown; default: read the plan's terms files.")


class AcceptBody(BaseModel):
    version: int | None = Field(None, description="The terms version you read; refused if it is no longer current.")
    content_hash: str | None = None


class RequestBody(BaseModel):
    fields: dict[str, Any] = Field(default_factory=dict, description="Values for the plan's form fields.")
    declared_use: str = Field(description="What you will use the weights for.")


class DecisionBody(BaseModel):
    reason: str | None = None


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/{org}/{name}/register", status_code=201)
def register(org: str, name: str, body: RegisterBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    if body.path:
        # An API caller must not make the server read and publish an arbitrary directory of its own.
        raise InvalidInput("over the API only the plan's own weights path can be registered; omit path, or run "
                           "`releasegate weights register MODEL VERSION DIR` on the server", code="path_not_allowed")
    return registry.register(ctx, actor, f"{org}/{name}", body.version)


@router.get("/{org}/{name}/revisions")
def list_revisions(org: str, name: str, ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    return registry.list_registered(ctx, actor, f"{org}/{name}")


@router.post("/{org}/{name}/terms/publish")
def publish_terms(org: str, name: str, body: PublishBody, ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    return terms.publish(ctx, actor, f"{org}/{name}", texts=body.texts)


@router.get("/{org}/{name}/terms")
def show_terms(org: str, name: str, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return terms.show(ctx, actor, f"{org}/{name}")


@router.post("/{org}/{name}/terms/accept", status_code=201)
def accept_terms(org: str, name: str, body: AcceptBody, request: Request, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return terms.accept(ctx, actor, f"{org}/{name}", version=body.version, content_hash=body.content_hash,
                        ip=_ip(request), user_agent=request.headers.get("user-agent"))


@router.post("/{org}/{name}/requests", status_code=201)
def submit_request(org: str, name: str, body: RequestBody, request: Request, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return access.submit(ctx, actor, f"{org}/{name}", fields=body.fields, declared_use=body.declared_use, ip=_ip(request))


@router.get("/{org}/{name}/access")
def access_status(org: str, name: str, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return access.status(ctx, actor, f"{org}/{name}")


@router.get("/{org}/{name}/downloads")
def list_downloads(org: str, name: str, ctx: Ctx, actor: CurrentActor, version: str | None = None) -> list[dict[str, Any]]:
    return downloads.list_downloads(ctx, actor, f"{org}/{name}", version=version)


@router.get("/requests")
def list_requests(ctx: Ctx, actor: CurrentActor, status: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
    return access.list_requests(ctx, actor, status=status, model=model)


@router.get("/requests/{request_id}")
def show_request(request_id: str, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return access.show(ctx, actor, request_id)


@router.post("/requests/{request_id}/approve")
def approve(request_id: str, body: DecisionBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return access.approve(ctx, actor, request_id, reason=body.reason)


@router.post("/requests/{request_id}/reject")
def reject(request_id: str, body: DecisionBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return access.reject(ctx, actor, request_id, reason=body.reason)


@router.post("/requests/{request_id}/revoke")
def revoke(request_id: str, body: DecisionBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return access.revoke(ctx, actor, request_id, reason=body.reason)
