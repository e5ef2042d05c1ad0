"""The control-plane application factory. Nothing happens at import time."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from releasegate import __version__
from releasegate.api import audit, deployers, errors, evidence, models, report, weights
from releasegate.clock import Clock, SystemClock
from releasegate.services.context import ServiceContext
from releasegate.settings import Settings
from releasegate.store.db import Database
from releasegate.weights.hub import create_hub_router


def build_context(settings: Settings, *, clock: Clock | None = None, db: Database | None = None) -> ServiceContext:
    settings.ensure_data_dir()
    return ServiceContext(db=db or Database(settings.resolved_database_url()), settings=settings, clock=clock or SystemClock())


def create_app(settings: Settings | None = None, *, ctx: ServiceContext | None = None, clock: Clock | None = None) -> FastAPI:
    """The admin API (``/api/v1``) over ``ctx`` (built from ``settings`` when not given)."""
    if ctx is None:
        ctx = build_context(settings or Settings(), clock=clock)
    app = FastAPI(
        title="releasegate",
        version=__version__,
        description="Release an AI model step by step: plans, rollouts, deployers, keys and a tamper-evident audit trail.",
    )
    app.state.ctx = ctx
    errors.install(app)
    for router in (models.router, deployers.router, audit.router, weights.router, report.router, evidence.router):
        app.include_router(router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        ctx.db.ping()
        return {"ok": True, "version": __version__}

    # Last: the Hugging Face-compatible weights endpoints live at the root (/{org}/{name}/resolve/...).
    app.include_router(create_hub_router())
    return app
