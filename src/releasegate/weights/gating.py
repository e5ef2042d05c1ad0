"""The download decision: may this caller fetch this file of this revision, right now? And if not, why.

Refusals carry the Hugging Face error code the client library understands (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``) plus releasegate's own precise code,
and a sentence saying what to do next.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from releasegate.errors import ReleasegateError
from releasegate.services.context import Actor
from releasegate.weights import access, forms, registry, state, terms
from releasegate.weights.state import ModelWeights, VersionWeights

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class HubRefusal(ReleasegateError):
    """A refusal on the Hugging Face-compatible endpoints: ``hf_code`` goes in ``X-Error-Code``."""

    def __init__(self, status: int, hf_code: str, code: str, message: str, *, commit: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code, details=details)
        self.http_status = status
        self.hf_code = hf_code
        self.commit = commit


def repo_not_found(model: str) -> HubRefusal:
    # One answer for "does not exist" and "you may not see it".
    return HubRefusal(404, "RepoNotFound", "repo_not_found",
                      f"Repository {model} not found, or you may not see it. If you were given access, set HF_TOKEN "
                      "to your releasegate licensee token.")


def _steps(public_url: str, model: str) -> dict[str, str]:
    base = public_url.rstrip("/")
    return {
        "request": f"releasegate weights request {model} --field NAME=VALUE ... --use '...'  (or POST {base}/api/v1/weights/{model}/requests)",
        "terms": f"{base}/api/v1/weights/{model}/terms",
    }


def load_visible(session: Session, model: str, actor: Actor | None) -> ModelWeights:
    mw = state.load(session, model)
    if mw is None or not state.can_see(session, mw, actor):
        raise repo_not_found(model)
    return mw


def _closed(model: str, mw: ModelWeights, v: VersionWeights | None) -> HubRefusal:
    halted = v if v is not None and v.in_weights_stage and v.state == "halted" else next(
        (x for x in reversed(mw.versions.values()) if x.in_weights_stage and x.state == "halted"), None)
    if halted is not None:
        why = f": {halted.state_reason}" if halted.state_reason else ""
        return HubRefusal(403, "GatedRepo", "weights_halted",
                          f"Downloads of {model} {halted.version} are halted{why}. Try again once the provider resumes them.",
                          commit=halted.commit)
    which = f"{model} {v.version}" if v is not None else model
    return HubRefusal(403, "GatedRepo", "weights_channel_closed",
                      f"The weights channel of {which} is closed: the release is not in a stage that offers weights downloads.",
                      commit=v.commit if v else None)


def resolve_revision(mw: ModelWeights, revision: str, actor: Actor | None, *, for_download: bool) -> VersionWeights:
    """The version ``revision`` names: ``main``, a version name, or a commit id.

    Staff may list any registered version; others only versions open now (a halted weights
    stage is explained, anything else is "revision not found"). Downloads need an open version.
    """
    staff = state.is_staff(actor)
    if revision == "main":
        v = mw.main
        if v is None:
            if staff and not for_download:
                registered = [x for x in mw.versions.values() if x.revision is not None]
                if registered:
                    return registered[-1]
            raise _closed(mw.model, mw, None)
        return v
    v = mw.versions.get(revision) if not COMMIT_RE.match(revision) else mw.by_commit(revision)
    if v is None or v.revision is None or (not staff and not v.in_weights_stage):
        raise HubRefusal(404, "RevisionNotFound", "revision_not_found",
                         f"Revision {revision!r} of {mw.model} not found. Use main, a version name or a commit id.")
    if not v.open and (for_download or not staff):
        raise _closed(mw.model, mw, v)
    return v


@dataclass(frozen=True)
class DownloadTicket:
    """Everything the server needs to serve one file to one licensee, and to record it."""

    model: str
    version: str
    commit: str
    artifact: registry.FileInfo
    principal_id: str
    actor_name: str
    fingerprinted: bool
    terms_id: str
    terms_version: int


def is_fingerprinted(v: VersionWeights, path: str) -> bool:
    policy = v.policy
    return policy is not None and policy.fingerprint and path.lower().endswith(".safetensors")


def authorize_download(session: Session, actor: Actor | None, model: str, revision: str, path: str, *,
                       now: datetime, public_url: str) -> DownloadTicket:
    """A ticket to download ``path``, or the HubRefusal that explains what is missing (first missing step)."""
    mw = load_visible(session, model, actor)
    v = resolve_revision(mw, revision, actor, for_download=True)
    assert v.revision is not None
    artifact = registry.file_of(session, model, v.version, path)
    if artifact is None:
        raise HubRefusal(404, "EntryNotFound", "entry_not_found", f"{path} is not a file of {model} at {revision}.",
                         commit=v.commit)
    steps = _steps(public_url, model)
    if actor is None:
        raise HubRefusal(401, "GatedRepo", "authentication_required",
                         f"{model} is gated. Set HF_TOKEN to your releasegate licensee token; if you have none, ask the "
                         f"provider for one, then request access: {steps['request']}", commit=v.commit)
    policy = v.policy
    if policy is None:  # the plan validator forbids it; fail closed anyway
        raise HubRefusal(403, "GatedRepo", "weights_policy_missing", f"{model} has no weights policy; downloads are closed.",
                         commit=v.commit)
    if actor.principal_id is None:
        raise HubRefusal(403, "GatedRepo", "licensee_required", "Downloads need a licensee token.", commit=v.commit)
    req = access.latest_request(session, actor.principal_id, model)
    status = access.effective_status(req, now) if req is not None else None
    if req is None:
        raise HubRefusal(403, "GatedRepo", "access_not_requested",
                         f"You have not requested access to {model}. Request it: {steps['request']}", commit=v.commit)
    if status == "pending":
        raise HubRefusal(403, "GatedRepo", "access_pending",
                         f"Your access request {req.id} for {model} (submitted {req.submitted_at:%Y-%m-%d}) is pending "
                         "review. You will be able to download once a reviewer approves it.", commit=v.commit)
    if status == "rejected":
        raise HubRefusal(403, "GatedRepo", "access_rejected",
                         f"Your access request {req.id} for {model} was rejected: {req.decision_reason or 'no reason given'}. "
                         f"You may request again: {steps['request']}", commit=v.commit)
    if status == "revoked":
        raise HubRefusal(403, "GatedRepo", "access_revoked",
                         f"Your access to {model} was revoked on {req.revoked_at:%Y-%m-%d}: {req.decision_reason}.",
                         commit=v.commit)
    if status == "expired":
        raise HubRefusal(403, "GatedRepo", "access_expired",
                         f"Your access to {model} expired on {req.expires_at:%Y-%m-%d}. Request it again: {steps['request']}",
                         commit=v.commit)
    if policy.tiers is not None:
        tier = access.organisation_tier(session, actor.email, forms.organisation_of(req.fields))
        if tier not in policy.tiers:
            raise HubRefusal(403, "GatedRepo", "tier_not_admitted",
                             f"The weights of {model} are open only to organisations in tiers: {', '.join(policy.tiers)}.",
                             commit=v.commit)
    current = terms.current(session, model, policy.terms)
    if current is None:
        raise HubRefusal(403, "GatedRepo", "terms_unpublished",
                         f"The terms of {model} are not published yet, so downloads are closed. Ask the provider.",
                         commit=v.commit)
    acc = terms.latest_acceptance(session, actor.principal_id, model, policy.terms)
    if acc is None or acc.terms_version != current.version or acc.content_hash != current.content_hash:
        before = (f" The terms changed since you accepted version {acc.terms_version} on {acc.accepted_at:%Y-%m-%d}."
                  if acc is not None else "")
        raise HubRefusal(403, "GatedRepo", "terms_not_accepted",
                         f"Accept the terms of {model} (version {current.version}) before downloading.{before} Read them at "
                         f"{steps['terms']} and accept with: releasegate weights accept-terms {model} "
                         f"(or POST {steps['terms']}/accept).", commit=v.commit,
                         details={"terms_version": current.version, "content_hash": current.content_hash})
    return DownloadTicket(model=model, version=v.version, commit=v.revision.commit, artifact=artifact,
                          principal_id=actor.principal_id, actor_name=actor.name,
                          fingerprinted=is_fingerprinted(v, path), terms_id=policy.terms, terms_version=current.version)



def explain(session: Session, actor: Actor | None, model: str, *, now: datetime, public_url: str) -> dict[str, Any]:
    """Can ``actor`` download ``model`` (main) right now, and if not, what is the next step?

    The ``hf`` command line prints only "requires approval" for a gated repository; this is
    the same decision as a download, spelled out.
    """
    try:
        mw = load_visible(session, model, actor)
        v = resolve_revision(mw, "main", actor, for_download=True)
        first = registry.files_of(session, model, v.version)
        if not first:
            raise HubRefusal(404, "EntryNotFound", "entry_not_found", f"{model} has no files", commit=v.commit)
        ticket = authorize_download(session, actor, model, "main", first[0].path, now=now, public_url=public_url)
    except HubRefusal as exc:
        return {"model": model, "ok": False, "code": exc.code, "message": exc.message}
    return {"model": model, "ok": True, "code": "ok", "version": ticket.version, "commit": ticket.commit,
            "message": f"You may download {model} {ticket.version} (commit {ticket.commit}): set HF_ENDPOINT and HF_TOKEN."}
