"""Deployers (organisations building on the model) and their members."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.services import audit
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.ids import new_id
from releasegate.store.models import Deployer, Member, UseCaseGrant

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def get_deployer(session: Session, ref: str) -> Deployer:
    """A deployer by id or name."""
    d = session.get(Deployer, ref) or session.scalar(select(Deployer).where(Deployer.name == ref))
    if d is None:
        raise NotFound(f"no deployer {ref!r}", code="deployer_not_found")
    return d


def deployer_dict(session: Session, d: Deployer) -> dict[str, Any]:
    members = session.scalars(select(Member).where(Member.deployer_id == d.id).order_by(Member.email)).all()
    grants = session.scalars(select(UseCaseGrant).where(UseCaseGrant.deployer_id == d.id, UseCaseGrant.revoked_at.is_(None))).all()
    return {
        "id": d.id, "name": d.name, "tier": d.tier, "status": d.status, "contact_email": d.contact_email,
        "created_at": d.created_at.isoformat(), "admitted_at": d.admitted_at.isoformat() if d.admitted_at else None,
        "status_reason": d.status_reason,
        "members": [{"email": m.email, "role": m.role} for m in members],
        "use_cases": sorted({f"{g.model_name}:{g.use_case}" for g in grants}),
    }


def create(ctx: ServiceContext, actor: Actor, *, name: str, contact_email: str | None = None) -> dict[str, Any]:
    """Register an organisation. It can use nothing until an application is approved."""
    actor.require("reviewer", action="register deployers")
    if not NAME_RE.match(name):
        raise InvalidInput(f"deployer name {name!r} must be 2-63 lowercase letters, digits or '-'", code="invalid_name")
    if contact_email is not None and not EMAIL_RE.match(contact_email):
        raise InvalidInput(f"{contact_email!r} is not an e-mail address", code="invalid_email")
    now = ctx.clock.now()
    try:
        with ctx.write() as session:
            if session.scalar(select(Deployer).where(Deployer.name == name)) is not None:
                raise Refused(f"a deployer named {name!r} already exists", code="deployer_exists")
            d = Deployer(id=new_id("dep"), name=name, status="pending", contact_email=contact_email, created_at=now)
            session.add(d)
            if contact_email:
                session.add(Member(deployer_id=d.id, email=contact_email.lower(), role="owner", created_at=now))
            session.flush()
            audit.record(session, at=now, actor=actor, action="deployer.create", target=f"deployer:{d.id}",
                         changes={"name": name, "contact_email": contact_email})
            return deployer_dict(session, d)
    except IntegrityError as exc:
        raise Refused(f"a deployer named {name!r} already exists", code="deployer_exists") from exc


def list_all(ctx: ServiceContext, actor: Actor) -> list[dict[str, Any]]:
    with ctx.db.read() as session:
        if actor.role == "deployer":
            rows = [get_deployer(session, actor.deployer_id or "")]
        else:
            actor.require("reviewer", "release_manager", "auditor", action="list deployers")
            rows = list(session.scalars(select(Deployer).order_by(Deployer.name)))
        return [deployer_dict(session, d) for d in rows]


def show(ctx: ServiceContext, actor: Actor, ref: str) -> dict[str, Any]:
    with ctx.db.read() as session:
        d = get_deployer(session, ref)
        actor.require_deployer(d.id, "reviewer", "release_manager", "auditor", action="read deployers")
        return deployer_dict(session, d)


def add_member(ctx: ServiceContext, actor: Actor, ref: str, *, email: str, role: str = "member") -> dict[str, Any]:
    if not EMAIL_RE.match(email):
        raise InvalidInput(f"{email!r} is not an e-mail address", code="invalid_email")
    if role not in ("owner", "member"):
        raise InvalidInput(f"member role must be owner or member, not {role!r}", code="invalid_role")
    now = ctx.clock.now()
    with ctx.write() as session:
        d = get_deployer(session, ref)
        actor.require_deployer(d.id, "reviewer", action="add members")
        email = email.lower()
        if session.scalar(select(Member).where(Member.deployer_id == d.id, Member.email == email)):
            raise Refused(f"{email} is already a member of {d.name}", code="member_exists")
        session.add(Member(deployer_id=d.id, email=email, role=role, created_at=now))
        audit.record(session, at=now, actor=actor, action="deployer.member_add", target=f"deployer:{d.id}", changes={"email": email, "role": role})
        session.flush()
        return deployer_dict(session, d)


def set_status(ctx: ServiceContext, actor: Actor, ref: str, status: str, *, reason: str | None) -> dict[str, Any]:
    """Suspend or reinstate a deployer (suspension cuts every key at once)."""
    actor.require("reviewer", "release_manager", action="suspend or reinstate deployers")
    if status not in ("suspended", "active", "waitlisted"):
        raise InvalidInput(f"status must be suspended, active or waitlisted, not {status!r}", code="invalid_status")
    if not reason or not reason.strip():
        raise InvalidInput("a reason is required", code="reason_required")
    now = ctx.clock.now()
    with ctx.write() as session:
        d = get_deployer(session, ref)
        if status != "suspended" and d.tier is None:
            raise Refused(f"{d.name} has no approved application yet; approve one instead", code="not_admitted")
        before = d.status
        if before == status:
            raise Refused(f"{d.name} is already {status}", code="no_change")
        d.status, d.status_reason = status, reason.strip()
        audit.record(session, at=now, actor=actor, action=f"deployer.{'suspend' if status == 'suspended' else 'reinstate'}",
                     target=f"deployer:{d.id}", reason=reason.strip(), changes={"from": before, "to": status})
        session.flush()
        return deployer_dict(session, d)
