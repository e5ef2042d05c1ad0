"""Versioned terms documents and their acceptance.

The plan's ``terms:`` entries name Markdown files. Publishing reads them; a changed content
hash becomes a new version, and a licensee who accepted an older version must accept again
before the next download.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from releasegate.errors import InvalidInput, NotFound, Refused
from releasegate.plan.schema import TermsDoc
from releasegate.services import audit
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.plans import current_plan, current_revision
from releasegate.store.weights import TermsAcceptance, TermsVersion
from releasegate.weights import state

MAX_TERMS_BYTES = 1_000_000


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def plain_summary(doc: TermsDoc, text: str) -> str:
    """The plan's summary, else the document's first paragraph that is not a heading, as plain text."""
    if doc.summary:
        return doc.summary.strip()
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if lines:
            plain = re.sub(r"[*_`>]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", " ".join(lines))
            return plain[:500]
    return ""


def current(session: Session, model: str, terms_id: str) -> TermsVersion | None:
    """The latest published version of ``terms_id`` for ``model``."""
    return session.scalar(select(TermsVersion).where(
        TermsVersion.model_name == model, TermsVersion.terms_id == terms_id).order_by(TermsVersion.version.desc()).limit(1))


def latest_acceptance(session: Session, principal_id: str, model: str, terms_id: str) -> TermsAcceptance | None:
    return session.scalar(select(TermsAcceptance).where(
        TermsAcceptance.principal_id == principal_id, TermsAcceptance.model_name == model,
        TermsAcceptance.terms_id == terms_id).order_by(TermsAcceptance.terms_version.desc(), TermsAcceptance.id.desc()).limit(1))


def terms_dict(t: TermsVersion, *, with_text: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"model": t.model_name, "terms_id": t.terms_id, "version": t.version,
                           "content_hash": t.content_hash, "summary": t.summary,
                           "published_at": t.published_at.isoformat(), "published_by": t.published_by}
    if with_text:
        out["text"] = t.text
    return out


def _read_terms_file(base_dir: str | None, doc: TermsDoc, terms_id: str) -> str:
    path = Path(doc.file)
    if not path.is_absolute():
        if not base_dir:
            raise InvalidInput(f"terms {terms_id!r}: the plan was applied without a base directory, so "
                               f"{doc.file!r} cannot be found; re-apply it from its file", code="terms_file_missing")
        path = Path(base_dir) / path
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"terms {terms_id!r}: cannot read {path}: {exc.strerror}", code="terms_file_missing") from None
    if len(raw) > MAX_TERMS_BYTES:
        raise InvalidInput(f"terms {terms_id!r}: {path} is larger than {MAX_TERMS_BYTES} bytes", code="terms_too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"terms {terms_id!r}: {path} is not UTF-8 text", code="terms_not_text") from None
    if not text.strip():
        raise InvalidInput(f"terms {terms_id!r}: {path} is empty", code="terms_empty")
    return text


def publish(ctx: ServiceContext, actor: Actor, model: str, *, texts: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Publish every terms document of the plan (from its files, or ``texts`` by terms id).

    A document whose content hash differs from its latest version becomes a new version,
    audited; unchanged documents are reported with ``changed: false``.
    """
    actor.require("release_manager", action="publish terms")
    now = ctx.clock.now()
    with ctx.write() as session:
        plan = current_plan(session, model)
        rev = current_revision(session, model)
        if texts:
            unknown = sorted(set(texts) - set(plan.terms))
            if unknown:
                raise NotFound(f"the plan of {model} declares no terms {', '.join(unknown)}", code="terms_not_found")
        out: list[dict[str, Any]] = []
        for terms_id, doc in plan.terms.items():
            if texts is not None and terms_id not in texts:
                continue
            text = texts[terms_id] if texts is not None else _read_terms_file(rev.base_dir if rev else None, doc, terms_id)
            digest = content_hash(text)
            latest = current(session, model, terms_id)
            if latest is not None and latest.content_hash == digest:
                out.append({**terms_dict(latest), "changed": False})
                continue
            t = TermsVersion(model_name=model, terms_id=terms_id, version=(latest.version + 1) if latest else 1,
                             content_hash=digest, summary=plain_summary(doc, text), text=text,
                             published_at=now, published_by=actor.name)
            session.add(t)
            session.flush()
            audit.record(session, at=now, actor=actor, action="weights.terms_publish", target=f"terms:{model}:{terms_id}",
                         changes={"version": t.version, "content_hash": digest,
                                  "previous": latest.content_hash if latest else None})
            out.append({**terms_dict(t), "changed": True})
        return out


def _policy_terms(session: Session, actor: Actor | None, model: str) -> tuple[state.ModelWeights, str]:
    mw = state.load(session, model)
    if mw is None or not state.can_see(session, mw, actor):
        raise NotFound(f"no model {model!r} with downloadable weights", code="model_not_found")
    policy = mw.policy
    if policy is None:
        raise NotFound(f"{model} has no weights policy", code="weights_policy_missing")
    return mw, policy.terms


def show(ctx: ServiceContext, actor: Actor | None, model: str) -> dict[str, Any]:
    """The terms a licensee of ``model`` must accept now, with the caller's acceptance status."""
    with ctx.db.read() as session:
        _, terms_id = _policy_terms(session, actor, model)
        t = current(session, model, terms_id)
        if t is None:
            raise NotFound(f"the terms {terms_id!r} of {model} are not published yet; ask the provider",
                           code="terms_unpublished")
        out = terms_dict(t, with_text=True)
        out["accept_url"] = f"{ctx.settings.public_url.rstrip('/')}/api/v1/weights/{model}/terms/accept"
        if actor is not None and actor.principal_id is not None:
            acc = latest_acceptance(session, actor.principal_id, model, terms_id)
            out["accepted_version"] = acc.terms_version if acc else None
            out["accepted"] = acc is not None and acc.terms_version == t.version and acc.content_hash == t.content_hash
        return out


def accept(ctx: ServiceContext, actor: Actor, model: str, *, version: int | None = None,
           content_hash: str | None = None, ip: str | None = None, user_agent: str | None = None) -> dict[str, Any]:
    """Record that ``actor`` accepts the current terms of ``model``.

    ``version`` / ``content_hash``, when given, must be the current ones: accepting what one has
    read, not whatever is current by the time the request arrives.
    """
    if actor.principal_id is None:
        raise Refused("accepting terms needs a licensee token (releasegate token create NAME --role licensee)",
                      code="licensee_required")
    now = ctx.clock.now()
    with ctx.write() as session:
        _, terms_id = _policy_terms(session, actor, model)
        t = current(session, model, terms_id)
        if t is None:
            raise NotFound(f"the terms {terms_id!r} of {model} are not published yet", code="terms_unpublished")
        if (version is not None and version != t.version) or (content_hash is not None and content_hash != t.content_hash):
            raise Refused(f"the terms of {model} changed: the current version is {t.version} (sha256 {t.content_hash[:12]}); "
                          "read it and accept that version", code="terms_outdated",
                          details={"current_version": t.version, "content_hash": t.content_hash})
        acc = TermsAcceptance(principal_id=actor.principal_id, model_name=model, terms_id=terms_id, terms_version=t.version,
                              content_hash=t.content_hash, accepted_at=now, ip=ip, user_agent=(user_agent or "")[:300] or None)
        session.add(acc)
        session.flush()
        audit.record(session, at=now, actor=actor, action="weights.terms_accept", target=f"terms:{model}:{terms_id}",
                     changes={"version": t.version, "content_hash": t.content_hash, "ip": ip})
        return {"model": model, "terms_id": terms_id, "version": t.version, "content_hash": t.content_hash,
                "accepted_at": now.isoformat(), "ip": ip}
