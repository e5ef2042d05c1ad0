"""The one-process server of ``releasegate serve``: control plane, and the data planes mounted beside it.

The gateway app answers ``/v1/*``, ``/authz/*``, ``/gateway/healthz`` and ``/metrics`` and hands every other path to
the admin API (FastAPI), so the gateway's hot path carries no framework. Every committed write of the
control plane refreshes this process's snapshot at once and is published to other replicas
(PostgreSQL LISTEN/NOTIFY or Redis pub/sub) when the store is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from releasegate.api.app import create_app
from releasegate.gateway.app import GatewayApp
from releasegate.gateway.service import GatewayConfig, GatewayService, create_gateway_service
from releasegate.services.context import ServiceContext
from releasegate.services.metrics import ControlPlaneCollector

log = logging.getLogger(__name__)


async def _controller_loop(ctx: ServiceContext, interval: float, stop: asyncio.Event) -> None:
    """Reconcile every ``interval`` seconds (gates, halt rules); one failing pass never stops the loop."""
    from releasegate.controller.loop import reconcile

    while not stop.is_set():
        try:
            for action in await asyncio.to_thread(reconcile, ctx):
                log.info("controller: %s %s", action.kind, getattr(action, "reason", ""))
        except Exception:
            log.exception("controller pass failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


@contextlib.asynccontextmanager
async def control_loops(ctx: ServiceContext, *, interval: float) -> AsyncIterator[None]:
    """While inside: the controller and the webhook delivery loop run in the background (interval 0: neither)."""
    if interval <= 0:
        yield
        return
    from releasegate.services import webhooks

    stop = asyncio.Event()
    task = asyncio.create_task(_controller_loop(ctx, interval, stop))
    try:
        async with webhooks.delivering(ctx, interval=interval):
            yield
    finally:
        stop.set()
        await task


def wire_changes(ctx: ServiceContext, service: GatewayService) -> None:
    """After each committed write: refresh the local snapshot now and tell the other replicas."""
    ctx.on_change.append(service.poke)
    notifier: Any = service.notifier
    if notifier is not None and hasattr(notifier, "publish_sync"):
        from releasegate.gateway.notify import change_listener

        ctx.on_change.append(change_listener(notifier, ctx.db))


def create_server_app(ctx: ServiceContext, *, request_log_dir: Path | None = None,
                      config: GatewayConfig | None = None) -> GatewayApp:
    """Everything ``serve`` runs, over one service context: the gateway in front, the admin API behind it."""
    admin = create_app(ctx=ctx)
    service = create_gateway_service(ctx.settings, db=ctx.db, request_log_dir=request_log_dir, config=config)
    wire_changes(ctx, service)
    # One /metrics for both planes: versions and incidents are read from the store at scrape time.
    service.metrics.register(ControlPlaneCollector(ctx.db))
    # serve also runs the controller and the webhook deliveries, inside the admin app's lifespan.
    interval = ctx.settings.controller_interval
    admin.router.lifespan_context = lambda _app: control_loops(ctx, interval=interval)
    app = GatewayApp(service, fallback=admin)
    admin.state.gateway = service
    return app
