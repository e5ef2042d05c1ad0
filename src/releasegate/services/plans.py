"""Applying release plans: revisions with content hashes, guarded against cutting live audiences."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.plan.diff import diff_plans, live_stage_impact
from releasegate.plan.loader import LoadedPlan
from releasegate.plan.schema import Plan
from releasegate.policy.rollout import SERVING_STATES
from releasegate.services import audit
from releasegate.services.context import Actor, ServiceContext
from releasegate.store.models import AliasTarget, ModelRecord, PlanRevision, Rollout


@dataclass
class ApplyResult:
    model: str
    revision: int
    changed: bool
    content_hash: str
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def current_revision(session: Session, model: str) -> PlanRevision | None:
    record = session.get(ModelRecord, model)
    if record is None or record.current_revision == 0:
        return None
    return session.scalar(
        select(PlanRevision).where(PlanRevision.model_name == model, PlanRevision.revision == record.current_revision)
    )


def current_plan(session: Session, model: str) -> Plan:
    """The plan in force for ``model``; NotFound if none was applied."""
    rev = current_revision(session, model)
    if rev is None:
        raise NotFound(f"no model {model!r}: apply a release plan for it first", code="model_not_found")
    return Plan.model_validate(rev.plan_json)


def list_models(session: Session) -> list[str]:
    return list(session.scalars(select(ModelRecord.name).order_by(ModelRecord.name)))


def _impact(session: Session, old: Plan | None, new: Plan) -> list[str]:
    """Reasons applying ``new`` would hurt live traffic (stage removed, audience cut, version dropped)."""
    if old is None:
        return []
    reasons: list[str] = []
    rollouts = session.scalars(select(Rollout).where(Rollout.model_name == new.model)).all()
    for r in rollouts:
        if r.state not in SERVING_STATES and r.state != "halted":
            continue
        if r.version not in new.versions:
            reasons.append(f"version {r.version!r} is {r.state} but the new plan removes it")
            continue
        if r.stage_name is not None:
            reasons.extend(f"{r.version}: {why}" for why in live_stage_impact(old, new, r.stage_name))
    return reasons


def diff(ctx: ServiceContext, actor: Actor, loaded: LoadedPlan) -> dict[str, Any]:
    actor.require("release_manager", "reviewer", "auditor", action="diff a release plan")
    with ctx.db.read() as session:
        rev = current_revision(session, loaded.plan.model)
        old = Plan.model_validate(rev.plan_json) if rev else None
        d = diff_plans(old, loaded.plan)
        impact = _impact(session, old, loaded.plan)
        return {
            "model": loaded.plan.model,
            "current_revision": rev.revision if rev else 0,
            "identical": rev is not None and rev.content_hash == loaded.content_hash,
            "changes": d.render(),
            "live_impact": impact,
            "warnings": [str(w) for w in loaded.warnings],
        }


def apply(ctx: ServiceContext, actor: Actor, loaded: LoadedPlan, *, force_reason: str | None = None) -> ApplyResult:
    """Store ``loaded`` as the model's new plan revision; identical content is a no-op.

    A change that removes a live stage or cuts its audience is refused unless
    ``force_reason`` is given, and the forced reasons are audited.
    """
    actor.require("release_manager", action="apply a release plan")
    plan = loaded.plan
    now = ctx.clock.now()
    with ctx.write() as session:
        record = session.get(ModelRecord, plan.model, with_for_update=True)
        rev = current_revision(session, plan.model)
        if rev is not None and rev.content_hash == loaded.content_hash:
            return ApplyResult(plan.model, rev.revision, False, rev.content_hash, warnings=[str(w) for w in loaded.warnings])
        old = Plan.model_validate(rev.plan_json) if rev else None
        impact = _impact(session, old, plan)
        if impact and not (force_reason and force_reason.strip()):
            raise Refused(
                "applying this plan would cut live access: " + "; ".join(impact)
                + ". Re-run with --force and a --reason if this is intended.",
                code="plan_cuts_live_audience",
                details={"impact": impact},
            )
        if record is None:
            record = ModelRecord(name=plan.model, description=plan.description, current_revision=0, created_at=now)
            session.add(record)
            session.flush()
        new_rev = record.current_revision + 1
        changes = diff_plans(old, plan).render()
        session.add(PlanRevision(
            model_name=plan.model, revision=new_rev, content_hash=loaded.content_hash, text=loaded.text,
            plan_json=plan.model_dump(mode="json"), source=loaded.source,
            base_dir=str(loaded.base_dir) if loaded.base_dir else None,
            created_at=now, created_by=actor.name, forced_reason=force_reason if impact else None,
        ))
        record.current_revision = new_rev
        record.description = plan.description
        _sync_rollouts(session, plan, now)
        _sync_aliases(session, old, plan, actor, now)
        audit.record(
            session, at=now, actor=actor, action="plan.apply", target=f"model:{plan.model}",
            reason=force_reason if impact else None,
            changes={"revision": new_rev, "content_hash": loaded.content_hash, "diff": changes[:200], "forced": impact},
        )
        return ApplyResult(plan.model, new_rev, True, loaded.content_hash, changes=changes,
                           warnings=[str(w) for w in loaded.warnings], forced=impact)


def _sync_rollouts(session: Session, plan: Plan, now: Any) -> None:
    """New versions start as draft; live versions keep their stage by name (indexes may move)."""
    existing = {r.version: r for r in session.scalars(select(Rollout).where(Rollout.model_name == plan.model))}
    names = [s.name for s in plan.stages]
    for version in plan.versions:
        if version not in existing:
            session.add(Rollout(model_name=plan.model, version=version, state="draft", updated_at=now))
    for r in existing.values():
        if r.stage_name is not None and r.stage_name in names:
            r.stage_index = names.index(r.stage_name)


def _sync_aliases(session: Session, old: Plan | None, plan: Plan, actor: Actor, now: Any) -> None:
    """An alias follows the plan when the plan changes it; a runtime retarget otherwise stands."""
    for alias, targets in plan.aliases.items():
        unknown = [v for v in targets if v not in plan.versions]
        if unknown:
            raise InvalidInput(f"alias {alias!r} names unknown versions: {', '.join(unknown)}", code="plan_invalid")
        row = session.get(AliasTarget, (plan.model, alias))
        if row is None:
            session.add(AliasTarget(model_name=plan.model, alias=alias, targets=dict(targets), set_by=actor.name, reason="plan", at=now))
        elif old is None or old.aliases.get(alias) != targets:
            row.targets, row.set_by, row.reason, row.at = dict(targets), actor.name, "plan", now
    for row in session.scalars(select(AliasTarget).where(AliasTarget.model_name == plan.model)):
        if row.alias not in plan.aliases:
            session.delete(row)


def show(ctx: ServiceContext, actor: Actor, model: str, revision: int | None = None) -> dict[str, Any]:
    actor.require("release_manager", "reviewer", "auditor", action="read release plans")
    with ctx.db.read() as session:
        if revision is None:
            rev = current_revision(session, model)
        else:
            rev = session.scalar(select(PlanRevision).where(PlanRevision.model_name == model, PlanRevision.revision == revision))
        if rev is None:
            raise NotFound(f"no plan revision for model {model!r}" + (f" at revision {revision}" if revision else ""), code="plan_not_found")
        return {
            "model": model, "revision": rev.revision, "content_hash": rev.content_hash, "text": rev.text,
            "created_at": rev.created_at.isoformat(), "created_by": rev.created_by, "forced_reason": rev.forced_reason,
        }


def history(ctx: ServiceContext, actor: Actor, model: str) -> list[dict[str, Any]]:
    actor.require("release_manager", "reviewer", "auditor", action="read release plans")
    with ctx.db.read() as session:
        rows = session.scalars(select(PlanRevision).where(PlanRevision.model_name == model).order_by(PlanRevision.revision)).all()
        if not rows:
            raise NotFound(f"no model {model!r}", code="model_not_found")
        return [{"revision": r.revision, "content_hash": r.content_hash, "created_at": r.created_at.isoformat(),
                 "created_by": r.created_by, "forced_reason": r.forced_reason} for r in rows]
