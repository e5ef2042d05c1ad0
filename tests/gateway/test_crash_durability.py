"""No request reaches a model server without a durable record, even when the gateway is killed -9.

Real processes: the mock upstream (recording every request it sees, with its x-request-id, to a
file) and a ``releasegate gateway`` replica. We drive concurrent load, SIGKILL the gateway in the
middle of it, restart it, ship its request log, and check every request id the upstream saw.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import select

from gateway_world import build_world, chat, plan_text
from processes import free_port, wait_until_up
from releasegate.gateway.requestlog import RequestLogShipper
from releasegate.services.context import ServiceContext
from releasegate.settings import Settings
from releasegate.store.base import Base
from releasegate.store.db import Database
from releasegate.store.migrate import ensure_schema
from releasegate.store.requests import RequestEvent

EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "releasegate" / "examples" / "atlas" / "plan.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


async def test_every_request_the_upstream_saw_has_a_durable_record(tmp_path: Path, stopper: list[subprocess.Popen[bytes]]) -> None:
    seen_file = tmp_path / "upstream-seen.jsonl"
    mock_port, gw_port = free_port(), free_port()
    mock = subprocess.Popen(
        [sys.executable, "-m", "releasegate.mockupstream", "--port", str(mock_port), "--record-file", str(seen_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    stopper.append(mock)

    db_url = f"sqlite:///{tmp_path / 'rg.db'}"
    data_dir = tmp_path / "data"
    log_dir = tmp_path / "requestlog"
    import releasegate.store.all_models  # noqa: F401

    db = Database(db_url)
    ensure_schema(db.engine)  # what the gateway command expects ...
    Base.metadata.create_all(db.engine)  # ... plus any table the migration does not have yet
    ctx = ServiceContext(db=db, settings=Settings(data_dir=data_dir, database_url=db_url))
    world = build_world(ctx, plan_text(EXAMPLE.read_text(), f"http://127.0.0.1:{mock_port}/v1"))
    key = world.key("acme-internal/customer-support")
    auth = {"authorization": f"Bearer {key}"}

    def start_gateway() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from releasegate.cli.main import main; main()", "--data-dir", str(data_dir),
             "gateway", "--port", str(gw_port), "--request-log-dir", str(log_dir), "--replica", "gw1", "--no-ship"],
            env={**os.environ, "RELEASEGATE_DATABASE_URL": db_url}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        stopper.append(proc)
        wait_until_up(f"http://127.0.0.1:{gw_port}/v1/models", proc, auth)
        return proc

    wait_until_up(f"http://127.0.0.1:{mock_port}/_mock/health", mock)
    gateway = start_gateway()

    answered = 0
    stop = asyncio.Event()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                r = await client.post("/v1/chat/completions", json=chat(), headers={**auth, "x-mock-delay": "0.01"})
                answered += r.status_code == 200
            except httpx.HTTPError:
                if gateway.poll() is not None:
                    return
                await asyncio.sleep(0.01)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}", timeout=5) as client:
        workers = [asyncio.create_task(worker(client)) for _ in range(16)]
        deadline = time.monotonic() + 10
        while answered < 150 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        os.kill(gateway.pid, signal.SIGKILL)  # mid-load: requests are in flight right now
        gateway.wait(timeout=10)
        stop.set()
        await asyncio.gather(*workers)
    assert answered >= 150

    start_gateway().send_signal(signal.SIGTERM)  # the restart opens a new segment, sealing the old one
    await asyncio.sleep(0.5)  # the mock flushes each line as it records it; let in-flight ones land
    shipper = RequestLogShipper(log_dir, db)
    try:
        shipped = await shipper.ship_once()
    finally:
        shipper.close()

    seen = [orjson.loads(line) for line in seen_file.read_bytes().splitlines() if line.strip()]
    seen_ids = {s["request_id"] for s in seen if s.get("path") == "/v1/chat/completions"}
    assert len(seen_ids) >= answered
    with db.read() as session:
        started = set(session.scalars(select(RequestEvent.id).where(RequestEvent.started_at.is_not(None))))
    missing = seen_ids - started
    assert not missing, f"{len(missing)} of {len(seen_ids)} forwarded requests have no durable record: {sorted(missing)[:5]}"
    assert shipped >= len(seen_ids)
    db.dispose()
