"""API keys: issued once, stored hashed, bound to one deployer, model and approved use case."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from releasegate import credentials
from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.services import audit
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.deployers import get_deployer
from releasegate.services.ids import new_id
from releasegate.store.models import ApiKey, UseCaseGrant


def key_dict(k: ApiKey, now: datetime) -> dict[str, Any]:
    if k.revoked_at is not None:
        state = "revoked"
    elif k.expires_at is not None and k.expires_at <= now:
        state = "expired"
    else:
        state = "active"
    return {
        "id": k.id, "hint": f"rgk_{k.lookup[:4]}…", "deployer_id": k.deployer_id, "model": k.model_name,
        "use_case": k.use_case, "name": k.name, "state": state, "created_at": k.created_at.isoformat(),
        "created_by": k.created_by, "expires_at": k.expires_at.isoformat() if k.expires_at else None,
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None, "rotated_from": k.rotated_from,
        "rotated_to": k.rotated_to,
    }


def _get(session: Session, actor: Actor, key_id: str, *, lock: bool = False) -> ApiKey:
    k = session.get(ApiKey, key_id, with_for_update=lock)
    if k is None or (actor.role == "deployer" and k.deployer_id != actor.deployer_id):
        raise NotFound(f"no key {key_id!r}", code="key_not_found")
    return k


def _insert(session: Session, *, deployer_id: str, model: str, use_case: str, name: str, actor: Actor,
            now: datetime, expires_at: datetime | None, rotated_from: str | None = None) -> tuple[ApiKey, str]:
    cred = credentials.generate("rgk")
    k = ApiKey(id=new_id("key"), lookup=cred.lookup, secret_hash=cred.secret_hash, deployer_id=deployer_id,
               model_name=model, use_case=use_case, name=name, created_at=now, created_by=actor.name,
               expires_at=expires_at, rotated_from=rotated_from)
    session.add(k)
    session.flush()
    return k, cred.value


def issue(ctx: ServiceContext, actor: Actor, *, deployer: str, model: str, use_case: str, name: str = "",
          expires_in: timedelta | None = None) -> dict[str, Any]:
    """A new key for an approved use case. The secret is in the result once and never again."""
    now = ctx.clock.now()
    if expires_in is not None and expires_in.total_seconds() <= 0:
        raise InvalidInput("expiry must be in the future", code="invalid_expiry")
    with ctx.write() as session:
        d = get_deployer(session, deployer)
        actor.require_deployer(d.id, "reviewer", action="issue API keys")
        if d.status == "suspended":
            raise Refused(f"{d.name} is suspended: {d.status_reason or 'no reason recorded'}", code="deployer_suspended")
        grant = session.scalar(select(UseCaseGrant).where(
            UseCaseGrant.deployer_id == d.id, UseCaseGrant.model_name == model,
            UseCaseGrant.use_case == use_case, UseCaseGrant.revoked_at.is_(None)))
        if grant is None:
            raise Refused(f"{d.name} is not approved for use case {use_case!r} of {model}; apply for it first",
                          code="use_case_not_approved")
        k, secret = _insert(session, deployer_id=d.id, model=model, use_case=use_case, name=name, actor=actor, now=now,
                            expires_at=now + expires_in if expires_in else None)
        audit.record(session, at=now, actor=actor, action="key.issue", target=f"key:{k.id}",
                     changes={"deployer": d.id, "model": model, "use_case": use_case, "expires_at": k.expires_at})
        return {**key_dict(k, now), "key": secret}


def revoke(ctx: ServiceContext, actor: Actor, key_id: str, *, reason: str | None = None) -> dict[str, Any]:
    now = ctx.clock.now()
    with ctx.write() as session:
        k = _get(session, actor, key_id, lock=True)
        actor.require_deployer(k.deployer_id, "reviewer", "release_manager", action="revoke API keys")
        if k.revoked_at is not None:
            raise Refused(f"key {key_id} is already revoked", code="key_revoked")
        k.revoked_at, k.revoked_reason = now, reason
        audit.record(session, at=now, actor=actor, action="key.revoke", target=f"key:{k.id}", reason=reason,
                     changes={"deployer": k.deployer_id})
        return key_dict(k, now)


def rotate(ctx: ServiceContext, actor: Actor, key_id: str, *, grace: timedelta = timedelta(hours=24)) -> dict[str, Any]:
    """A new key with the same binding; the old one stays valid for ``grace``, then expires."""
    if grace.total_seconds() < 0:
        raise InvalidInput("grace period cannot be negative", code="invalid_grace")
    now = ctx.clock.now()
    with ctx.write() as session:
        old = _get(session, actor, key_id, lock=True)
        actor.require_deployer(old.deployer_id, "reviewer", action="rotate API keys")
        if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
            raise Refused(f"key {key_id} is no longer valid; issue a new key instead", code="key_inactive")
        if old.rotated_to is not None:
            raise Refused(f"key {key_id} was already rotated to {old.rotated_to}", code="key_rotated")
        new, secret = _insert(session, deployer_id=old.deployer_id, model=old.model_name, use_case=old.use_case,
                              name=old.name, actor=actor, now=now, expires_at=old.expires_at, rotated_from=old.id)
        grace_end = now + grace
        old.expires_at = min(old.expires_at, grace_end) if old.expires_at else grace_end
        old.rotated_to = new.id
        audit.record(session, at=now, actor=actor, action="key.rotate", target=f"key:{old.id}",
                     changes={"new_key": new.id, "old_expires_at": old.expires_at})
        return {**key_dict(new, now), "key": secret, "old_key": key_dict(old, now)}


def list_keys(ctx: ServiceContext, actor: Actor, *, deployer: str | None = None) -> list[dict[str, Any]]:
    now = ctx.clock.now()
    with ctx.db.read() as session:
        q = select(ApiKey).order_by(ApiKey.created_at)
        if actor.role == "deployer":
            q = q.where(ApiKey.deployer_id == actor.deployer_id)
        else:
            actor.require("reviewer", "release_manager", "auditor", action="list API keys")
            if deployer:
                q = q.where(ApiKey.deployer_id == get_deployer(session, deployer).id)
        return [key_dict(k, now) for k in session.scalars(q)]
