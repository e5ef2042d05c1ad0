"""Tracing a leaked copy: which licensee's fingerprint does it carry?"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select

from releasegate.errors import InvalidInput, NotFound
from releasegate.services import audit
from releasegate.services.context import Actor, ServiceContext
from releasegate.store.models import Principal
from releasegate.weights import downloads, registry, signing
from releasegate.weights.fingerprint import trace


def trace_leak(ctx: ServiceContext, actor: Actor, suspect: Path, model: str, version: str, *,
               threshold: float = 8.0) -> dict[str, Any]:
    """Compare ``suspect`` (a safetensors file or directory) with the fingerprints of every licensee
    who ever downloaded ``version``; name the one it came from, with a confidence, or nobody."""
    actor.require("auditor", "release_manager", action="trace leaked weights")
    if not Path(suspect).exists():
        raise InvalidInput(f"{suspect} does not exist", code="suspect_missing")
    candidates = downloads.licensees_of(ctx, model, version)
    if not candidates:
        raise NotFound(f"nobody has downloaded fingerprinted weights of {model} {version}", code="no_candidates")
    store = registry.artifact_store(ctx)
    with ctx.db.read() as session:
        originals = [a for a in registry.files_of(session, model, version) if a.path.lower().endswith(".safetensors")]
        names = {p.id: (p.name, p.email) for p in session.scalars(select(Principal).where(Principal.id.in_(candidates)))}
    if not originals:
        raise NotFound(f"{model} {version} has no registered safetensors files", code="no_originals")
    secret = signing.fingerprint_secret(ctx.settings.server_secret())
    with tempfile.TemporaryDirectory(prefix="rg-trace-") as tmp:
        # The store names files by hash; the tracer wants *.safetensors files: link them under their repo paths.
        for a in originals:
            src = store.local_path(a.store_key)
            if src is None:
                raise NotFound(f"the stored copy of {a.path} is missing", code="artifact_unavailable")
            link = Path(tmp) / a.path
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
        result = trace(suspect, tmp, candidates, secret, threshold=threshold)
    who = result.licensee
    out = {
        "model": model, "version": version, "licensee": who,
        "licensee_name": names.get(who, (None, None))[0] if who else None,
        "licensee_email": names.get(who, (None, None))[1] if who else None,
        "confidence": result.confidence, "score": result.score, "threshold": result.threshold,
        "runner_up": result.runner_up_licensee, "runner_up_score": result.runner_up,
        "false_attribution_bound": result.false_attribution_bound, "candidates": result.candidates,
        "matches": list(result.matches), "positions_used": result.positions_used,
        "positions_planned": result.positions_planned, "missing_tensors": len(result.missing_tensors),
    }
    with ctx.write() as session:
        audit.record(session, at=ctx.clock.now(), actor=actor, action="weights.trace", target=f"version:{model}:{version}",
                     changes={"suspect": str(suspect), "licensee": who, "confidence": result.confidence,
                              "score": result.score, "candidates": result.candidates})
    return out
