"""Appending to and checking the audit trail. ``record`` runs inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

import orjson
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from releasegate.audit.chain import GENESIS, ChainProblem, entry_hash, format_time, verify_chain
from releasegate.audit.checkpoint import (
    Checkpoint,
    load_or_create_key,
    sign_checkpoint,
    signature_valid,
)
from releasegate.services.context import Actor, ServiceContext
from releasegate.store.models import AuditEntry

_LOCK_KEY = 0x52474155  # "RGAU": serialises appends on PostgreSQL


def record(
    session: Session,
    *,
    at: datetime,
    actor: Actor | str,
    action: str,
    target: str,
    reason: str | None = None,
    changes: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction: it commits or rolls back with the change."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    head = session.execute(select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)).first()
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
    actor_name = actor if isinstance(actor, str) else actor.name
    # Round-trip through JSON so the stored value hashes exactly as it will be read back.
    clean_changes = orjson.loads(orjson.dumps(changes or {}, default=str))
    at_us = at.replace(microsecond=at.microsecond)
    fields: dict[str, Any] = {
        "seq": seq, "at": format_time(at_us), "actor": actor_name, "action": action,
        "target": target, "reason": reason, "changes": clean_changes, "prev_hash": prev,
    }
    entry = AuditEntry(
        seq=seq, at=at_us, actor=actor_name, action=action, target=target, reason=reason,
        changes=clean_changes, prev_hash=prev, hash=entry_hash(fields),
    )
    session.add(entry)
    session.flush()
    return entry


def entry_dict(e: AuditEntry) -> dict[str, Any]:
    return {
        "seq": e.seq, "at": format_time(e.at), "actor": e.actor, "action": e.action, "target": e.target,
        "reason": e.reason, "changes": e.changes, "prev_hash": e.prev_hash, "hash": e.hash,
    }


def iter_entries(session: Session, *, batch: int = 5000, since: int = 0) -> Iterator[dict[str, Any]]:
    last = since
    while True:
        rows = session.scalars(select(AuditEntry).where(AuditEntry.seq > last).order_by(AuditEntry.seq).limit(batch)).all()
        if not rows:
            return
        for row in rows:
            yield entry_dict(row)
        last = rows[-1].seq


def head(session: Session) -> tuple[int, str]:
    """(size, head hash) of the log; (0, GENESIS) when empty."""
    row = session.execute(select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)).first()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)


def revision(session: Session) -> int:
    """The store's change revision: every state change is audited, so the audit size is it."""
    return int(session.scalar(select(func.coalesce(func.max(AuditEntry.seq), 0))) or 0)


def verify(ctx: ServiceContext, actor: Actor) -> dict[str, Any]:
    actor.require("auditor", "release_manager", action="verify the audit trail")
    with ctx.db.read() as session:
        entries = list(iter_entries(session))
    problems = verify_chain(entries)
    size, head_hash = (entries[-1]["seq"], entries[-1]["hash"]) if entries else (0, GENESIS)
    return {"ok": not problems, "entries": len(entries), "size": size, "head": head_hash, "problems": [p.__dict__ for p in problems]}


def export(ctx: ServiceContext, actor: Actor, out: IO[bytes], *, since: int = 0) -> int:
    actor.require("auditor", "release_manager", action="export the audit trail")
    n = 0
    with ctx.db.read() as session:
        for entry in iter_entries(session, since=since):
            out.write(orjson.dumps(entry) + b"\n")
            n += 1
    return n


def list_entries(ctx: ServiceContext, actor: Actor, *, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    actor.require("auditor", "release_manager", "reviewer", action="read the audit trail")
    with ctx.db.read() as session:
        q = select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)
        if target:
            q = q.where(AuditEntry.target == target)
        return [entry_dict(e) for e in session.scalars(q)]


def checkpoint(ctx: ServiceContext, actor: Actor) -> Checkpoint:
    actor.require("auditor", "release_manager", action="sign an audit checkpoint")
    key = load_or_create_key(ctx.settings.ensure_data_dir() / "audit-signing-key.pem")
    with ctx.db.read() as session:
        size, head_hash = head(session)
    return sign_checkpoint(key, size=size, head=head_hash, at=ctx.clock.now())


def check_checkpoint(ctx: ServiceContext, actor: Actor, cp: Checkpoint, *, trusted_public_key: str | None = None) -> dict[str, Any]:
    """Does the log still contain, unchanged, the history that ``cp`` vouched for?"""
    actor.require("auditor", "release_manager", action="check an audit checkpoint")
    problems: list[ChainProblem] = []
    if not signature_valid(cp, trusted_public_key):
        return {"ok": False, "problems": [{"seq": cp.size, "kind": "bad_signature", "message": "the checkpoint's signature is not valid for its key"}]}
    with ctx.db.read() as session:
        entries = list(iter_entries(session))
    problems = verify_chain(entries)
    if cp.size > 0:
        if len(entries) < cp.size:
            problems.append(ChainProblem(cp.size, "truncated", f"the log has {len(entries)} entries but the checkpoint vouched for {cp.size}"))
        elif entries[cp.size - 1]["hash"] != cp.head or entries[cp.size - 1]["seq"] != cp.size:
            problems.append(ChainProblem(cp.size, "rewritten", f"entry {cp.size} differs from the checkpoint signed at {format_time(cp.at)}: history up to it was rewritten"))
    return {"ok": not problems, "size": len(entries), "checkpoint_size": cp.size, "problems": [p.__dict__ for p in problems]}
