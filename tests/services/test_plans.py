"""Applying release plans: revisions, no-op re-apply, guarded live audiences, audit."""

from __future__ import annotations

import pytest

from releasegate.errors import Forbidden, NotFound, Refused
from releasegate.services import audit, plans, rollouts
from releasegate.services.context import Actor, ServiceContext
from support import MODEL, apply_text


def test_apply_creates_revision_and_draft_rollouts(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> None:
    result = apply_text(ctx, admin, example_plan_text)
    assert result.changed and result.revision == 1
    status = [r for r in rollouts.status(ctx, admin, MODEL) if "version" in r]
    assert {(r["version"], r["state"]) for r in status} == {("v1", "draft"), ("v2", "draft")}
    aliases = [r for r in rollouts.status(ctx, admin, MODEL) if "alias" in r]
    assert aliases == [{"model": MODEL, "alias": "atlas", "targets": {"v1": 90, "v2": 10}}]


def test_reapplying_identical_content_is_a_noop(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> None:
    apply_text(ctx, admin, example_plan_text)
    size_before = audit.verify(ctx, admin)["entries"]
    # Comments and formatting do not change the content hash.
    again = apply_text(ctx, admin, "# reformatted\n" + example_plan_text)
    assert not again.changed and again.revision == 1
    assert audit.verify(ctx, admin)["entries"] == size_before


def test_change_creates_new_revision_with_diff(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> None:
    apply_text(ctx, admin, example_plan_text)
    changed = apply_text(ctx, admin, example_plan_text.replace("rpm: 600", "rpm: 900"))
    assert changed.changed and changed.revision == 2
    assert any("rpm" in line for line in changed.changes)
    assert [h["revision"] for h in plans.history(ctx, admin, MODEL)] == [1, 2]


def test_cutting_the_live_audience_is_refused_unless_forced(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> None:
    apply_text(ctx, admin, example_plan_text)
    rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="start")
    narrowed = example_plan_text.replace("audience: {tiers: [internal]}", "audience: {tiers: [internal], max_deployers: 1}")
    with pytest.raises(Refused) as err:
        apply_text(ctx, admin, narrowed)
    assert err.value.code == "plan_cuts_live_audience"
    assert "internal" in err.value.message
    assert plans.show(ctx, admin, MODEL)["revision"] == 1  # nothing written

    forced = apply_text(ctx, admin, narrowed, force_reason="internal tier retired; named deployer only")
    assert forced.changed and forced.forced
    entry = audit.list_entries(ctx, admin, target=f"model:{MODEL}", limit=1)[0]
    assert entry["action"] == "plan.apply" and entry["reason"].startswith("internal tier retired")


def test_removing_the_live_stage_is_refused(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> None:
    apply_text(ctx, admin, example_plan_text)
    rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="start")
    renamed = example_plan_text.replace("- name: internal\n", "- name: staff-only\n")
    with pytest.raises(Refused) as err:
        apply_text(ctx, admin, renamed)
    assert "internal" in err.value.message


def test_only_release_managers_apply(ctx: ServiceContext, example_plan_text: str) -> None:
    with pytest.raises(Forbidden):
        apply_text(ctx, Actor(name="rita", role="reviewer"), example_plan_text)


def test_unknown_model(ctx: ServiceContext, admin: Actor) -> None:
    with pytest.raises(NotFound) as err:
        rollouts.status(ctx, admin, "acme/nope")
    assert err.value.code == "model_not_found"
