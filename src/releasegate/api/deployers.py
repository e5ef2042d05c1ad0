"""Deployers, their members, applications and API keys."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from releasegate.api.deps import Ctx, CurrentActor
from releasegate.services import applications, deployers, keys

router = APIRouter(prefix="/api/v1", tags=["deployers"])


class DeployerBody(BaseModel):
    name: str
    contact_email: str | None = None


class MemberBody(BaseModel):
    email: str
    role: Literal["owner", "member"] = "member"


class StatusBody(BaseModel):
    status: Literal["suspended", "active", "waitlisted"]
    reason: str = Field(min_length=1)


class ApplicationBody(BaseModel):
    deployer: str
    model: str
    use_cases: list[str] = Field(min_length=1)
    description: str = ""


class ApproveBody(BaseModel):
    tier: str
    use_cases: list[str] | None = None
    waitlist: bool = False
    reason: str | None = None


class RejectBody(BaseModel):
    reason: str = Field(min_length=1)


class KeyBody(BaseModel):
    deployer: str
    model: str
    use_case: str
    name: str = ""
    expires_in_days: float | None = Field(None, gt=0)


class RevokeBody(BaseModel):
    reason: str | None = None


class RotateBody(BaseModel):
    grace_hours: float = Field(24, ge=0)


@router.post("/deployers", status_code=201)
def create_deployer(body: DeployerBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return deployers.create(ctx, actor, name=body.name, contact_email=body.contact_email)


@router.get("/deployers")
def list_deployers(ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    return deployers.list_all(ctx, actor)


@router.get("/deployers/{ref}")
def show_deployer(ref: str, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return deployers.show(ctx, actor, ref)


@router.post("/deployers/{ref}/members", status_code=201)
def add_member(ref: str, body: MemberBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return deployers.add_member(ctx, actor, ref, email=body.email, role=body.role)


@router.post("/deployers/{ref}/status")
def set_status(ref: str, body: StatusBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return deployers.set_status(ctx, actor, ref, body.status, reason=body.reason)


@router.post("/applications", status_code=201)
def submit_application(body: ApplicationBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return applications.submit(ctx, actor, deployer=body.deployer, model=body.model, use_cases=body.use_cases, description=body.description)


@router.get("/applications")
def list_applications(ctx: Ctx, actor: CurrentActor, status: str | None = None, deployer: str | None = None) -> list[dict[str, Any]]:
    return applications.list_all(ctx, actor, status=status, deployer=deployer)


@router.get("/applications/{app_id}")
def show_application(app_id: str, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return applications.show(ctx, actor, app_id)


@router.post("/applications/{app_id}/approve")
def approve_application(app_id: str, body: ApproveBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return applications.approve(ctx, actor, app_id, tier=body.tier, use_cases=body.use_cases, waitlist=body.waitlist, reason=body.reason)


@router.post("/applications/{app_id}/reject")
def reject_application(app_id: str, body: RejectBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return applications.reject(ctx, actor, app_id, reason=body.reason)


@router.post("/keys", status_code=201)
def issue_key(body: KeyBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    return keys.issue(ctx, actor, deployer=body.deployer, model=body.model, use_case=body.use_case, name=body.name, expires_in=expires)


@router.get("/keys")
def list_keys(ctx: Ctx, actor: CurrentActor, deployer: str | None = None) -> list[dict[str, Any]]:
    return keys.list_keys(ctx, actor, deployer=deployer)


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, body: RevokeBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return keys.revoke(ctx, actor, key_id, reason=body.reason)


@router.post("/keys/{key_id}/rotate")
def rotate_key(key_id: str, body: RotateBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return keys.rotate(ctx, actor, key_id, grace=timedelta(hours=body.grace_hours))
