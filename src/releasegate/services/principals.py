"""People and automation holding admin-API bearer tokens (``rgt_…``), each with one role."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from releasegate import credentials
from releasegate.errors import InvalidInput, NotFound, Refused, Unauthenticated
from releasegate.services import audit
from releasegate.services.context import ROLES, Actor, ServiceContext
from releasegate.services.deployers import EMAIL_RE, get_deployer
from releasegate.services.ids import new_id
from releasegate.store.models import Principal


def _dict(p: Principal) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "role": p.role, "email": p.email, "deployer_id": p.deployer_id,
            "created_at": p.created_at.isoformat(), "revoked": p.revoked_at is not None}


def _create(session: Session, ctx: ServiceContext, actor: Actor | str, *, name: str, role: str,
            email: str | None, deployer_id: str | None) -> dict[str, Any]:
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}; roles are: {', '.join(ROLES)}", code="invalid_role")
    if role == "deployer" and not deployer_id:
        raise InvalidInput("a deployer token must name its deployer", code="deployer_required")
    if role != "deployer" and deployer_id:
        raise InvalidInput("only deployer tokens belong to a deployer", code="invalid_role")
    if email is not None and not EMAIL_RE.match(email):
        raise InvalidInput(f"{email!r} is not an e-mail address", code="invalid_email")
    if not name.strip():
        raise InvalidInput("a token needs a name", code="name_required")
    if session.scalar(select(Principal).where(Principal.name == name)) is not None:
        raise Refused(f"a token named {name!r} already exists", code="principal_exists")
    now = ctx.clock.now()
    cred = credentials.generate("rgt")
    p = Principal(id=new_id("prn"), name=name, role=role, email=email.lower() if email else None, deployer_id=deployer_id,
                  lookup=cred.lookup, secret_hash=cred.secret_hash, created_at=now,
                  created_by=actor if isinstance(actor, str) else actor.name)
    session.add(p)
    session.flush()
    audit.record(session, at=now, actor=actor, action="token.create", target=f"principal:{p.id}",
                 changes={"name": name, "role": role, "deployer": deployer_id})
    return {**_dict(p), "token": cred.value}


def bootstrap_admin(ctx: ServiceContext, *, name: str = "admin", email: str | None = None) -> dict[str, Any] | None:
    """The first admin token, or None if any principal exists already."""
    with ctx.write() as session:
        if (session.scalar(select(func.count()).select_from(Principal)) or 0) > 0:
            return None
        return _create(session, ctx, "releasegate-init", name=name, role="admin", email=email, deployer_id=None)


def create(ctx: ServiceContext, actor: Actor, *, name: str, role: str, email: str | None = None,
           deployer: str | None = None) -> dict[str, Any]:
    if role == "deployer" and actor.role == "deployer":
        pass  # a deployer may mint tokens for its own organisation
    else:
        actor.require(action="create tokens")
    with ctx.write() as session:
        deployer_id = None
        if deployer:
            deployer_id = get_deployer(session, deployer).id
            actor.require_deployer(deployer_id, action="create tokens")
        return _create(session, ctx, actor, name=name, role=role, email=email, deployer_id=deployer_id)


def revoke(ctx: ServiceContext, actor: Actor, ref: str) -> dict[str, Any]:
    actor.require(action="revoke tokens")
    now = ctx.clock.now()
    with ctx.write() as session:
        p = session.get(Principal, ref) or session.scalar(select(Principal).where(Principal.name == ref))
        if p is None:
            raise NotFound(f"no token {ref!r}", code="principal_not_found")
        if p.revoked_at is not None:
            raise Refused(f"token {p.name} is already revoked", code="principal_revoked")
        p.revoked_at = now
        audit.record(session, at=now, actor=actor, action="token.revoke", target=f"principal:{p.id}")
        return _dict(p)


def list_all(ctx: ServiceContext, actor: Actor) -> list[dict[str, Any]]:
    actor.require("auditor", action="list tokens")
    with ctx.db.read() as session:
        return [_dict(p) for p in session.scalars(select(Principal).order_by(Principal.created_at))]


def authenticate(session: Session, token: str) -> Actor:
    """The actor a bearer token stands for; Unauthenticated with one message for every failure."""
    bad = Unauthenticated("the bearer token is not valid; create one with `releasegate token create`", code="invalid_token")
    parsed = credentials.parse(token.strip(), "rgt")
    if parsed is None:
        raise bad
    p = session.scalar(select(Principal).where(Principal.lookup == parsed.lookup))
    if p is None or not credentials.matches(parsed.value, p.secret_hash) or p.revoked_at is not None:
        raise bad
    if p.role == "deployer" and p.deployer_id is not None:
        d = get_deployer(session, p.deployer_id)
        if d.status == "suspended":
            raise Unauthenticated(f"{d.name} is suspended: {d.status_reason or ''}".strip(), code="deployer_suspended")
    return Actor(name=p.name, role=p.role, deployer_id=p.deployer_id, email=p.email, principal_id=p.id)
