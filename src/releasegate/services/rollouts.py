"""Moving model versions through their release plan: promote, pause, resume, halt, rollback, decommission, retarget."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.plan.schema import Plan
from releasegate.policy.audience import DeployerView, admitted
from releasegate.policy.rollout import RolloutState, next_state
from releasegate.services import audit, webhooks
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.gates import evaluate_gate
from releasegate.services.plans import current_plan
from releasegate.store.models import AliasTarget, Deployer, Rollout, Transition

ACTION_ROLES = {
    "promote": ("release_manager",),
    "pause": ("release_manager",),
    "resume": ("release_manager",),
    "halt": ("release_manager",),
    "rollback": ("release_manager",),
    "decommission": ("release_manager",),
}


def get_rollout(session: Session, model: str, version: str, *, lock: bool = False) -> Rollout:
    q = select(Rollout).where(Rollout.model_name == model, Rollout.version == version)
    if lock:
        q = q.with_for_update()
    r = session.scalar(q)
    if r is None:
        known = list(session.scalars(select(Rollout.version).where(Rollout.model_name == model)))
        if not known:
            raise NotFound(f"no model {model!r}: apply a release plan for it first", code="model_not_found")
        raise NotFound(f"model {model!r} has no version {version!r}; known versions: {', '.join(sorted(known))}", code="version_not_found")
    return r


def _require_reason(reason: str | None, what: str) -> str:
    if reason is None or not reason.strip():
        raise InvalidInput(f"a reason is required to {what}", code="reason_required")
    return reason.strip()


def transition(
    ctx: ServiceContext,
    actor: Actor,
    model: str,
    version: str,
    action: str,
    *,
    reason: str | None,
    override_reason: str | None = None,
) -> dict[str, Any]:
    """Apply ``action`` to the version's rollout; audited with actor, reason and (promote) the verdict."""
    actor.require(*ACTION_ROLES.get(action, ("release_manager",)), action=f"{action} a model version")
    why = _require_reason(reason, f"{action} {model} {version}")
    now = ctx.clock.now()
    with ctx.write() as session:
        plan = current_plan(session, model)
        r = get_rollout(session, model, version, lock=True)
        if version not in plan.versions and action != "decommission":
            raise Refused(f"version {version!r} is no longer in the plan of {model}; only decommission is possible", code="version_not_in_plan")
        current = RolloutState(r.state, r.stage_index)  # type: ignore[arg-type]
        try:
            target = next_state(current, action, n_stages=len(plan.stages))
        except Refused as exc:
            if r.stage_name is not None:
                exc.message = exc.message.replace(f"in stage {r.stage_index}", f"in stage {r.stage_name!r}")
                exc.args = (exc.message,)
                exc.details["stage_name"] = r.stage_name
            raise
        verdict_dict: dict[str, Any] | None = None
        override: str | None = None
        if action == "promote":
            assert target.stage is not None
            verdict = evaluate_gate(session, plan, r, target.stage, now=now, requested_by=actor.name)
            verdict_dict = verdict.to_dict()
            if not verdict.passed:
                if not (override_reason and override_reason.strip()):
                    failing = [f"{x.kind}: {x.message}" for x in verdict.results if x.outcome != "pass"]
                    raise Refused(
                        f"the gate into stage {verdict.stage!r} is {verdict.outcome}: " + "; ".join(failing)
                        + ". Supply the evidence, or an admin may override with a written reason.",
                        code="gate_not_passed", details={"verdict": verdict_dict},
                    )
                if actor.role != "admin":
                    raise Refused("only an admin may override a gate", code="override_forbidden", details={"verdict": verdict_dict})
                override = override_reason.strip()
        names = [s.name for s in plan.stages]
        before = {"state": r.state, "stage": r.stage_name}
        if target.stage != r.stage_index or r.stage_entered_at is None:
            r.stage_entered_at = now if target.stage is not None else None
        r.state = target.state
        r.stage_index = target.stage
        r.stage_name = names[target.stage] if target.stage is not None and target.stage < len(names) else r.stage_name
        r.state_reason = why
        r.updated_at = now
        session.add(Transition(
            rollout_id=r.id, action=action, from_state=current.state, from_stage=current.stage,
            to_state=target.state, to_stage=target.stage, actor=actor.name, reason=why,
            verdict=verdict_dict, override_reason=override, at=now,
        ))
        audit.record(
            session, at=now, actor=actor, action=f"rollout.{action}", target=f"version:{model}:{version}", reason=why,
            changes={"from": before, "to": {"state": r.state, "stage": r.stage_name},
                     "verdict": verdict_dict["outcome"] if verdict_dict else None, "override_reason": override},
        )
        webhooks.enqueue(session, f"rollout.{action}", {"model": model, "version": version, "action": action, "from": before, "to": {"state": r.state, "stage": r.stage_name}, "actor": actor.name, "reason": why, "override_reason": override, "verdict": verdict_dict["outcome"] if verdict_dict else None}, now)
        return _rollout_dict(session, plan, r, now)


def retarget(ctx: ServiceContext, actor: Actor, model: str, alias: str, targets: dict[str, int], *, reason: str | None) -> dict[str, Any]:
    """Point every instance of ``alias`` at ``targets`` ({version: weight}) at once."""
    actor.require("release_manager", action="retarget an alias")
    why = _require_reason(reason, f"retarget {alias}")
    now = ctx.clock.now()
    if not targets or any(w < 0 for w in targets.values()) or sum(targets.values()) <= 0:
        raise InvalidInput("targets need at least one version with a positive weight", code="invalid_targets")
    with ctx.write() as session:
        plan = current_plan(session, model)
        unknown = [v for v in targets if v not in plan.versions]
        if unknown:
            raise NotFound(f"model {model!r} has no version {', '.join(map(repr, unknown))}", code="version_not_found")
        row = session.get(AliasTarget, (model, alias))
        if row is None:
            raise NotFound(f"model {model!r} has no alias {alias!r}; aliases: {', '.join(plan.aliases) or 'none'}", code="alias_not_found")
        before = dict(row.targets)
        row.targets, row.set_by, row.reason, row.at = dict(targets), actor.name, why, now
        audit.record(session, at=now, actor=actor, action="alias.retarget", target=f"alias:{model}:{alias}", reason=why,
                     changes={"from": before, "to": dict(targets)})
        return {"model": model, "alias": alias, "targets": dict(targets)}


def deployer_views(session: Session) -> list[DeployerView]:
    return [DeployerView(d.id, d.name, d.tier, d.status, d.admitted_at) for d in session.scalars(select(Deployer))]


def _rollout_dict(session: Session, plan: Plan, r: Rollout, now: datetime, views: list[DeployerView] | None = None) -> dict[str, Any]:
    audience_size = 0
    if r.stage_index is not None and r.state in ("active", "paused") and r.stage_index < len(plan.stages):
        audience_size = len(admitted(plan.stages[r.stage_index].audience, views if views is not None else deployer_views(session)))
    return {
        "model": r.model_name, "version": r.version, "state": r.state, "stage": r.stage_name, "stage_index": r.stage_index,
        "stage_count": len(plan.stages),
        "channels": list(plan.stages[r.stage_index].channels) if r.stage_index is not None and r.stage_index < len(plan.stages) else [],
        "audience_size": audience_size,
        "stage_entered_at": r.stage_entered_at.isoformat() if r.stage_entered_at else None,
        "seconds_in_stage": int((now - r.stage_entered_at).total_seconds()) if r.stage_entered_at else None,
        "reason": r.state_reason, "updated_at": r.updated_at.isoformat(),
    }


def status(ctx: ServiceContext, actor: Actor, model: str | None = None) -> list[dict[str, Any]]:
    """Every version of ``model`` (or of every model): state, stage, audience size, time in stage."""
    actor.require("release_manager", "reviewer", "auditor", action="read rollout status")
    now = ctx.clock.now()
    with ctx.db.read() as session:
        models = [model] if model else list(session.scalars(select(Rollout.model_name).distinct()))
        views = deployer_views(session)
        out: list[dict[str, Any]] = []
        for m in sorted(models):
            plan = current_plan(session, m)
            rows = session.scalars(select(Rollout).where(Rollout.model_name == m).order_by(Rollout.version)).all()
            out.extend(_rollout_dict(session, plan, r, now, views) for r in rows)
            for alias in session.scalars(select(AliasTarget).where(AliasTarget.model_name == m).order_by(AliasTarget.alias)):
                out.append({"model": m, "alias": alias.alias, "targets": alias.targets})
        return out


def history(ctx: ServiceContext, actor: Actor, model: str, version: str) -> list[dict[str, Any]]:
    actor.require("release_manager", "reviewer", "auditor", action="read rollout history")
    with ctx.db.read() as session:
        r = get_rollout(session, model, version)
        rows = session.scalars(select(Transition).where(Transition.rollout_id == r.id).order_by(Transition.id)).all()
        return [{"action": t.action, "from_state": t.from_state, "from_stage": t.from_stage, "to_state": t.to_state,
                 "to_stage": t.to_stage, "actor": t.actor, "reason": t.reason, "verdict": t.verdict,
                 "override_reason": t.override_reason, "at": t.at.isoformat()} for t in rows]
