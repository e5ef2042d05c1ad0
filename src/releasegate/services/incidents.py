"""Incidents: something went wrong in use of a model version. Reported, triaged, mitigated, closed.

A deployer reports only for itself and sees only its own incidents; staff report for anyone;
a detector (an automation acting as release manager) reports with ``source="detector"``.
The controller reads open incidents against each stage's ``halt_on`` rules.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from releasegate.errors import Forbidden, InvalidInput, NotFound, Refused
from releasegate.services import audit, webhooks
from releasegate.services.context import STAFF_ROLES, Actor, ServiceContext
from releasegate.services.deployers import get_deployer
from releasegate.services.ids import new_id
from releasegate.services.plans import current_plan
from releasegate.services.rollouts import get_rollout
from releasegate.store.evidence import Incident

SEVERITIES = ("low", "medium", "high", "critical")
SOURCES = ("deployer", "staff", "detector")
STATUSES = ("open", "triaged", "mitigated", "closed")
#: The lifecycle: forward one step, close from anywhere, reopen what was mitigated or closed.
NEXT_STATUSES: dict[str, tuple[str, ...]] = {
    "open": ("triaged", "closed"),
    "triaged": ("mitigated", "closed"),
    "mitigated": ("closed", "open"),
    "closed": ("open",),
}
UNRESOLVED = ("open", "triaged")


def incident_dict(i: Incident) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {"id": i.id, "model": i.model_name, "version": i.version, "stage": i.stage, "deployer_id": i.deployer_id,
            "severity": i.severity, "status": i.status, "title": i.title, "description": i.description,
            "source": i.source, "reported_by": i.reported_by, "created_at": iso(i.created_at),
            "updated_at": iso(i.updated_at), "triaged_at": iso(i.triaged_at), "mitigated_at": iso(i.mitigated_at),
            "closed_at": iso(i.closed_at)}


def report(
    ctx: ServiceContext,
    actor: Actor,
    model: str,
    version: str,
    *,
    severity: str,
    title: str,
    description: str = "",
    deployer: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Record an incident against the version's current stage; audited.

    Deployers report for themselves only (``source`` is ``deployer``); staff default to
    ``staff``; ``detector`` is for automations holding the release_manager role.
    """
    if severity not in SEVERITIES:
        raise InvalidInput(f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}", code="invalid_severity")
    if not title or not title.strip():
        raise InvalidInput("an incident needs a title", code="title_required")
    if actor.role == "deployer":
        if source not in (None, "deployer"):
            raise Forbidden(f"{actor.name} reports incidents as its deployer only", code="forbidden_source")
        source = "deployer"
        if deployer is not None and deployer != actor.deployer_id:
            actor.require_deployer(deployer)  # raises NotFound: a deployer learns nothing of others
        deployer = actor.deployer_id
    else:
        source = source or "staff"
        if source not in SOURCES:
            raise InvalidInput(f"source must be one of {', '.join(SOURCES)}, not {source!r}", code="invalid_source")
        actor.require(*(("release_manager",) if source == "detector" else ("release_manager", "reviewer")),
                      action=f"report incidents as {source}")
    now = ctx.clock.now()
    with ctx.write() as session:
        current_plan(session, model)
        r = get_rollout(session, model, version)
        deployer_id = get_deployer(session, deployer).id if deployer else None
        inc = Incident(
            id=new_id("inc"), model_name=model, version=version, stage=r.stage_name, deployer_id=deployer_id,
            severity=severity, status="open", title=title.strip(), description=description, source=source,
            reported_by=actor.name, created_at=now, updated_at=now,
        )
        session.add(inc)
        session.flush()
        audit.record(session, at=now, actor=actor, action="incident.report", target=f"incident:{inc.id}",
                     changes={"model": model, "version": version, "stage": r.stage_name, "deployer_id": deployer_id,
                              "severity": severity, "source": source, "title": inc.title})
        webhooks.enqueue(session, "incident.opened", {"incident": incident_dict(inc)}, now)
        return incident_dict(inc)


def transition(ctx: ServiceContext, actor: Actor, incident_id: str, status: str, *, reason: str | None,
               severity: str | None = None) -> dict[str, Any]:
    """Move an incident along its lifecycle (see ``NEXT_STATUSES``), optionally re-grading it; audited."""
    actor.require("release_manager", "reviewer", action="triage incidents")
    if status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, not {status!r}", code="invalid_status")
    if severity is not None and severity not in SEVERITIES:
        raise InvalidInput(f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}", code="invalid_severity")
    if not reason or not reason.strip():
        raise InvalidInput("a reason is required to change an incident", code="reason_required")
    now = ctx.clock.now()
    with ctx.write() as session:
        inc = session.get(Incident, incident_id, with_for_update=True)
        if inc is None:
            raise NotFound(f"no incident {incident_id!r}", code="incident_not_found")
        if status not in NEXT_STATUSES[inc.status]:
            raise Refused(f"incident {inc.id} is {inc.status}; it can move to {' or '.join(NEXT_STATUSES[inc.status])}, not {status}",
                          code="illegal_incident_transition", details={"status": inc.status, "requested": status})
        before = {"status": inc.status, "severity": inc.severity}
        inc.status, inc.updated_at = status, now
        if severity is not None:
            inc.severity = severity
        if status == "triaged":
            inc.triaged_at = now
        elif status == "mitigated":
            inc.mitigated_at = now
        elif status == "closed":
            inc.closed_at = now
        audit.record(session, at=now, actor=actor, action=f"incident.{status}", target=f"incident:{inc.id}",
                     reason=reason.strip(), changes={"from": before, "to": {"status": inc.status, "severity": inc.severity}})
        return incident_dict(inc)


def list_incidents(ctx: ServiceContext, actor: Actor, model: str | None = None, *, version: str | None = None,
                   status: str | None = None) -> list[dict[str, Any]]:
    """Incidents, newest first. A deployer sees only those it reported or that concern it."""
    if actor.role not in STAFF_ROLES and actor.role != "deployer":
        actor.require("release_manager", "reviewer", "auditor", action="read incidents")
    with ctx.db.read() as session:
        q = select(Incident)
        if actor.role == "deployer":
            q = q.where(Incident.deployer_id == actor.deployer_id)
        if model is not None:
            q = q.where(Incident.model_name == model)
        if version is not None:
            q = q.where(Incident.version == version)
        if status is not None:
            q = q.where(Incident.status == status)
        return [incident_dict(i) for i in session.scalars(q.order_by(Incident.created_at.desc(), Incident.id))]
