"""Shared by the evidence, gate, controller and story tests: the example plan applied, deployers
admitted into tiers, and request aggregates written as the gateway's log shipper writes them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from releasegate.plan.loader import load_plan_text
from releasegate.services import applications, deployers, plans
from releasegate.services.context import Actor, ServiceContext
from releasegate.store.requests import RequestBucket

ATLAS = "acme/atlas-8b"


@pytest.fixture
def atlas(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> str:
    """The example plan applied; returns the model name."""
    plans.apply(ctx, admin, load_plan_text(example_plan_text))
    return ATLAS


def admit_deployer(ctx: ServiceContext, admin: Actor, name: str, tier: str, model: str = ATLAS) -> str:
    """Register a deployer, approve it for customer-support in ``tier``; return its id."""
    d = deployers.create(ctx, admin, name=name, contact_email=f"ops@{name}.example")
    a = applications.submit(ctx, admin, deployer=d["id"], model=model, use_cases=["customer-support"])
    applications.approve(ctx, admin, a["id"], tier=tier)
    return str(d["id"])


@pytest.fixture
def admit(ctx: ServiceContext, admin: Actor, atlas: str) -> Callable[[str, str], str]:
    """admit(name, tier) registers a deployer, approves it for customer-support and returns its id."""
    return lambda name, tier: admit_deployer(ctx, admin, name, tier, atlas)


def add_buckets(ctx: ServiceContext, model: str, version: str, stage: str, start: datetime, *, hours: int = 1,
                deployers: tuple[str, ...] = ("dep_a",), requests: int = 100, flagged: dict[str, int] | None = None,
                scope_violations: int = 0, errors: int = 0) -> None:
    """Hourly request aggregates as the gateway's log shipper writes them: per hour, per deployer."""
    with ctx.write() as session:
        for h in range(hours):
            for d in deployers:
                session.add(RequestBucket(
                    bucket_start=start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=h), model=model,
                    version=version, stage=stage, deployer_id=d, use_case="customer-support", requests=requests,
                    allowed=requests - scope_violations, denied=scope_violations, errors=errors,
                    scope_violations=scope_violations, flagged=dict(flagged or {}),
                ))
