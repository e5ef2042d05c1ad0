"""Audit trail and access tokens."""

from __future__ import annotations

import io
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel

from releasegate.api.deps import Ctx, CurrentActor
from releasegate.audit.checkpoint import Checkpoint
from releasegate.services import audit, principals

router = APIRouter(prefix="/api/v1", tags=["audit"])


class TokenBody(BaseModel):
    name: str
    role: str
    email: str | None = None
    deployer: str | None = None


class CheckpointBody(BaseModel):
    checkpoint: dict[str, Any]
    trusted_public_key: str | None = None


@router.get("/audit")
def list_audit(ctx: Ctx, actor: CurrentActor, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    return audit.list_entries(ctx, actor, target=target, limit=min(max(limit, 1), 1000))


@router.get("/audit/export")
def export_audit(ctx: Ctx, actor: CurrentActor, since: int = 0) -> Response:
    """Every entry after ``since`` as JSON lines."""
    buf = io.BytesIO()
    audit.export(ctx, actor, buf, since=since)
    return Response(buf.getvalue(), media_type="application/x-ndjson")


@router.get("/audit/verify")
def verify_audit(ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return audit.verify(ctx, actor)


@router.post("/audit/checkpoint")
def make_checkpoint(ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return audit.checkpoint(ctx, actor).to_dict()


@router.post("/audit/checkpoint/check")
def check_checkpoint(body: CheckpointBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return audit.check_checkpoint(ctx, actor, Checkpoint.from_dict(body.checkpoint), trusted_public_key=body.trusted_public_key)


@router.post("/tokens", status_code=201)
def create_token(body: TokenBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return principals.create(ctx, actor, name=body.name, role=body.role, email=body.email, deployer=body.deployer)


@router.get("/tokens")
def list_tokens(ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    return principals.list_all(ctx, actor)


@router.post("/tokens/{ref}/revoke")
def revoke_token(ref: str, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return principals.revoke(ctx, actor, ref)


@router.get("/me")
def whoami(actor: CurrentActor) -> dict[str, Any]:
    return {"name": actor.name, "role": actor.role, "deployer_id": actor.deployer_id, "email": actor.email}
