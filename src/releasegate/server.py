"""The one-process server of ``releasegate serve``: control plane, and the data planes mounted beside it."""

from __future__ import annotations

from fastapi import FastAPI

from releasegate.api.app import create_app
from releasegate.services.context import ServiceContext


def create_server_app(ctx: ServiceContext) -> FastAPI:
    """Everything ``serve`` runs, over one service context."""
    return create_app(ctx=ctx)
