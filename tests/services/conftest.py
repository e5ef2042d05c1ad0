"""Fixtures for service tests: the example plan applied, and deployers admitted into tiers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from releasegate.plan.loader import load_plan_text
from releasegate.services import applications, deployers, plans
from releasegate.services.context import Actor, ServiceContext

ATLAS = "acme/atlas-8b"


@pytest.fixture
def atlas(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> str:
    """The example plan applied; returns the model name."""
    plans.apply(ctx, admin, load_plan_text(example_plan_text))
    return ATLAS


@pytest.fixture
def admit(ctx: ServiceContext, admin: Actor, atlas: str) -> Callable[[str, str], str]:
    """admit(name, tier) registers a deployer, approves it for customer-support and returns its id."""

    def _admit(name: str, tier: str) -> str:
        d = deployers.create(ctx, admin, name=name, contact_email=f"ops@{name}.example")
        a = applications.submit(ctx, admin, deployer=d["id"], model=atlas, use_cases=["customer-support"])
        applications.approve(ctx, admin, a["id"], tier=tier)
        return str(d["id"])

    return _admit
