"""``releasegate gateway``: a gateway-only replica against a shared store (run several at once)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from releasegate.cli import output
from releasegate.cli.main import run, state


def _gateway(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8090,
    request_log_dir: Annotated[Path | None, typer.Option(
        "--request-log-dir", help="Directory of this replica's durable request log (default: <data-dir>/requestlog).")] = None,
    replica: Annotated[str | None, typer.Option(help="Replica name in request-log segment names (default: <host>-<pid>).")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (413 above).")] = 4 * 1024 * 1024,
    ship: Annotated[bool, typer.Option("--ship/--no-ship", help="Ship the request log into the store from this replica.")] = True,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes, each a replica (use RELEASEGATE_REDIS_URL to share limits).")] = 1,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "warning",
    log_json: Annotated[bool, typer.Option("--log-json", envvar="RELEASEGATE_LOG_JSON", help="Structured JSON logs.")] = False,
) -> None:
    """Run the OpenAI-compatible gateway (/v1, /authz/v1/check) without the admin API.

    The store comes from --data-dir or RELEASEGATE_DATABASE_URL (PostgreSQL for several replicas);
    with RELEASEGATE_REDIS_URL, rate-limit counters and change notifications are shared.
    """
    import os

    import uvicorn

    from releasegate.gateway.app import GatewayApp
    from releasegate.gateway.service import GatewayConfig, create_gateway_service
    from releasegate.gateway.serving import GatewayHttpProtocol
    from releasegate.logs import configure_logging

    configure_logging(json=log_json, level=log_level)
    s = state(ctx)
    svc = run(lambda: s.service_context())
    if workers > 1:
        from releasegate.gateway import worker
        from releasegate.gateway.metrics import SharedExposition

        if not svc.settings.redis_url:
            output.console(stderr=True).print(
                "[yellow]warning[/yellow]: without RELEASEGATE_REDIS_URL each worker keeps its own rate-limit counters")
        log_root = request_log_dir or svc.settings.ensure_data_dir() / "requestlog"
        os.environ[worker.ENV_LOG_DIR] = str(log_root)
        metrics_dir = log_root / ".metrics"  # where the workers publish their metrics to each other
        SharedExposition.reset(metrics_dir)
        os.environ[worker.ENV_METRICS_DIR] = str(metrics_dir)
        os.environ[worker.ENV_REPLICA] = replica or "gw"
        os.environ[worker.ENV_MAX_BODY] = str(max_body_bytes)
        os.environ[worker.ENV_SHIP] = "1" if ship else "0"
        os.environ[worker.ENV_LOG_LEVEL] = log_level
        os.environ[worker.ENV_LOG_JSON] = "1" if log_json else "0"
        os.environ["RELEASEGATE_DATABASE_URL"] = svc.db.url
        output.console().print(f"releasegate gateway on http://{host}:{port}/v1 with {workers} workers")
        uvicorn.run("releasegate.gateway.worker:create_worker_app", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, access_log=False, lifespan="on", log_config=None,
                    proxy_headers=False, server_header=False, http=GatewayHttpProtocol)
        return
    config = GatewayConfig(max_body_bytes=max_body_bytes, request_log_dir=request_log_dir)
    service = create_gateway_service(svc.settings, db=svc.db, request_log_dir=request_log_dir, replica=replica,
                                     config=config, ship=ship)
    output.console().print(f"releasegate gateway on http://{host}:{port}/v1  ·  decision endpoint /authz/v1/check")
    # No proxy-header rewriting or Server header: the gateway trusts no client-sent forwarding headers.
    uvicorn.run(GatewayApp(service), host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                log_config=None, proxy_headers=False, server_header=False, http=GatewayHttpProtocol)


def register(app: typer.Typer) -> None:
    app.command("gateway")(_gateway)
