"""Applications: a deployer declares use cases from the plan's catalog; a reviewer decides."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.services import audit, webhooks
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.deployers import get_deployer
from releasegate.services.ids import new_id
from releasegate.services.plans import current_plan
from releasegate.store.models import Application, UseCaseGrant


def _dict(a: Application) -> dict[str, Any]:
    return {
        "id": a.id, "deployer_id": a.deployer_id, "model": a.model_name, "use_cases": a.use_cases,
        "description": a.description, "status": a.status, "submitted_by": a.submitted_by,
        "submitted_at": a.submitted_at.isoformat(), "reviewer": a.reviewer,
        "decided_at": a.decided_at.isoformat() if a.decided_at else None, "reason": a.decision_reason,
        "tier": a.tier, "approved_use_cases": a.approved_use_cases,
    }


def _get(session: Session, app_id: str) -> Application:
    a = session.get(Application, app_id)
    if a is None:
        raise NotFound(f"no application {app_id!r}", code="application_not_found")
    return a


def submit(ctx: ServiceContext, actor: Actor, *, deployer: str, model: str, use_cases: list[str], description: str = "") -> dict[str, Any]:
    """File an application for ``use_cases`` of ``model``; each must be in the plan's catalog."""
    if not use_cases:
        raise InvalidInput("declare at least one use case", code="use_cases_required")
    now = ctx.clock.now()
    with ctx.write() as session:
        d = get_deployer(session, deployer)
        actor.require_deployer(d.id, "reviewer", action="submit applications")
        plan = current_plan(session, model)
        unknown = [u for u in use_cases if u not in plan.use_cases]
        if unknown:
            raise InvalidInput(
                f"unknown use case {', '.join(map(repr, unknown))} for {model}; the catalog has: {', '.join(plan.use_cases)}",
                code="unknown_use_case", details={"catalog": list(plan.use_cases)},
            )
        pending = session.scalar(select(Application).where(
            Application.deployer_id == d.id, Application.model_name == model, Application.status == "submitted"))
        if pending is not None:
            raise Refused(f"{d.name} already has application {pending.id} waiting for review for {model}", code="application_pending")
        a = Application(id=new_id("app"), deployer_id=d.id, model_name=model, use_cases=sorted(set(use_cases)),
                        description=description, status="submitted", submitted_by=actor.name, submitted_at=now)
        session.add(a)
        session.flush()
        audit.record(session, at=now, actor=actor, action="application.submit", target=f"application:{a.id}",
                     changes={"deployer": d.id, "model": model, "use_cases": a.use_cases})
        webhooks.enqueue(session, "application.submitted", {"application": _dict(a), "deployer_name": d.name}, now)
        return _dict(a)


def approve(ctx: ServiceContext, actor: Actor, app_id: str, *, tier: str, use_cases: list[str] | None = None,
            waitlist: bool = False, reason: str | None = None) -> dict[str, Any]:
    """Approve into ``tier`` for ``use_cases`` (default: all declared); grants are audited."""
    actor.require("reviewer", action="review applications")
    now = ctx.clock.now()
    with ctx.write() as session:
        a = _get(session, app_id)
        if a.status != "submitted":
            raise Refused(f"application {app_id} is already {a.status}", code="application_decided")
        plan = current_plan(session, a.model_name)
        if tier not in plan.tiers:
            raise InvalidInput(f"unknown tier {tier!r}; the plan's tiers are: {', '.join(plan.tiers)}", code="unknown_tier")
        approved = sorted(set(use_cases or a.use_cases))
        not_declared = [u for u in approved if u not in a.use_cases]
        if not_declared:
            raise InvalidInput(f"{', '.join(not_declared)} were not declared in the application", code="use_case_not_declared")
        for u in approved:
            uc = plan.use_cases.get(u)
            if uc is None:
                raise InvalidInput(f"use case {u!r} is no longer in the catalog of {a.model_name}", code="unknown_use_case")
            if uc.requires_tier and uc.requires_tier != tier:
                raise Refused(f"use case {u!r} can only be approved for tier {uc.requires_tier!r}, not {tier!r}", code="use_case_requires_tier")
        d = get_deployer(session, a.deployer_id)
        a.status, a.reviewer, a.decided_at, a.decision_reason = "approved", actor.name, now, reason
        a.tier, a.approved_use_cases = tier, approved
        before = {"tier": d.tier, "status": d.status}
        d.tier = tier
        if d.status != "suspended":
            d.status = "waitlisted" if waitlist else "active"
        if d.admitted_at is None:
            d.admitted_at = now
        for u in approved:
            g = session.scalar(select(UseCaseGrant).where(UseCaseGrant.deployer_id == d.id, UseCaseGrant.model_name == a.model_name, UseCaseGrant.use_case == u))
            if g is None:
                session.add(UseCaseGrant(deployer_id=d.id, model_name=a.model_name, use_case=u, application_id=a.id, granted_by=actor.name, granted_at=now))
            else:
                g.revoked_at, g.application_id, g.granted_by, g.granted_at = None, a.id, actor.name, now
        audit.record(session, at=now, actor=actor, action="application.approve", target=f"application:{a.id}", reason=reason,
                     changes={"deployer": d.id, "tier": tier, "use_cases": approved, "deployer_before": before, "status": d.status})
        session.flush()
        return _dict(a)


def reject(ctx: ServiceContext, actor: Actor, app_id: str, *, reason: str | None) -> dict[str, Any]:
    """Reject with a reason the applicant sees."""
    actor.require("reviewer", action="review applications")
    if not reason or not reason.strip():
        raise InvalidInput("a rejection needs a reason the applicant will see", code="reason_required")
    now = ctx.clock.now()
    with ctx.write() as session:
        a = _get(session, app_id)
        if a.status != "submitted":
            raise Refused(f"application {app_id} is already {a.status}", code="application_decided")
        a.status, a.reviewer, a.decided_at, a.decision_reason = "rejected", actor.name, now, reason.strip()
        audit.record(session, at=now, actor=actor, action="application.reject", target=f"application:{a.id}", reason=reason.strip(),
                     changes={"deployer": a.deployer_id})
        session.flush()
        return _dict(a)


def show(ctx: ServiceContext, actor: Actor, app_id: str) -> dict[str, Any]:
    with ctx.db.read() as session:
        a = session.get(Application, app_id)
        if a is None or (actor.role == "deployer" and a.deployer_id != actor.deployer_id):
            raise NotFound(f"no application {app_id!r}", code="application_not_found")
        actor.require_deployer(a.deployer_id, "reviewer", "release_manager", "auditor", action="read applications")
        return _dict(a)


def list_all(ctx: ServiceContext, actor: Actor, *, status: str | None = None, deployer: str | None = None) -> list[dict[str, Any]]:
    with ctx.db.read() as session:
        q = select(Application).order_by(Application.submitted_at)
        if actor.role == "deployer":
            q = q.where(Application.deployer_id == actor.deployer_id)
        else:
            actor.require("reviewer", "release_manager", "auditor", action="list applications")
            if deployer:
                q = q.where(Application.deployer_id == get_deployer(session, deployer).id)
        if status:
            q = q.where(Application.status == status)
        return [_dict(a) for a in session.scalars(q)]
