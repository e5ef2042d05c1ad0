"""The release report of a model, as a document (HTML or Markdown)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response

from releasegate.api.deps import Ctx, CurrentActor
from releasegate.report import FORMATS, render
from releasegate.report.data import build_report

router = APIRouter(prefix="/api/v1", tags=["report"])


@router.get("/models/{org}/{name}/report", response_class=Response)
def release_report(org: str, name: str, ctx: Ctx, actor: CurrentActor, format: Literal["html", "md"] = "html") -> Response:
    """The self-contained release report for auditors (auditor or release manager)."""
    text = render(build_report(ctx, actor, f"{org}/{name}"), format)
    return Response(text, media_type=FORMATS[format])
