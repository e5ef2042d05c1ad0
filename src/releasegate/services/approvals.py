"""Named approvals of a version entering a stage, and who asked for the promotion.

How "the requester cannot approve" works, simply:

- ``request_promotion`` records who asks for ``version`` to enter ``stage`` (one request per
  version and stage; asking again is refused while it stands). That person may not approve.
- Whoever runs ``promote`` is a requester too: ``evaluate_gate`` receives ``requested_by`` and
  the approvals criterion does not count that person's approval.

An approver is identified by e-mail (``Actor.email``, or an actor name that is an e-mail address,
as the local CLI's ``RELEASEGATE_ACTOR`` is) and must be listed under a role in the plan's ``roles``.
Approvals given before the version's latest halt or rollback do not count (see ``services.gates``);
the same person approving again renews such an approval.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from releasegate.errors import Forbidden, InvalidInput, NotFound, Refused
from releasegate.plan.schema import Plan
from releasegate.services import audit
from releasegate.services.context import STAFF_ROLES, Actor, ServiceContext
from releasegate.services.gates import approvals_valid_since
from releasegate.services.plans import current_plan
from releasegate.services.rollouts import get_rollout
from releasegate.store.evidence import Approval, PromotionRequest


def identity(actor: Actor) -> str | None:
    """The e-mail address an actor approves as, lower-cased; None if it has none."""
    if actor.email:
        return actor.email.strip().lower()
    if "@" in actor.name:
        return actor.name.strip().lower()
    return None


def roles_of(plan: Plan, email: str) -> list[str]:
    """The plan roles listing ``email``."""
    return sorted(role for role, people in plan.roles.items() if email in {p.lower() for p in people})


def _stage_index(plan: Plan, stage: str) -> int:
    try:
        return plan.stage_index(stage)
    except KeyError:
        raise NotFound(f"{plan.model} has no stage {stage!r}; stages: {', '.join(s.name for s in plan.stages)}",
                       code="stage_not_found") from None


def _future_stage(plan: Plan, rollout_stage: int | None, stage: str, model: str, version: str) -> int:
    index = _stage_index(plan, stage)
    if rollout_stage is not None and index <= rollout_stage:
        raise Refused(f"{model} {version} has already entered stage {stage!r}; approvals are for stages ahead of it",
                      code="stage_already_entered")
    return index


def request_promotion(ctx: ServiceContext, actor: Actor, model: str, version: str, stage: str, *,
                      comment: str = "") -> dict[str, Any]:
    """Record that ``actor`` asks for ``version`` to enter ``stage``; that person cannot approve it."""
    actor.require("release_manager", action="request a promotion")
    who = identity(actor) or actor.name
    now = ctx.clock.now()
    try:
        with ctx.write() as session:
            plan = current_plan(session, model)
            r = get_rollout(session, model, version)
            _future_stage(plan, r.stage_index, stage, model, version)
            prior = session.scalar(select(PromotionRequest).where(
                PromotionRequest.model_name == model, PromotionRequest.version == version, PromotionRequest.stage == stage))
            if prior is not None:
                raise Refused(f"{prior.requested_by} already requested {model} {version} into {stage!r} at {prior.at.isoformat()}",
                              code="promotion_already_requested")
            session.add(PromotionRequest(model_name=model, version=version, stage=stage, requested_by=who,
                                         comment=comment, at=now))
            audit.record(session, at=now, actor=actor, action="promotion.request", target=f"version:{model}:{version}",
                         reason=comment or None, changes={"stage": stage, "requested_by": who})
            return {"model": model, "version": version, "stage": stage, "requested_by": who, "at": now.isoformat()}
    except IntegrityError as exc:
        raise Refused(f"a promotion of {model} {version} into {stage!r} was already requested",
                      code="promotion_already_requested") from exc


def approve(ctx: ServiceContext, actor: Actor, model: str, version: str, stage: str, *, comment: str = "") -> dict[str, Any]:
    """Record ``actor``'s approval of ``version`` entering ``stage``; audited.

    Refused unless the actor is staff, has an e-mail listed under a plan role, is not the
    promotion's requester, and has not approved this already.
    """
    if actor.role not in STAFF_ROLES:
        raise Forbidden(f"{actor.name} ({actor.role}) may not approve promotions", code="forbidden_role")
    email = identity(actor)
    if email is None:
        raise InvalidInput(f"{actor.name} has no e-mail address to approve as; approvals are by named people "
                           "(set RELEASEGATE_ACTOR=you@example.org for the local CLI)", code="approver_unknown")
    now = ctx.clock.now()
    try:
        with ctx.write() as session:
            plan = current_plan(session, model)
            r = get_rollout(session, model, version)
            _future_stage(plan, r.stage_index, stage, model, version)
            held = roles_of(plan, email)
            if not held:
                raise Forbidden(f"{email} holds no approval role in the plan of {model}; roles: "
                                + ", ".join(f"{k}: {', '.join(v)}" for k, v in plan.roles.items()),
                                code="not_an_approver", details={"email": email})
            req = session.scalar(select(PromotionRequest).where(
                PromotionRequest.model_name == model, PromotionRequest.version == version, PromotionRequest.stage == stage))
            if req is not None and req.requested_by.lower() in (email, actor.name.lower()):
                raise Refused(f"{email} requested this promotion and so cannot approve it; someone else must",
                              code="requester_cannot_approve")
            row = session.scalar(select(Approval).where(Approval.model_name == model, Approval.version == version,
                                                        Approval.stage == stage, Approval.approver_email == email))
            valid_since = approvals_valid_since(session, r)
            if row is not None and (valid_since is None or row.at > valid_since):
                raise Refused(f"{email} has already approved {model} {version} into {stage!r}", code="already_approved")
            action = "approval.grant"
            if row is None:
                row = Approval(model_name=model, version=version, stage=stage, approver_name=actor.name,
                               approver_email=email, role=",".join(held), comment=comment, at=now)
                session.add(row)
            else:  # given before the latest halt or rollback, so it no longer counts: renew it
                action = "approval.renew"
                row.approver_name, row.role, row.comment, row.at = actor.name, ",".join(held), comment, now
            session.flush()
            audit.record(session, at=now, actor=actor, action=action, target=f"version:{model}:{version}",
                         reason=comment or None, changes={"stage": stage, "approver": email, "roles": held})
            return approval_dict(row)
    except IntegrityError as exc:
        raise Refused(f"{email} has already approved {model} {version} into {stage!r}", code="already_approved") from exc


def approval_dict(a: Approval) -> dict[str, Any]:
    return {"id": a.id, "model": a.model_name, "version": a.version, "stage": a.stage, "approver": a.approver_email,
            "approver_name": a.approver_name, "roles": a.role.split(","), "comment": a.comment, "at": a.at.isoformat()}


def list_approvals(ctx: ServiceContext, actor: Actor, model: str, version: str | None = None) -> list[dict[str, Any]]:
    actor.require("release_manager", "reviewer", "auditor", action="read approvals")
    with ctx.db.read() as session:
        q = select(Approval).where(Approval.model_name == model)
        if version is not None:
            q = q.where(Approval.version == version)
        return [approval_dict(a) for a in session.scalars(q.order_by(Approval.at, Approval.id))]
