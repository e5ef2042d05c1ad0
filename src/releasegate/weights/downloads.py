"""The download record: one row per GET of a file, one audit entry per file download, audited refusals.

Audit policy (see docs/weights.md): a GET that starts at byte 0 is a file download and is
audited (who, file, sha256, terms version, range); a GET that resumes at a later byte gets
its own row in ``weights_downloads`` but no audit entry, so a resumed or range-parallel
download is one audit entry, not one per chunk. Bytes actually sent are written to the row
when the response ends. Refusals of authenticated callers are audited; refusals of
anonymous or unverifiable requests are only logged, so strangers cannot grow the audit trail.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from releasegate.services import audit
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.ids import new_id
from releasegate.store.weights import WeightsDownload
from releasegate.weights.gating import DownloadTicket, HubRefusal

log = logging.getLogger("releasegate.weights")


def start(ctx: ServiceContext, ticket: DownloadTicket, *, start: int, end: int, ip: str | None) -> str:
    """Record the beginning of a GET of ``[start, end)``; audited when it starts a file (``start == 0``)."""
    now = ctx.clock.now()
    row_id = new_id("wdl")
    a = ticket.artifact
    with ctx.db.transaction() as session:
        session.add(WeightsDownload(
            id=row_id, principal_id=ticket.principal_id, model_name=ticket.model, version=ticket.version, path=a.path,
            source_sha256=a.sha256, fingerprinted=ticket.fingerprinted, terms_id=ticket.terms_id,
            terms_version=ticket.terms_version, range_start=start, range_end=end, bytes_sent=0, completed=False,
            ip=ip, started_at=now,
        ))
        session.flush()
        if start == 0:
            audit.record(session, at=now, actor=ticket.actor_name, action="weights.download",
                         target=f"version:{ticket.model}:{ticket.version}",
                         changes={"download": row_id, "principal": ticket.principal_id, "file": a.path,
                                  "sha256": a.sha256, "size": a.size, "fingerprinted": ticket.fingerprinted,
                                  "terms": ticket.terms_id, "terms_version": ticket.terms_version,
                                  "range": [start, end], "ip": ip})
    return row_id


def finish(ctx: ServiceContext, download_id: str, *, bytes_sent: int) -> None:
    """Write how many bytes went out; ``completed`` when the whole requested range did."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = session.get(WeightsDownload, download_id)
        if row is None:  # pragma: no cover - rows are never deleted
            return
        row.bytes_sent = bytes_sent
        row.completed = bytes_sent == row.range_end - row.range_start
        row.finished_at = now


def refusal(ctx: ServiceContext, actor: Actor | None, model: str, exc: HubRefusal, *, revision: str | None,
            path: str | None, ip: str | None) -> None:
    """Audit a refusal of an authenticated caller; log one of an anonymous caller."""
    # Callers choose the model, revision and path strings: bound them before they reach the trail.
    detail = {"code": exc.code, "hf_code": exc.hf_code, "status": exc.http_status, "revision": (revision or "")[:100] or None,
              "path": (path or "")[:500] or None, "ip": ip}
    if actor is None:
        log.info("weights refusal (unauthenticated) model=%r code=%s revision=%r path=%r ip=%s",
                 model[:300], exc.code, detail["revision"], detail["path"], ip)
        return
    with ctx.db.transaction() as session:
        audit.record(session, at=ctx.clock.now(), actor=actor, action="weights.refuse", target=f"model:{model}"[:300],
                     reason=exc.message[:500], changes=detail)


def _dict(d: WeightsDownload) -> dict[str, Any]:
    return {"id": d.id, "principal_id": d.principal_id, "model": d.model_name, "version": d.version, "path": d.path,
            "fingerprinted": d.fingerprinted, "terms_version": d.terms_version, "range": [d.range_start, d.range_end],
            "bytes_sent": d.bytes_sent, "completed": d.completed, "ip": d.ip, "started_at": d.started_at.isoformat(),
            "finished_at": d.finished_at.isoformat() if d.finished_at else None}


def list_downloads(ctx: ServiceContext, actor: Actor, model: str, *, version: str | None = None,
                   limit: int = 1000) -> list[dict[str, Any]]:
    actor.require("release_manager", "reviewer", "auditor", action="read the download record")
    with ctx.db.read() as session:
        q = select(WeightsDownload).where(WeightsDownload.model_name == model)
        if version:
            q = q.where(WeightsDownload.version == version)
        rows = session.scalars(q.order_by(WeightsDownload.started_at.desc(), WeightsDownload.id).limit(limit))
        return [_dict(d) for d in rows]


def licensees_of(ctx: ServiceContext, model: str, version: str) -> list[str]:
    """Every licensee that ever received fingerprinted bytes of ``version``: the trace candidates."""
    with ctx.db.read() as session:
        return list(session.scalars(select(WeightsDownload.principal_id).where(
            WeightsDownload.model_name == model, WeightsDownload.version == version,
            WeightsDownload.fingerprinted.is_(True)).distinct().order_by(WeightsDownload.principal_id)))
