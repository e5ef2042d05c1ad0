"""Importing evaluation results and red-team findings as evidence about one model version.

A file is parsed by ``releasegate.evidence`` (outside any transaction), checked against the
plan (the version must exist; the log must not name a different version), and stored with
its SHA-256 in one audited transaction. The same file bytes are never imported twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.evidence.importers import import_file
from releasegate.evidence.records import FindingStatus, ImportBatch
from releasegate.plan.schema import Plan
from releasegate.services import audit
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.ids import new_id
from releasegate.services.plans import current_plan
from releasegate.store.evidence import EvalResultRecord, EvidenceImport, FindingRecord

READ_ROLES = ("release_manager", "reviewer", "auditor")
FINDING_STATUSES = tuple(s.value for s in FindingStatus)


def version_identifiers(plan: Plan, version: str) -> set[str]:
    """Names an evaluation log may use for ``version`` (compared case-insensitively)."""
    short = plan.model.split("/", 1)[1]
    names = {version, f"{plan.model}:{version}", f"{plan.model}@{version}", f"{plan.model}/{version}",
             f"{short}-{version}", f"{short}:{version}"}
    spec = plan.versions.get(version)
    if spec is not None and spec.api is not None and spec.api.upstream_model:
        names.add(spec.api.upstream_model)
    return {n.lower() for n in names}


def _check_log_models(plan: Plan, version: str, batch: ImportBatch, log_models: tuple[str, ...]) -> list[str]:
    """Refuse a batch whose log names another version; return warnings for unnamed results."""
    ours = version_identifiers(plan, version) | {m.lower() for m in log_models}
    others = {v: version_identifiers(plan, v) for v in plan.versions if v != version}
    named = sorted({r.model for r in batch.results if r.model} | {f.model for f in batch.findings if f.model})
    for name in named:
        if name.lower() in ours:
            continue
        clash = [v for v, ids in others.items() if name.lower() in ids]
        if clash:
            raise Refused(
                f"{batch.source_name} is about model {name!r}, which is version {clash[0]!r} of {plan.model}, "
                f"not {version!r}; import it for {clash[0]!r} instead",
                code="evidence_version_mismatch", details={"log_model": name, "version": version, "log_version": clash[0]},
            )
        raise Refused(
            f"{batch.source_name} is about model {name!r}, which releasegate cannot tie to {plan.model} {version}. "
            f"If that is how this log names {version}, say so with --log-model {name!r}",
            code="evidence_model_unknown",
            details={"log_model": name, "version": version, "accepted": sorted(ours)},
        )
    unnamed = sum(1 for r in batch.results if not r.model) + sum(1 for f in batch.findings if not f.model)
    if unnamed:
        return [f"{unnamed} record(s) in {batch.source_name} do not name a model; recorded as about {version} on {plan.model} by assertion of the importer"]
    return []


def import_evidence(
    ctx: ServiceContext,
    actor: Actor,
    path: str | Path,
    model: str,
    version: str,
    format: str | None = None,
    *,
    log_models: tuple[str, ...] = (),
    suite: str | None = None,
) -> dict[str, Any]:
    """Import one evidence file as evidence about ``model`` ``version``; audited, all or nothing.

    Refuses (``evidence_duplicate``) a file whose bytes were imported before, and a file whose
    log names another version (``evidence_version_mismatch``) or an unknown model
    (``evidence_model_unknown``, unless ``log_models`` says that name is this version).
    """
    actor.require("release_manager", "reviewer", action="import evidence")
    with ctx.db.read() as session:
        plan = current_plan(session, model)
    if version not in plan.versions:
        raise NotFound(f"{model} has no version {version!r} in its plan; versions: {', '.join(sorted(plan.versions))}",
                       code="version_not_found")
    batch = import_file(path, format=format, suite=suite)
    if not batch.results and not batch.findings:
        raise InvalidInput(f"{batch.source_name} holds no results and no findings", code="evidence_empty")
    warnings = list(batch.warnings) + _check_log_models(plan, version, batch, log_models)
    now = ctx.clock.now()
    try:
        with ctx.write() as session:
            prior = session.scalar(select(EvidenceImport).where(EvidenceImport.source_sha256 == batch.source_sha256))
            if prior is not None:
                raise _duplicate(batch, prior)
            imp = EvidenceImport(
                id=new_id("evi"), model_name=model, version=version, source_sha256=batch.source_sha256,
                source_format=batch.source_format, source_name=batch.source_name, results=len(batch.results),
                findings=len(batch.findings), warnings=warnings, imported_by=actor.name, imported_at=now,
            )
            session.add(imp)
            session.flush()
            for r in batch.results:
                session.add(EvalResultRecord(
                    import_id=imp.id, model_name=model, version=version, suite=r.suite, task=r.task, metric=r.metric,
                    value=r.value, stderr=r.stderr, samples=r.samples, log_model=r.model,
                    source_format=batch.source_format, source_sha256=batch.source_sha256, source_name=batch.source_name,
                    completed_at=r.completed_at, imported_by=actor.name, imported_at=now,
                ))
            for f in batch.findings:
                session.add(FindingRecord(
                    id=new_id("fnd"), model_name=model, version=version, title=f.title, severity=f.severity.value,
                    status=f.status.value, description=f.description, reproduction=f.reproduction, import_id=imp.id,
                    reported_by=actor.name, created_at=now, updated_at=now,
                ))
            audit.record(
                session, at=now, actor=actor, action="evidence.import", target=f"version:{model}:{version}",
                changes={"import": imp.id, "source_sha256": batch.source_sha256, "source_format": batch.source_format,
                         "source_name": batch.source_name, "results": len(batch.results),
                         "findings": len(batch.findings), "warnings": warnings},
            )
            return _import_dict(imp)
    except IntegrityError as exc:  # a concurrent import of the same bytes won the race
        with ctx.db.read() as session:
            prior = session.scalar(select(EvidenceImport).where(EvidenceImport.source_sha256 == batch.source_sha256))
        if prior is None:
            raise
        raise _duplicate(batch, prior) from exc


def _duplicate(batch: ImportBatch, prior: EvidenceImport) -> Refused:
    return Refused(
        f"{batch.source_name} (sha256 {batch.source_sha256[:12]}…) was already imported as {prior.id} "
        f"for {prior.model_name} {prior.version} by {prior.imported_by} at {prior.imported_at.isoformat()}",
        code="evidence_duplicate", details={"import": prior.id, "source_sha256": batch.source_sha256},
    )


def _import_dict(i: EvidenceImport) -> dict[str, Any]:
    return {"id": i.id, "model": i.model_name, "version": i.version, "source_sha256": i.source_sha256,
            "source_format": i.source_format, "source_name": i.source_name, "results": i.results,
            "findings": i.findings, "warnings": list(i.warnings), "imported_by": i.imported_by,
            "imported_at": i.imported_at.isoformat()}


def result_dict(r: EvalResultRecord) -> dict[str, Any]:
    return {"id": r.id, "import": r.import_id, "model": r.model_name, "version": r.version, "suite": r.suite,
            "task": r.task, "metric": r.metric, "value": r.value, "stderr": r.stderr, "samples": r.samples,
            "log_model": r.log_model, "source_format": r.source_format, "source_sha256": r.source_sha256,
            "source_name": r.source_name, "completed_at": r.completed_at.isoformat() if r.completed_at else None,
            "imported_by": r.imported_by, "imported_at": r.imported_at.isoformat()}


def finding_dict(f: FindingRecord) -> dict[str, Any]:
    return {"id": f.id, "model": f.model_name, "version": f.version, "title": f.title, "severity": f.severity,
            "status": f.status, "description": f.description, "reproduction": f.reproduction, "import": f.import_id,
            "reported_by": f.reported_by, "created_at": f.created_at.isoformat(), "updated_at": f.updated_at.isoformat()}


def list_evidence(ctx: ServiceContext, actor: Actor, model: str, version: str | None = None) -> dict[str, Any]:
    """Imports, results and findings about ``model`` (one version, or all), newest first."""
    actor.require(*READ_ROLES, action="read evidence")
    with ctx.db.read() as session:
        current_plan(session, model)  # NotFound for an unknown model
        return {
            "imports": [_import_dict(i) for i in _rows(session, EvidenceImport, model, version, EvidenceImport.imported_at)],
            "results": [result_dict(r) for r in _rows(session, EvalResultRecord, model, version, EvalResultRecord.id)],
            "findings": [finding_dict(f) for f in _rows(session, FindingRecord, model, version, FindingRecord.created_at)],
        }


def _rows(session: Session, table: Any, model: str, version: str | None, order: Any) -> list[Any]:
    q = select(table).where(table.model_name == model)
    if version is not None:
        q = q.where(table.version == version)
    return list(session.scalars(q.order_by(order.desc())))


def update_finding(ctx: ServiceContext, actor: Actor, finding_id: str, status: str, *, reason: str | None) -> dict[str, Any]:
    """Move a finding to ``status`` (open, triaged, mitigated, closed) with a reason; audited."""
    actor.require("release_manager", "reviewer", action="update findings")
    if status not in FINDING_STATUSES:
        raise InvalidInput(f"finding status must be one of {', '.join(FINDING_STATUSES)}, not {status!r}", code="invalid_status")
    if not reason or not reason.strip():
        raise InvalidInput("a reason is required to change a finding's status", code="reason_required")
    now = ctx.clock.now()
    with ctx.write() as session:
        f = session.get(FindingRecord, finding_id, with_for_update=True)
        if f is None:
            raise NotFound(f"no finding {finding_id!r}", code="finding_not_found")
        if f.status == status:
            raise Refused(f"finding {finding_id} is already {status}", code="no_change")
        before = f.status
        f.status, f.updated_at = status, now
        audit.record(session, at=now, actor=actor, action="finding.update", target=f"finding:{f.id}", reason=reason.strip(),
                     changes={"from": before, "to": status, "model": f.model_name, "version": f.version})
        return finding_dict(f)
