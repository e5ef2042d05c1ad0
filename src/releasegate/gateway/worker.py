"""One gateway worker process under ``uvicorn --factory --workers N`` (``releasegate gateway --workers N``).

Each worker is a replica of its own: its own request-log directory and replica name, the shared
store, and (with ``RELEASEGATE_REDIS_URL``) the shared rate-limit counters. The parent passes the
options through ``RELEASEGATE_GATEWAY_*`` environment variables, since workers are new processes.
"""

from __future__ import annotations

import os
from pathlib import Path

from releasegate.gateway.app import GatewayApp
from releasegate.gateway.metrics import SharedExposition
from releasegate.gateway.service import GatewayConfig, create_gateway_service
from releasegate.logs import configure_logging
from releasegate.settings import Settings

ENV_LOG_DIR = "RELEASEGATE_GATEWAY_LOG_DIR"
ENV_REPLICA = "RELEASEGATE_GATEWAY_REPLICA"
ENV_MAX_BODY = "RELEASEGATE_GATEWAY_MAX_BODY_BYTES"
ENV_SHIP = "RELEASEGATE_GATEWAY_SHIP"
ENV_LOG_LEVEL = "RELEASEGATE_GATEWAY_LOG_LEVEL"
ENV_LOG_JSON = "RELEASEGATE_GATEWAY_LOG_JSON"
ENV_METRICS_DIR = "RELEASEGATE_GATEWAY_METRICS_DIR"


def create_worker_app() -> GatewayApp:
    """The app of one worker, configured from the environment its parent set."""
    # A worker is a new process: the parent's logging set-up is not inherited.
    configure_logging(json=os.environ.get(ENV_LOG_JSON) == "1", level=os.environ.get(ENV_LOG_LEVEL, "warning"))
    settings = Settings()
    replica = f"{os.environ.get(ENV_REPLICA, 'gw')}-w{os.getpid()}"
    base = Path(os.environ[ENV_LOG_DIR]) if ENV_LOG_DIR in os.environ else settings.ensure_data_dir() / "requestlog"
    config = GatewayConfig(max_body_bytes=int(os.environ.get(ENV_MAX_BODY, str(4 * 1024 * 1024))))
    service = create_gateway_service(settings, request_log_dir=base / replica, replica=replica, config=config,
                                     ship=os.environ.get(ENV_SHIP, "1") == "1")
    if ENV_METRICS_DIR in os.environ:  # /metrics answers for every worker, not the one a scrape reached
        service.metrics.shared = SharedExposition(Path(os.environ[ENV_METRICS_DIR]), replica)
    return GatewayApp(service)
