"""Models: release plans, rollout status and transitions."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from releasegate.api.deps import Ctx, CurrentActor
from releasegate.plan.loader import load_plan_text
from releasegate.services import plans, rollouts

router = APIRouter(prefix="/api/v1", tags=["models"])


class PlanBody(BaseModel):
    text: str = Field(description="The release plan YAML.")
    source: str = Field("api", description="Where the plan came from (file name), shown in errors.")
    force: bool = False
    reason: str | None = None


class TransitionBody(BaseModel):
    reason: str = Field(min_length=1, description="Why; recorded in the audit trail.")
    override_reason: str | None = Field(None, description="Admin only: promote although the gate does not pass.")


class RetargetBody(BaseModel):
    targets: dict[str, int] = Field(description="{version: weight}")
    reason: str = Field(min_length=1)


@router.post("/plans/validate")
def validate_plan(body: PlanBody, actor: CurrentActor) -> dict[str, Any]:
    actor.require("release_manager", "reviewer", "auditor", action="validate plans")
    loaded = load_plan_text(body.text, source=body.source)
    return {"ok": True, "model": loaded.plan.model, "content_hash": loaded.content_hash, "warnings": [str(w) for w in loaded.warnings]}


@router.post("/plans/diff")
def diff_plan(body: PlanBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return plans.diff(ctx, actor, load_plan_text(body.text, source=body.source))


@router.post("/plans/apply")
def apply_plan(body: PlanBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    loaded = load_plan_text(body.text, source=body.source)
    return plans.apply(ctx, actor, loaded, force_reason=body.reason if body.force else None).to_dict()


@router.get("/models")
def list_models(ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    return rollouts.status(ctx, actor)


@router.get("/models/{org}/{name}")
def model_status(org: str, name: str, ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    return rollouts.status(ctx, actor, f"{org}/{name}")


@router.get("/models/{org}/{name}/plan")
def show_plan(org: str, name: str, ctx: Ctx, actor: CurrentActor, revision: int | None = None) -> dict[str, Any]:
    return plans.show(ctx, actor, f"{org}/{name}", revision)


@router.get("/models/{org}/{name}/plan/history")
def plan_history(org: str, name: str, ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    return plans.history(ctx, actor, f"{org}/{name}")


@router.post("/models/{org}/{name}/versions/{version}/{action}")
def transition(
    org: str, name: str, version: str,
    action: Literal["promote", "pause", "resume", "halt", "rollback", "decommission"],
    body: TransitionBody, ctx: Ctx, actor: CurrentActor,
) -> dict[str, Any]:
    return rollouts.transition(ctx, actor, f"{org}/{name}", version, action, reason=body.reason, override_reason=body.override_reason)


@router.get("/models/{org}/{name}/versions/{version}/history")
def version_history(org: str, name: str, version: str, ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    return rollouts.history(ctx, actor, f"{org}/{name}", version)


@router.post("/models/{org}/{name}/aliases/{alias}/retarget")
def retarget(org: str, name: str, alias: str, body: RetargetBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return rollouts.retarget(ctx, actor, f"{org}/{name}", alias, body.targets, reason=body.reason)
