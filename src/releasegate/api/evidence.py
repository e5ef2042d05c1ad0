"""Evidence, findings, incidents, promotion requests, approvals and gate checks."""

from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from releasegate.api.deps import Ctx, CurrentActor
from releasegate.errors import InvalidInput
from releasegate.services import approvals, evidence, gates, incidents

router = APIRouter(prefix="/api/v1", tags=["evidence"])

MAX_EVIDENCE_BYTES = 64 * 1024 * 1024


class EvidenceBody(BaseModel):
    model: str
    version: str
    filename: str = Field(min_length=1, max_length=255, description="The file's name, kept as the evidence's source name.")
    content_base64: str = Field(description="The file's bytes, base64-encoded.")
    format: str | None = Field(default=None, description="inspect_ai, lm_eval, generic_json, generic_csv; detected when omitted.")
    log_models: list[str] = Field(default_factory=list, description="Model names in the log that mean this version.")
    suite: str | None = None


class StatusBody(BaseModel):
    status: str
    reason: str = Field(min_length=1)
    severity: Literal["low", "medium", "high", "critical"] | None = None


class IncidentBody(BaseModel):
    model: str
    version: str
    severity: Literal["low", "medium", "high", "critical"]
    title: str = Field(min_length=1, max_length=500)
    description: str = ""
    deployer: str | None = None
    source: Literal["deployer", "staff", "detector"] | None = None


class StageBody(BaseModel):
    model: str
    version: str
    stage: str
    comment: str = ""


@router.post("/evidence", status_code=201)
def import_evidence(body: EvidenceBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    """Import one evidence file (sent base64-encoded) about a model version."""
    try:
        data = base64.b64decode(body.content_base64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("content_base64 is not valid base64", code="invalid_base64") from None
    if len(data) > MAX_EVIDENCE_BYTES:
        raise InvalidInput(f"evidence files are limited to {MAX_EVIDENCE_BYTES // (1024 * 1024)} MiB", code="evidence_too_large")
    name = Path(body.filename).name  # never a path the caller chose
    if not name or name in (".", ".."):
        raise InvalidInput(f"{body.filename!r} is not a usable file name", code="invalid_filename")
    with tempfile.TemporaryDirectory(prefix="releasegate-evidence-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        return evidence.import_evidence(ctx, actor, path, body.model, body.version, body.format,
                                        log_models=tuple(body.log_models), suite=body.suite)


@router.get("/evidence")
def list_evidence(ctx: Ctx, actor: CurrentActor, model: str, version: str | None = None) -> dict[str, Any]:
    return evidence.list_evidence(ctx, actor, model, version)


@router.post("/findings/{finding_id}/status")
def update_finding(finding_id: str, body: StatusBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return evidence.update_finding(ctx, actor, finding_id, body.status, reason=body.reason)


@router.post("/incidents", status_code=201)
def report_incident(body: IncidentBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    """Report an incident; a deployer's token reports for its own organisation only."""
    return incidents.report(ctx, actor, body.model, body.version, severity=body.severity, title=body.title,
                            description=body.description, deployer=body.deployer, source=body.source)


@router.get("/incidents")
def list_incidents(ctx: Ctx, actor: CurrentActor, model: str | None = None, version: str | None = None,
                   status: str | None = None) -> list[dict[str, Any]]:
    return incidents.list_incidents(ctx, actor, model, version=version, status=status)


@router.post("/incidents/{incident_id}/status")
def update_incident(incident_id: str, body: StatusBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return incidents.transition(ctx, actor, incident_id, body.status, reason=body.reason, severity=body.severity)


@router.post("/promotion-requests", status_code=201)
def request_promotion(body: StageBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    return approvals.request_promotion(ctx, actor, body.model, body.version, body.stage, comment=body.comment)


@router.post("/approvals", status_code=201)
def approve(body: StageBody, ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    """Approve a version entering a stage, as the token's person (their e-mail must hold a plan role)."""
    return approvals.approve(ctx, actor, body.model, body.version, body.stage, comment=body.comment)


@router.get("/approvals")
def list_approvals(ctx: Ctx, actor: CurrentActor, model: str, version: str | None = None) -> list[dict[str, Any]]:
    return approvals.list_approvals(ctx, actor, model, version)


@router.get("/gates")
def check_gates(ctx: Ctx, actor: CurrentActor, model: str, version: str | None = None) -> list[dict[str, Any]]:
    """The verdict on the next stage of each serving version (or of ``version``)."""
    return gates.check(ctx, actor, model, version)
