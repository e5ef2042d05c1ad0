"""releasegate's gateway under ``uvicorn --factory --workers N``: each worker is one replica, wired exactly
as ``releasegate gateway`` wires its single process (``create_gateway_service``: the store's snapshot,
the durable request log with its shipper, the rate limiter and change notifications — Redis when
``RELEASEGATE_REDIS_URL`` is set).

``releasegate gateway`` runs one process; this factory exists so the benchmark can give the gateway
the same worker count as LiteLLM. Each worker gets its own request-log directory and replica name,
as separate replicas would.

Environment: ``RELEASEGATE_DATABASE_URL``, ``RELEASEGATE_DATA_DIR``, ``RELEASEGATE_REDIS_URL`` (optional),
``RG_BENCH_LOG_DIR`` (parent of the per-worker log directories), ``RG_BENCH_REPLICA`` (replica name prefix).
"""

from __future__ import annotations

import os
from pathlib import Path

from releasegate.gateway.app import GatewayApp
from releasegate.gateway.service import create_gateway_service
from releasegate.settings import Settings


def create_app() -> GatewayApp:
    replica = f"{os.environ.get('RG_BENCH_REPLICA', 'bench')}-w{os.getpid()}"
    log_dir = Path(os.environ["RG_BENCH_LOG_DIR"]) / replica
    return GatewayApp(create_gateway_service(Settings(), request_log_dir=log_dir, replica=replica))
