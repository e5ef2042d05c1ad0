"""Fixtures: a small released model with weights (plan, terms, safetensors), applied, registered, opened."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from releasegate.plan.loader import load_plan_file
from releasegate.services import plans, rollouts
from releasegate.services.context import Actor, ServiceContext
from releasegate.weights import access, registry, terms
from weights_world import GOOD_FIELDS, MODEL, PLAN, RM, TERMS_V1, World, write_weights


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    d = tmp_path / "plan"
    (d / "terms").mkdir(parents=True)
    (d / "plan.yaml").write_text(PLAN)
    (d / "terms" / "license.md").write_text(TERMS_V1)
    write_weights(d / "artifacts" / "v1", seed=1)
    write_weights(d / "artifacts" / "v2", seed=2)
    return d


@pytest.fixture
def world(ctx: ServiceContext, admin: Actor, plan_dir: Path) -> World:
    """v1 registered, terms published, and v1 promoted into the open-weights stage."""
    plans.apply(ctx, admin, load_plan_file(plan_dir / "plan.yaml"))
    reg = registry.register(ctx, RM, MODEL, "v1")
    terms.publish(ctx, RM, MODEL)
    rollouts.transition(ctx, RM, MODEL, "v1", "promote", reason="internal")
    rollouts.transition(ctx, RM, MODEL, "v1", "promote", reason="open the weights")
    return World(ctx=ctx, plan_dir=plan_dir, commit=reg["commit"])


@pytest.fixture
def granted(world: World) -> Callable[[str, str], tuple[str, Actor]]:
    """granted(name, email): a licensee that requested (auto-approved domain) and accepted the terms."""
    def _granted(name: str, email: str) -> tuple[str, Actor]:
        token, actor = world.licensee(name, email)
        r = access.submit(world.ctx, actor, MODEL, fields=GOOD_FIELDS, declared_use="alignment research")
        assert r["status"] == "approved", r
        terms.accept(world.ctx, actor, MODEL)
        return token, actor

    return _granted
