"""Registering the weight files of a model version; each version is one commit of repository ``org/name``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.services import audit
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.plans import current_plan, current_revision
from releasegate.store.weights import WeightsArtifact, WeightsRevision
from releasegate.weights.store import (
    ArtifactStore,
    default_store,
    digest_file,
    is_lfs,
    scan_directory,
)


@dataclass(frozen=True)
class FileInfo:
    """One registered file, detached from the session that read it."""

    path: str
    size: int
    sha256: str
    git_oid: str
    lfs: bool
    store_key: str


@dataclass(frozen=True)
class RevisionInfo:
    """A registered version (one commit), detached from the session that read it."""

    version: str
    commit: str
    registered_at: datetime
    file_count: int
    total_size: int


def _file(a: WeightsArtifact) -> FileInfo:
    return FileInfo(a.path, a.size, a.sha256, a.git_oid, a.lfs, a.store_key)


def artifact_store(ctx: ServiceContext) -> ArtifactStore:
    """The store weights are kept in (the local directory under data_dir by default)."""
    return default_store(ctx.settings.data_dir)


def commit_id(model: str, version: str, files: list[tuple[str, str]]) -> str:
    """A 40-hex commit id for (path, sha256) pairs of a version: same files, same id."""
    h = hashlib.sha1(f"rg-commit-v1\n{model}\n{version}\n".encode(), usedforsecurity=False)
    for path, sha in sorted(files):
        h.update(f"{path}\0{sha}\n".encode())
    return h.hexdigest()


def plan_weights_dir(session: Session, model: str, version: str) -> Path:
    """The directory the plan names for ``version``'s weights, resolved against the plan's base_dir."""
    plan = current_plan(session, model)
    v = plan.versions.get(version)
    if v is None:
        raise NotFound(f"model {model!r} has no version {version!r} in its plan", code="version_not_found")
    if v.weights is None:
        raise InvalidInput(f"the plan of {model} names no weights path for {version}; pass the directory explicitly",
                           code="weights_path_missing")
    rev = current_revision(session, model)
    base = Path(rev.base_dir) if rev is not None and rev.base_dir else None
    path = Path(v.weights.path)
    if not path.is_absolute():
        if base is None:
            raise InvalidInput(f"the plan of {model} was applied without a base directory, so its relative weights "
                               f"path {v.weights.path!r} cannot be found; pass the directory explicitly",
                               code="weights_path_missing")
        path = base / path
    return path


def register(ctx: ServiceContext, actor: Actor, model: str, version: str, directory: Path | None = None,
             *, store: ArtifactStore | None = None) -> dict[str, Any]:
    """Hash and store every file of ``directory`` (default: the plan's path) as ``version``'s weights.

    Registering identical files again is a no-op; different files for an already registered
    version are refused, because licensees may already hold the old commit.
    """
    actor.require("release_manager", action="register weights")
    store = store or artifact_store(ctx)
    with ctx.db.read() as session:
        plan = current_plan(session, model)
        if version not in plan.versions:
            raise NotFound(f"model {model!r} has no version {version!r}; known versions: {', '.join(plan.versions)}",
                           code="version_not_found")
        directory = directory or plan_weights_dir(session, model, version)
    files = scan_directory(Path(directory))
    digests = [(rel, full, digest_file(full)) for rel, full in files]
    commit = commit_id(model, version, [(rel, d.sha256) for rel, _, d in digests])
    now = ctx.clock.now()
    with ctx.write() as session:
        existing = session.get(WeightsRevision, (model, version))
        if existing is not None:
            if existing.commit == commit:
                return {**revision_dict(existing), "changed": False}
            raise Refused(f"{model} {version} is registered already with other files (commit {existing.commit}); "
                          "register changed weights as a new version", code="weights_already_registered")
        for rel, full, d in digests:
            key = store.put(full, sha256=d.sha256)
            session.add(WeightsArtifact(model_name=model, version=version, path=rel, size=d.size, sha256=d.sha256,
                                        git_oid=d.git_oid, lfs=is_lfs(rel, d.size), store_key=key))
        row = WeightsRevision(model_name=model, version=version, commit=commit, file_count=len(digests),
                              total_size=sum(d.size for _, _, d in digests), source=str(directory),
                              registered_at=now, registered_by=actor.name)
        session.add(row)
        session.flush()
        audit.record(session, at=now, actor=actor, action="weights.register", target=f"version:{model}:{version}",
                     changes={"commit": commit, "files": [{"path": r, "size": d.size, "sha256": d.sha256} for r, _, d in digests][:200]})
        return {**revision_dict(row), "changed": True}


def revision_dict(r: WeightsRevision) -> dict[str, Any]:
    return {"model": r.model_name, "version": r.version, "commit": r.commit, "files": r.file_count,
            "total_size": r.total_size, "registered_at": r.registered_at.isoformat(), "registered_by": r.registered_by}


def revisions(session: Session, model: str) -> dict[str, RevisionInfo]:
    """Registered versions of ``model`` by version name."""
    rows = session.scalars(select(WeightsRevision).where(WeightsRevision.model_name == model))
    return {r.version: RevisionInfo(r.version, r.commit, r.registered_at, r.file_count, r.total_size) for r in rows}


def files_of(session: Session, model: str, version: str) -> list[FileInfo]:
    return [_file(a) for a in session.scalars(select(WeightsArtifact).where(
        WeightsArtifact.model_name == model, WeightsArtifact.version == version).order_by(WeightsArtifact.path))]


def file_of(session: Session, model: str, version: str, path: str) -> FileInfo | None:
    a = session.scalar(select(WeightsArtifact).where(
        WeightsArtifact.model_name == model, WeightsArtifact.version == version, WeightsArtifact.path == path))
    return _file(a) if a is not None else None


def list_registered(ctx: ServiceContext, actor: Actor, model: str) -> list[dict[str, Any]]:
    actor.require("release_manager", "reviewer", "auditor", action="list registered weights")
    with ctx.db.read() as session:
        rows = session.scalars(select(WeightsRevision).where(WeightsRevision.model_name == model).order_by(WeightsRevision.version))
        return [revision_dict(r) for r in rows]
