"""Small builders shared by the service tests."""

from __future__ import annotations

from typing import Any

from releasegate.plan.loader import load_plan_text
from releasegate.services import applications, deployers, plans
from releasegate.services.context import Actor, ServiceContext

MODEL = "acme/atlas-8b"
REVIEWER = Actor(name="rita@acme.example", role="reviewer", email="rita@acme.example")


def apply_text(ctx: ServiceContext, actor: Actor, text: str, *, force_reason: str | None = None) -> plans.ApplyResult:
    return plans.apply(ctx, actor, load_plan_text(text, source="plan.yaml"), force_reason=force_reason)


def admitted_deployer(ctx: ServiceContext, name: str, tier: str, use_cases: list[str], *, waitlist: bool = False) -> dict[str, Any]:
    d = deployers.create(ctx, REVIEWER, name=name, contact_email=f"owner@{name}.example")
    a = applications.submit(ctx, REVIEWER, deployer=d["id"], model=MODEL, use_cases=use_cases)
    applications.approve(ctx, REVIEWER, a["id"], tier=tier, waitlist=waitlist)
    return deployers.show(ctx, REVIEWER, d["id"])
