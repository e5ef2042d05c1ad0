"""The long-running gateway replica: snapshot refresher, limiter, request log, notifier and upstream client.

Freshness and fail-closed: the snapshot is re-validated on every change notification and every
``snapshot_poll_interval`` (one ``max(audit.seq)`` query; a full recompile only when the revision
moved). A replica that could not confirm its snapshot for ``snapshot_max_age`` seconds refuses every
request with ``policy_stale`` (503) until it can again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from releasegate.detectors.base import DetectorRegistry
from releasegate.detectors.runner import DetectorRunner
from releasegate.gateway.metrics import GatewayMetrics, RequestLogCollector
from releasegate.gateway.routing import UpstreamHealth
from releasegate.gateway.snapshot import Snapshot, compile_snapshot, read_revision
from releasegate.gateway.types import ChangeNotifier, LimitDecision, RateLimiter, RequestLog
from releasegate.gateway.upstream import UpstreamClient
from releasegate.plan.schema import Limits
from releasegate.policy.access import Caller, Decision, is_unlimited
from releasegate.settings import Settings
from releasegate.store.db import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    """Knobs of the data plane that are not policy."""

    max_body_bytes: int = 4 * 1024 * 1024
    body_timeout: float = 30.0  # seconds to receive a whole request body (slow clients)
    upstream_cooldown: float = 5.0  # seconds a failed upstream is skipped
    max_connections: int = 1024  # pooled upstream connections per process
    request_log_dir: Path | None = None
    metrics_max_deployers: int = 100  # deployers with their own metrics label; the rest count as "other"


class GatewayService:
    """One replica's moving parts. ``start``/``stop`` run inside the ASGI lifespan."""

    def __init__(
        self,
        *,
        db: Database,
        settings: Settings,
        limiter: RateLimiter,
        request_log: RequestLog,
        notifier: ChangeNotifier | None = None,
        config: GatewayConfig | None = None,
        wall_clock: Callable[[], float] = time.time,
        shipper: Any = None,
        snapshot_source: Callable[[], Snapshot] | None = None,
        revision_source: Callable[[], int] | None = None,
        closers: tuple[Callable[[], Any], ...] = (),
        detector_registry: DetectorRegistry | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.limiter = limiter
        self.request_log = request_log
        self.notifier = notifier
        self.config = config or GatewayConfig()
        self.now = wall_clock
        self.health = UpstreamHealth(cooldown=self.config.upstream_cooldown)
        self.upstream: UpstreamClient | None = None
        self.snapshot: Snapshot | None = None
        self._verified_at = float("-inf")  # monotonic time the snapshot was last confirmed current
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closers = closers
        self.shipper = shipper  # RequestLogShipper for this replica's log directory, or None
        # Misuse detectors of the models in the snapshot (rebuilt when a plan's detectors change).
        self.detectors = DetectorRunner(request_log, registry=detector_registry,
                                        on_flag=lambda detector, record: note_flag(self, detector, record))
        # Where snapshots come from: the store by default; tests may compile one from fixtures.
        self._compile: Callable[[], Snapshot] = snapshot_source or (lambda: compile_snapshot(self.db))
        self._revision: Callable[[], int] = revision_source or (lambda: read_revision(self.db))
        self.refreshes = 0
        # Prometheus metrics in this replica's own registry (two replicas in one process never share one).
        self.metrics = GatewayMetrics(max_deployers=self.config.metrics_max_deployers)
        self.metrics.watch_snapshot(revision=lambda: self.snapshot.revision if self.snapshot is not None else -1,
                                    age=lambda: min(self.staleness(), 1e9))
        self.metrics.register(RequestLogCollector(request_log, shipper))

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self.upstream = UpstreamClient(self.health, max_connections=self.config.max_connections)
        await self.detectors.start()
        try:
            await self.refresh(force=True)
        except Exception as exc:  # the store may come back; until then every request is policy_stale
            log.error("gateway started without a policy snapshot (%s); refusing requests until the store answers", exc)
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="releasegate-snapshot-refresh"))
        if self.notifier is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="releasegate-change-listener"))
        if self.shipper is not None:
            self._tasks.append(asyncio.create_task(self.shipper.run(), name="releasegate-request-shipper"))
        if self.metrics.shared is not None:
            self._tasks.append(asyncio.create_task(self._publish_metrics(), name="releasegate-metrics-publisher"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.upstream is not None:
            await self.upstream.aclose()
        with contextlib.suppress(Exception):  # before the log closes: queued flags still get written
            await self.detectors.stop()
        for closer in (self.notifier.close if self.notifier else None, self.limiter.close, self.request_log.close):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        if self.shipper is not None:  # ship what the log flushed on close, then let go of the directory
            with contextlib.suppress(Exception):
                await self.shipper.ship_once()
            with contextlib.suppress(Exception):
                self.shipper.close()
        if self.metrics.shared is not None:
            with contextlib.suppress(Exception):
                self.metrics.shared.withdraw()
        for extra in self._closers:
            with contextlib.suppress(Exception):
                result = extra()
                if asyncio.iscoroutine(result):
                    await result

    async def _publish_metrics(self) -> None:
        """A worker of ``gateway --workers N``: publish this replica's metrics every second (``SharedExposition``)."""
        shared = self.metrics.shared
        assert shared is not None
        while True:
            try:
                await asyncio.to_thread(self.metrics.publish)
            except Exception as exc:  # a full disk must not stop the worker; its peers just see older numbers
                log.warning("metrics: could not publish %s's metrics to %s: %s", shared.replica, shared.directory, exc)
            await asyncio.sleep(shared.interval)

    # -- the snapshot --------------------------------------------------------------------------

    def fresh_snapshot(self) -> Snapshot | None:
        """The snapshot, or None when it could not be confirmed within ``snapshot_max_age`` (fail closed)."""
        if time.monotonic() - self._verified_at > self.settings.snapshot_max_age:
            return None
        return self.snapshot

    def staleness(self) -> float:
        return time.monotonic() - self._verified_at

    async def refresh(self, *, force: bool = False) -> bool:
        """Confirm or rebuild the snapshot; True if it was swapped. Raises if the store cannot be read."""
        assert self._lock is not None
        async with self._lock:
            started = time.monotonic()
            current = self.snapshot
            if current is not None and not force:
                revision = await asyncio.to_thread(self._revision)
                if revision == current.revision:
                    self._verified_at = started
                    return False
            snapshot = await asyncio.to_thread(self._compile)
            self.snapshot = snapshot  # one reference swap: requests see the old policy or the new one
            self._verified_at = started
            self.refreshes += 1
            log.info("policy snapshot at revision %d", snapshot.revision)
            await self._configure_detectors(snapshot)
            return True

    async def _configure_detectors(self, snapshot: Snapshot) -> None:
        """Build the detectors the snapshot's plans declare (unchanged ones are kept)."""
        try:
            await self.detectors.configure({
                model: (plan.detectors, {name: uc.description for name, uc in plan.use_cases.items()})
                for model, plan in snapshot.plans.items()})
        except Exception:  # the policy itself is current; broken detectors are logged, not fatal
            log.exception("detectors could not be configured at revision %d", snapshot.revision)

    def poke(self) -> None:
        """Ask for a refresh soon; safe to call from any thread (the control plane's on_change)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(wake.set)

    async def _on_notify(self, revision: int) -> None:
        current = self.snapshot
        if current is None or revision != current.revision:
            assert self._wake is not None
            self._wake.set()

    async def _refresh_loop(self) -> None:
        assert self._wake is not None
        interval = self.settings.snapshot_poll_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("snapshot refresh failed (%s); serving revision %s for at most %.0fs more",
                            exc, self.snapshot.revision if self.snapshot else None,
                            max(0.0, self.settings.snapshot_max_age - self.staleness()))
                await asyncio.sleep(min(interval, 0.5))

    async def _listen(self) -> None:
        assert self.notifier is not None
        while True:
            try:
                await self.notifier.listen(self._on_notify)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # polling covers the gap
                log.warning("change notifications interrupted (%s); polling meanwhile", exc)
                await asyncio.sleep(1.0)

    # -- limits --------------------------------------------------------------------------------

    async def acquire(self, deployer_id: str, limits: Limits, estimated_tokens: int) -> LimitDecision | None:
        """None when no limit applies (nothing reserved), else the limiter's decision."""
        if is_unlimited(limits):
            return None
        return await self.limiter.acquire(deployer_id, limits, estimated_tokens=estimated_tokens, now=self.now())

    async def settle(self, deployer_id: str, limits: Limits, estimated_tokens: int, actual_tokens: int) -> None:
        try:
            await self.limiter.settle(deployer_id, limits, estimated_tokens=estimated_tokens,
                                      actual_tokens=actual_tokens, now=self.now())
        except Exception as exc:  # the reservation expires on its own; the response is not the place to fail
            log.warning("rate limiter settle failed for %s: %s", deployer_id, exc)


def count(service: GatewayService, record: dict[str, Any]) -> None:
    """Count a finished request in the replica's metrics (``/metrics``); a few microseconds, never raises."""
    try:
        service.metrics.observe(record)
    except Exception as exc:  # metrics must never fail a response
        log.warning("metrics: could not count request %s: %s", record.get("id"), exc)


def note_flag(service: GatewayService, detector: str, record: dict[str, Any], n: int = 1) -> None:
    """Count ``n`` requests of ``record`` flagged by ``detector`` (the detectors' hook; never raises)."""
    try:
        service.metrics.note_flag(detector, record, n)
    except Exception as exc:
        log.warning("metrics: could not count a %s flag: %s", detector, exc)


def render_metrics(service: GatewayService) -> bytes:
    """Every metric of the replica (and collectors registered on it) in Prometheus' text exposition format."""
    return service.metrics.render()


def default_replica_name() -> str:
    """``<host>-<pid>``, reduced to the characters a request-log segment name allows."""
    import re
    import socket

    name = re.sub(r"[^A-Za-z0-9_-]", "-", f"{socket.gethostname()}-{os.getpid()}").strip("-_")
    return (name or "replica")[-64:].lstrip("-_") or "replica"


def build_request_log(directory: Path, *, replica: str | None = None, sync: bool = True) -> RequestLog:
    """The durable group-committed log of this replica in ``directory`` (``sync``: fdatasync each batch)."""
    from releasegate.gateway.requestlog import FileRequestLog

    directory.mkdir(parents=True, exist_ok=True)
    return FileRequestLog(directory, replica=replica or default_replica_name(), sync=sync)


def build_notifier(settings: Settings, db_url: str | None = None) -> ChangeNotifier | None:
    """Change fan-out: Redis pub/sub when ``RELEASEGATE_REDIS_URL`` is set, PostgreSQL LISTEN/NOTIFY on
    PostgreSQL, none on SQLite (one process, or replicas that only poll)."""
    from releasegate.gateway.notify import make_notifier

    return make_notifier(settings, db_url or settings.resolved_database_url())


def create_gateway_service(
    settings: Settings,
    *,
    db: Database | None = None,
    request_log_dir: Path | None = None,
    replica: str | None = None,
    config: GatewayConfig | None = None,
    ship: bool = True,
) -> GatewayService:
    """A replica wired from settings: limiter (Redis if configured), durable log + shipper, notifier."""
    from releasegate.gateway.shipper import RequestLogShipper

    owns_db = db is None
    database = db or Database(settings.resolved_database_url())
    directory = request_log_dir or (config.request_log_dir if config and config.request_log_dir else None) \
        or settings.ensure_data_dir() / "requestlog"
    return GatewayService(
        db=database, settings=settings, limiter=build_limiter(settings),
        request_log=build_request_log(Path(directory), replica=replica, sync=settings.request_log_sync), notifier=build_notifier(settings, database.url),
        config=config, shipper=RequestLogShipper(Path(directory), database) if ship else None,
        closers=(database.dispose,) if owns_db else (),
    )


def build_limiter(settings: Settings) -> RateLimiter:
    """Redis counters shared by every replica when ``RELEASEGATE_REDIS_URL`` is set, else in-process."""
    from releasegate.gateway.ratelimit import InMemoryRateLimiter, RedisRateLimiter

    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url)
    return InMemoryRateLimiter()


# -- request records (shared by /v1 and /authz) ----------------------------------------------------


def new_request_id() -> str:
    """A unique id (96 random bits). Not a secret, so from ``random`` (seeded per process by the OS,
    reseeded in forked children): no system call per request, unlike ``os.urandom``."""
    return f"req_{random.getrandbits(96):024x}"


STALE_MESSAGE = ("the gateway could not confirm the current release policy recently enough, so it refuses requests "
          "until it can (fail closed); retry shortly")


def new_record(scope: Any, endpoint: str | None) -> dict[str, Any]:
    return {"id": new_request_id(), "at": time.time(), "_t0": time.perf_counter(), "kind": "v1",
            "method": scope["method"], "path": scope["path"], "endpoint": endpoint}


def note_caller(record: dict[str, Any], caller: Caller) -> None:
    record["key_id"] = caller.key.id
    record["deployer_id"] = caller.deployer.id
    record["use_case"] = caller.key.use_case


def note_decision(record: dict[str, Any], d: Decision) -> None:
    if d.key is not None:
        record["key_id"], record["use_case"] = d.key.id, d.key.use_case
    if d.deployer is not None:
        record["deployer_id"] = d.deployer.id
    if d.version is not None:
        record["model_name"] = d.version.model
        record["version"] = d.version.version
        record["stage"] = d.version.stage_name


def bearer_token(value: bytes | None) -> str | None:
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    if text[:7].lower() == "bearer ":
        return text[7:].strip()
    return None




def start_record(record: dict[str, Any]) -> dict[str, Any]:
    """The durable record written before forwarding (schema in ``gateway.requestlog``)."""
    out = {k: v for k, v in record.items() if k != "_t0"}
    out["decision"] = "allow"
    return out
