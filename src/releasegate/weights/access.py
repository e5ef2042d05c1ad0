"""Access requests for weights: submit, vet automatically, review, grant with expiry, revoke.

An approved request is the licensee's grant for the model (every version the weights channel
opens), until ``expires_at`` (``grant_days`` after approval) or a revocation.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.plan.schema import WeightsPolicy
from releasegate.services import audit
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.ids import new_id
from releasegate.store.models import Deployer, Member
from releasegate.store.weights import AccessRequest
from releasegate.weights import forms, state

STATUSES = ("pending", "approved", "rejected", "revoked", "expired")
REVIEW_ROLES = ("reviewer",)


def effective_status(r: AccessRequest, now: datetime) -> str:
    """The stored status, except that an approved request past its expiry is ``expired``."""
    if r.status == "approved" and r.expires_at is not None and r.expires_at <= now:
        return "expired"
    return r.status


def request_dict(r: AccessRequest, now: datetime) -> dict[str, Any]:
    return {
        "id": r.id, "model": r.model_name, "principal_id": r.principal_id, "email": r.email, "fields": r.fields,
        "declared_use": r.declared_use, "status": effective_status(r, now), "vetting": r.vetting,
        "submitted_at": r.submitted_at.isoformat(), "decided_by": r.decided_by,
        "decided_at": r.decided_at.isoformat() if r.decided_at else None, "reason": r.decision_reason,
        "expires_at": r.expires_at.isoformat() if r.expires_at else None,
        "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
    }


def latest_request(session: Session, principal_id: str, model: str) -> AccessRequest | None:
    """The licensee's most recent request for ``model`` (which is what decides access)."""
    return session.scalar(select(AccessRequest).where(
        AccessRequest.principal_id == principal_id, AccessRequest.model_name == model,
    ).order_by(AccessRequest.number.desc()).limit(1))


def organisation_tier(session: Session, email: str | None, organisation: str | None) -> str | None:
    """The tier of the admitted deployer the requester belongs to (by member e-mail or organisation name)."""
    candidates: list[Deployer] = []
    if email:
        candidates.extend(session.scalars(select(Deployer).join(Member, Member.deployer_id == Deployer.id)
                                          .where(func.lower(Member.email) == email.lower())))
    if organisation:
        candidates.extend(session.scalars(select(Deployer).where(func.lower(Deployer.name) == organisation.lower())))
    for d in candidates:
        if d.status == "active" and d.tier:
            return d.tier
    return None


def _policy(session: Session, actor: Actor, model: str) -> tuple[state.ModelWeights, WeightsPolicy]:
    mw = state.load(session, model)
    if mw is None or not state.can_see(session, mw, actor):
        raise NotFound(f"no model {model!r} with downloadable weights", code="model_not_found")
    policy = mw.policy
    if policy is None:
        raise NotFound(f"{model} has no weights policy in its plan", code="weights_policy_missing")
    return mw, policy


def submit(ctx: ServiceContext, actor: Actor, model: str, *, fields: dict[str, Any], declared_use: str,
           ip: str | None = None) -> dict[str, Any]:
    """File a request; the plan's vetting rules approve it, queue it for review, or reject it at once."""
    if actor.role != "licensee" or actor.principal_id is None:
        raise Refused("only licensees request weights; ask the provider for a licensee token "
                      "(releasegate token create NAME --role licensee --email ...)", code="licensee_required")
    now = ctx.clock.now()
    with ctx.write() as session:
        _, policy = _policy(session, actor, model)
        clean, use = forms.validate_fields(policy.form, fields, declared_use)
        prior = latest_request(session, actor.principal_id, model)
        if prior is not None:
            status = effective_status(prior, now)
            if status == "pending":
                raise Refused(f"your request {prior.id} of {prior.submitted_at:%Y-%m-%d} is still pending review",
                              code="request_pending", details={"request": prior.id})
            if status == "approved":
                until = f" until {prior.expires_at:%Y-%m-%d}" if prior.expires_at else ""
                raise Refused(f"you already have access to {model}{until} (request {prior.id})", code="already_granted",
                              details={"request": prior.id})
        revoked_before = session.scalar(select(AccessRequest.id).where(
            AccessRequest.principal_id == actor.principal_id, AccessRequest.model_name == model,
            AccessRequest.status == "revoked").limit(1)) is not None
        vetting = forms.vet(policy, email=actor.email, country=forms.country_of(policy.form, clean),
                            organisation_tier=organisation_tier(session, actor.email, forms.organisation_of(clean)),
                            previously_revoked=revoked_before)
        r = AccessRequest(id=new_id("wrq"), number=(prior.number + 1) if prior else 1,
                          principal_id=actor.principal_id, model_name=model, email=actor.email,
                          fields=clean, declared_use=use, status="pending", vetting=vetting.to_dict(),
                          submitted_at=now, ip=ip)
        session.add(r)
        session.flush()
        audit.record(session, at=now, actor=actor, action="weights.request", target=f"weights_request:{r.id}",
                     changes={"model": model, "fields": clean, "declared_use": use[:500], "vetting": vetting.outcome})
        if vetting.outcome == "approved":
            _decide(session, r, "approved", by="vetting:auto", reason="approved automatically: "
                    + "; ".join(c["detail"] for c in vetting.checks if c["passed"]), policy=policy, now=now)
        elif vetting.outcome == "rejected":
            _decide(session, r, "rejected", by="vetting:auto", reason="not approved: " + "; ".join(vetting.failed),
                    policy=policy, now=now)
        return request_dict(r, now)


def _decide(session: Session, r: AccessRequest, status: str, *, by: str, reason: str | None,
            policy: WeightsPolicy | None, now: datetime) -> None:
    r.status, r.decided_by, r.decided_at, r.decision_reason = status, by, now, reason
    if status == "approved" and policy is not None and policy.grant_days:
        r.expires_at = now + timedelta(days=policy.grant_days)
    action = "weights.grant" if status == "approved" else "weights.reject"
    audit.record(session, at=now, actor=by, action=action, target=f"weights_request:{r.id}", reason=reason,
                 changes={"model": r.model_name, "principal": r.principal_id, "status": status,
                          "expires_at": r.expires_at.isoformat() if r.expires_at else None})


def _get(session: Session, actor: Actor, request_id: str, *, lock: bool = False) -> AccessRequest:
    q = select(AccessRequest).where(AccessRequest.id == request_id)
    if lock:
        q = q.with_for_update()
    r = session.scalar(q)
    # A licensee learns nothing of other licensees' requests: same answer as "no such request".
    if r is None or (not state.is_staff(actor) and r.principal_id != actor.principal_id):
        raise NotFound(f"no weights access request {request_id!r}", code="request_not_found")
    return r


def _reason(reason: str | None, what: str) -> str:
    if reason is None or not reason.strip():
        raise InvalidInput(f"a reason is required to {what}; the requester sees it", code="reason_required")
    return reason.strip()


def approve(ctx: ServiceContext, actor: Actor, request_id: str, *, reason: str | None = None) -> dict[str, Any]:
    """Grant a pending request for ``grant_days`` (from the model's current weights policy)."""
    actor.require(*REVIEW_ROLES, action="approve weights requests")
    now = ctx.clock.now()
    with ctx.write() as session:
        r = _get(session, actor, request_id, lock=True)
        if r.status != "pending":
            raise Refused(f"request {r.id} is {effective_status(r, now)}, not pending", code="request_not_pending")
        mw = state.load(session, r.model_name)
        _decide(session, r, "approved", by=actor.name, reason=(reason or "").strip() or "approved by a reviewer",
                policy=mw.policy if mw else None, now=now)
        return request_dict(r, now)


def reject(ctx: ServiceContext, actor: Actor, request_id: str, *, reason: str | None) -> dict[str, Any]:
    actor.require(*REVIEW_ROLES, action="reject weights requests")
    why = _reason(reason, "reject a request")
    now = ctx.clock.now()
    with ctx.write() as session:
        r = _get(session, actor, request_id, lock=True)
        if r.status != "pending":
            raise Refused(f"request {r.id} is {effective_status(r, now)}, not pending", code="request_not_pending")
        _decide(session, r, "rejected", by=actor.name, reason=why, policy=None, now=now)
        return request_dict(r, now)


def revoke(ctx: ServiceContext, actor: Actor, request_id: str, *, reason: str | None) -> dict[str, Any]:
    """End a grant at once; the licensee's next download is refused with ``reason``."""
    actor.require(*REVIEW_ROLES, action="revoke weights grants")
    why = _reason(reason, "revoke a grant")
    now = ctx.clock.now()
    with ctx.write() as session:
        r = _get(session, actor, request_id, lock=True)
        if effective_status(r, now) != "approved":
            raise Refused(f"request {r.id} is {effective_status(r, now)}; only a live grant can be revoked",
                          code="grant_not_active")
        r.status, r.revoked_at, r.decision_reason, r.decided_by = "revoked", now, why, actor.name
        audit.record(session, at=now, actor=actor, action="weights.revoke", target=f"weights_request:{r.id}", reason=why,
                     changes={"model": r.model_name, "principal": r.principal_id})
        return request_dict(r, now)


def list_requests(ctx: ServiceContext, actor: Actor, *, status: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
    """Staff see every request (the review queue with ``status=pending``); a licensee sees its own."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", code="invalid_status")
    now = ctx.clock.now()
    with ctx.db.read() as session:
        q = select(AccessRequest).order_by(AccessRequest.submitted_at, AccessRequest.id)
        if not state.is_staff(actor):
            if actor.principal_id is None:
                return []
            q = q.where(AccessRequest.principal_id == actor.principal_id)
        if model:
            q = q.where(AccessRequest.model_name == model)
        rows = [request_dict(r, now) for r in session.scalars(q)]
    return [r for r in rows if status is None or r["status"] == status]


def show(ctx: ServiceContext, actor: Actor, request_id: str) -> dict[str, Any]:
    with ctx.db.read() as session:
        return request_dict(_get(session, actor, request_id), ctx.clock.now())


def status(ctx: ServiceContext, actor: Actor, model: str) -> dict[str, Any]:
    """Whether ``actor`` may download ``model`` now, and the next step if not (what ``hf`` does not print)."""
    from releasegate.weights.gating import explain

    with ctx.db.read() as session:
        return explain(session, actor, model, now=ctx.clock.now(), public_url=ctx.settings.public_url)
