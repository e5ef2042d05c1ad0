"""``releasegate gateway --workers 2``: real worker processes behind one port, and one /metrics for all.

A scrape reaches one worker; every worker must answer for all of them (``metrics.SharedExposition``),
or counters would jump between the workers' values from one scrape to the next.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_world import build_world, chat, plan_text
from processes import free_port, wait_until_up
from releasegate.mockupstream import MockUpstream
from releasegate.services.context import ServiceContext
from releasegate.settings import Settings
from releasegate.store.base import Base
from releasegate.store.db import Database
from releasegate.store.migrate import ensure_schema

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "releasegate" / "examples" / "atlas" / "plan.yaml"

REQUESTS = 40


@pytest.fixture
def gateway_workers(tmp_path: Path, mock: tuple[MockUpstream, str]) -> Iterator[tuple[str, str, Path, subprocess.Popen[bytes]]]:
    db_url = f"sqlite:///{tmp_path / 'rg.db'}"
    data_dir = tmp_path / "data"
    log_dir = tmp_path / "requestlog"
    import releasegate.store.all_models  # noqa: F401

    db = Database(db_url)
    ensure_schema(db.engine)
    Base.metadata.create_all(db.engine)
    ctx = ServiceContext(db=db, settings=Settings(data_dir=data_dir, database_url=db_url))
    world = build_world(ctx, plan_text(EXAMPLE.read_text(), mock[1] + "/v1"))
    key = world.key("acme-internal/customer-support")
    db.dispose()
    (log_dir / ".metrics").mkdir(parents=True)
    (log_dir / ".metrics" / "gw-w1.prom").write_text("# an earlier run's worker: not served\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RELEASEGATE_REDIS_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from releasegate.cli.main import main; main()", "--data-dir", str(data_dir),
         "gateway", "--port", str(port), "--request-log-dir", str(log_dir), "--workers", "2", "--no-ship"],
        env={**env, "RELEASEGATE_DATABASE_URL": db_url}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/gateway/healthz", proc, timeout=60)
        yield url, key, log_dir, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def scrape(url: str) -> dict[str, dict[str, float]]:
    """metric sample name -> {replica: summed value}."""
    text = httpx.get(f"{url}/metrics", headers={"connection": "close"}, timeout=5).text
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            by = out.setdefault(s.name, {})
            by[s.labels["replica"]] = by.get(s.labels["replica"], 0.0) + s.value
    return out


def test_metrics_of_every_worker_on_every_scrape(gateway_workers: tuple[str, str, Path, subprocess.Popen[bytes]]) -> None:
    url, key, log_dir, proc = gateway_workers
    for _ in range(REQUESTS):  # a new connection each: the kernel spreads them over the workers
        r = httpx.post(f"{url}/v1/chat/completions", json=chat(), timeout=10,
                       headers={"authorization": f"Bearer {key}", "connection": "close"})
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 15
    totals: list[float] = []
    while time.monotonic() < deadline:
        seen = [scrape(url) for _ in range(6)]  # fresh connections: several workers answer
        totals = [sum(s.get("releasegate_requests_total", {}).values()) for s in seen]
        if all(t == REQUESTS for t in totals):
            break
        time.sleep(0.3)
    assert totals == [REQUESTS] * 6, totals
    replicas = set(seen[0]["releasegate_snapshot_revision"])
    assert len(replicas) == 2 and all(r.startswith("gw-w") for r in replicas), replicas
    assert "gw-w1" not in replicas  # the stale file of an earlier run was cleared at start
    assert all(set(s["releasegate_snapshot_revision"]) == replicas for s in seen)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert sorted(p.name for p in (log_dir / ".metrics").glob("*.prom")) == []  # each worker withdrew its own
