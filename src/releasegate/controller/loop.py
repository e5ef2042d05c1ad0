"""The controller: an idempotent reconciliation step over stored state, and a loop that repeats it.

``reconcile`` reads every serving version, judges its current stage's ``halt_on`` rules and the
gate into its next stage, and acts through the ordinary services as the actor ``controller``:

- halt / pause / rollback the version (the strongest action when several rules fire; a halted
  version is never touched, and a rollback from the first stage becomes a halt);
- suspend a deployer (``suspend_deployer``) for per-deployer rules;
- promote when the next stage says ``auto_promote: true`` and every criterion passes;
- otherwise, once per stage stint, announce that the version is ready for approval or promotion.

Idempotent: every action's reason carries its cause as ``[cause …]`` and is audited by the service
in the same transaction, so the controller checks the audit trail and never acts twice for one
cause (a person who resumes a version is not overruled for the same reason). Only one controller
acts at a time: a PostgreSQL advisory lock, or an exclusive lock file beside a SQLite database.
"""

from __future__ import annotations

import fcntl
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from releasegate.controller.rules import (
    DeployerWindow,
    HaltFacts,
    Trigger,
    WindowStats,
    judge_halt_rules,
    rule_window,
    strongest,
)
from releasegate.detectors.settings import sample_rates
from releasegate.errors import ReleasegateError
from releasegate.plan.schema import ApprovalsCriterion, Plan, criterion_kind, criterion_spec
from releasegate.policy.gates import IncidentFact
from releasegate.policy.rollout import SERVING_STATES
from releasegate.services import audit, deployers, rollouts, webhooks
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.gates import (
    evaluate_gate,
    floor_hour,
    incident_fact,
    next_stage,
)
from releasegate.services.plans import current_plan, list_models
from releasegate.store.evidence import Incident
from releasegate.store.models import AuditEntry, Deployer, Rollout
from releasegate.store.requests import RequestBucket

CONTROLLER = Actor(name="controller", role="release_manager")
_LOCK_SALT = "releasegate-controller"


@dataclass(frozen=True)
class Action:
    """One thing the controller did (``done``) or decided not to do (``note`` says why)."""

    kind: str
    model: str
    version: str
    target: str
    cause: str
    reason: str
    done: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------- locking


@contextmanager
def controller_lock(ctx: ServiceContext) -> Iterator[bool]:
    """Yield True if this process may act now (it holds the store's controller lock), else False."""
    if ctx.db.is_postgresql:
        key = zlib.crc32(f"{_LOCK_SALT}:{ctx.db.url}".encode()) - 2**31
        with ctx.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    path = _sqlite_lock_path(ctx)
    if path is None:  # an in-memory database is private to this process
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _sqlite_lock_path(ctx: ServiceContext) -> str | None:
    db_path = ctx.db.engine.url.database
    if not db_path or db_path == ":memory:":
        return None
    return f"{db_path}.controller.lock"


# ---------------------------------------------------------------------------- facts


def _windows(session: Session, r: Rollout, windows: set[timedelta], now: datetime) -> dict[timedelta, WindowStats]:
    if not windows:
        return {}
    b = RequestBucket
    out: dict[timedelta, WindowStats] = {}
    for window in windows:
        since = floor_hour(now - window)
        # Rows with no known deployer are requests refused before identification: never served, never flagged.
        where = (b.model == r.model_name, b.version == r.version, b.stage == r.stage_name, b.bucket_start >= since,
                 b.deployer_id != "")
        requests, errors = session.execute(
            select(func.coalesce(func.sum(b.requests), 0), func.coalesce(func.sum(b.errors), 0)).where(*where)).one()
        flagged: dict[str, int] = {}
        for (counts,) in session.execute(select(b.flagged).where(*where, b.flagged.is_not(None))):
            for detector, n in (counts or {}).items():
                flagged[detector] = flagged.get(detector, 0) + int(n)
        per_deployer = session.execute(
            select(b.deployer_id, func.sum(b.requests), func.sum(b.scope_violations)).where(*where)
            .group_by(b.deployer_id).order_by(b.deployer_id)).all()
        out[window] = WindowStats(
            since=since, requests=int(requests), errors=int(errors), flagged=flagged,
            deployers=tuple(DeployerWindow(str(d), int(n or 0), int(v or 0)) for d, n, v in per_deployer if d),
        )
    return out


def halt_facts(session: Session, plan: Plan, r: Rollout, now: datetime) -> HaltFacts:
    """What the current stage's halt rules need: unresolved incidents and windowed request aggregates."""
    assert r.stage_index is not None
    stage = plan.stages[r.stage_index]
    kinds = {criterion_kind(rule) for rule in stage.halt_on}
    incidents: tuple[IncidentFact, ...] = ()
    if "incident" in kinds:
        incidents = tuple(incident_fact(i) for i in session.scalars(select(Incident).where(
            Incident.model_name == r.model_name, Incident.version == r.version,
            Incident.status.in_(("open", "triaged"))).order_by(Incident.created_at, Incident.id)))
    windows = {w for w in (rule_window(rule) for rule in stage.halt_on) if w is not None}
    return HaltFacts(model=r.model_name, version=r.version, stage=stage.name, now=now, incidents=incidents,
                     windows=_windows(session, r, windows, now), detector_samples=sample_rates(plan.detectors))


def already_acted(session: Session, target: str, cause: str, actor: str = CONTROLLER.name) -> bool:
    """Has the controller already acted on ``target`` for ``cause``? (The audit trail says.)"""
    hits = session.scalar(select(func.count()).where(
        AuditEntry.target == target, AuditEntry.actor == actor,
        AuditEntry.reason.contains(f"[cause {cause}]", autoescape=True)))
    return bool(hits)


# ---------------------------------------------------------------------------- acting


@dataclass(frozen=True)
class _Seen:
    """The scalars of a rollout as read, usable after its session has closed."""

    id: int
    model: str
    version: str
    state: str
    stage_index: int | None

    @property
    def target(self) -> str:
        return f"version:{self.model}:{self.version}"


def _seen(r: Rollout) -> _Seen:
    return _Seen(r.id, r.model_name, r.version, r.state, r.stage_index)


def _act_on_version(ctx: ServiceContext, actor: Actor, r: _Seen, trigger: Trigger) -> Action:
    action: str = trigger.action
    reason = f"{trigger.reason} [cause {trigger.cause}]"
    if action == "rollback" and r.stage_index == 0:
        action, reason = "halt", f"{reason}; it is in its first stage, so it is halted instead of rolled back"
    if r.state == "paused" and action == "pause":
        return Action(action, r.model, r.version, r.target, trigger.cause, trigger.reason, done=False, note="already paused")
    try:
        rollouts.transition(ctx, actor, r.model, r.version, action, reason=reason)
    except ReleasegateError as exc:
        return Action(action, r.model, r.version, r.target, trigger.cause, trigger.reason, done=False, note=exc.message)
    return Action(action, r.model, r.version, r.target, trigger.cause, reason)


def _suspend(ctx: ServiceContext, actor: Actor, r: _Seen, trigger: Trigger) -> Action:
    target = f"deployer:{trigger.deployer_id}"
    reason = f"{trigger.reason} [cause {trigger.cause}]"
    try:
        deployers.set_status(ctx, actor, trigger.deployer_id or "", "suspended", reason=reason)
    except ReleasegateError as exc:
        return Action("suspend_deployer", r.model, r.version, target, trigger.cause, trigger.reason, done=False, note=exc.message)
    return Action("suspend_deployer", r.model, r.version, target, trigger.cause, reason)


def _halt_rules(ctx: ServiceContext, actor: Actor, plan: Plan, rollout_id: int, now: datetime) -> list[Action]:
    with ctx.db.read() as session:
        r = session.get(Rollout, rollout_id)
        if r is None or r.state not in SERVING_STATES or r.stage_index is None:
            return []
        seen = _seen(r)
        triggers = judge_halt_rules(plan.stages[r.stage_index].halt_on, halt_facts(session, plan, r, now))
        fresh_version = [t for t in triggers
                         if t.action != "suspend_deployer" and not already_acted(session, seen.target, t.cause, actor.name)]
        fresh_deployer: list[Trigger] = []
        for t in triggers:
            if t.action != "suspend_deployer" or t.deployer_id is None:
                continue
            d = session.get(Deployer, t.deployer_id)
            if d is not None and d.status != "suspended" and not already_acted(session, f"deployer:{d.id}", t.cause, actor.name):
                fresh_deployer.append(t)
    actions = [_suspend(ctx, actor, seen, t) for t in fresh_deployer]
    chosen = strongest(fresh_version)
    if chosen is not None:
        actions.append(_act_on_version(ctx, actor, seen, chosen))
    return actions


def _gate(ctx: ServiceContext, actor: Actor, plan: Plan, rollout_id: int, now: datetime) -> list[Action]:
    with ctx.db.read() as session:
        r = session.get(Rollout, rollout_id)
        if r is None or r.state != "active" or r.stage_index is None or r.stage_entered_at is None:
            return []
        nxt = next_stage(plan, r)
        if nxt is None:
            return []
        seen = _seen(r)
        stage = plan.stages[nxt]
        verdict = evaluate_gate(session, plan, r, nxt, now=now, requested_by=actor.name)
        if stage.auto_promote and verdict.passed:
            cause = None
        else:
            approvals = [res for c, res in zip(stage.gate, verdict.results, strict=True)
                         if isinstance(criterion_spec(c), ApprovalsCriterion)]
            if any(res.outcome != "pass" for res in verdict.results if res not in approvals):
                return []
            cause = f"ready:{stage.name}:{r.stage_entered_at.isoformat()}"
            if already_acted(session, seen.target, cause, actor.name):
                return []
    if cause is None:
        reason = f"every criterion of the gate into {stage.name!r} passes and the stage is auto_promote"
        try:
            rollouts.transition(ctx, actor, seen.model, seen.version, "promote", reason=reason)
        except ReleasegateError as exc:
            return [Action("promote", seen.model, seen.version, seen.target, f"promote:{stage.name}", reason, done=False, note=exc.message)]
        return [Action("promote", seen.model, seen.version, seen.target, f"promote:{stage.name}", reason)]
    waiting = [res.message for res in verdict.results if res.outcome != "pass"]
    reason = (f"{seen.version} is ready for approval into {stage.name!r}: " + "; ".join(waiting) if waiting
              else f"{seen.version} passes every criterion of the gate into {stage.name!r}; a release manager may promote it")
    with ctx.write() as session:
        audit.record(session, at=ctx.clock.now(), actor=actor, action="gate.ready", target=seen.target,
                     reason=f"{reason} [cause {cause}]", changes={"stage": stage.name, "verdict": verdict.to_dict()})
        webhooks.enqueue(session, "gate.ready", {"model": seen.model, "version": seen.version, "stage": stage.name, "reason": reason, "verdict": verdict.to_dict()}, ctx.clock.now())
    return [Action("ready", seen.model, seen.version, seen.target, cause, reason)]


def reconcile(ctx: ServiceContext, now: datetime | None = None, *, actor: Actor = CONTROLLER) -> list[Action]:
    """One reconciliation pass over every model; returns what was done. [] if another controller holds the lock.

    Safe to repeat: a second pass over unchanged state does nothing.
    """
    now = now or ctx.clock.now()
    with controller_lock(ctx) as mine:
        if not mine:
            return []
        actions: list[Action] = []
        with ctx.db.read() as session:
            work = [(current_plan(session, model), [r.id for r in session.scalars(
                select(Rollout).where(Rollout.model_name == model, Rollout.state.in_(tuple(SERVING_STATES)))
                .order_by(Rollout.version))]) for model in list_models(session)]
        for plan, ids in work:
            for rollout_id in ids:
                acted = _halt_rules(ctx, actor, plan, rollout_id, now)
                actions.extend(acted)
                if not any(a.done and a.kind in ("halt", "pause", "rollback") for a in acted):
                    actions.extend(_gate(ctx, actor, plan, rollout_id, now))
        return actions


def run_forever(ctx: ServiceContext, *, interval: float, on_actions: Callable[[list[Action]], None],
                sleep: Callable[[float], None], should_stop: Callable[[], bool] = lambda: False) -> None:
    """Reconcile every ``interval`` seconds until ``should_stop()``; errors of one pass do not stop the loop."""
    while not should_stop():
        try:
            on_actions(reconcile(ctx))
        except ReleasegateError as exc:
            on_actions([Action("error", "-", "-", "-", exc.code, exc.message, done=False)])
        sleep(interval)
