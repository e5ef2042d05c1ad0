"""Prometheus metrics of one gateway replica, with bounded label cardinality.

Every ``GatewayMetrics`` owns its own ``CollectorRegistry`` (never prometheus_client's global
default), so two apps in one process (two replicas in a test, say) count separately.

Cardinality is bounded by construction, whatever the traffic:

* ``model``, ``version``, ``stage``, ``use_case`` come from the compiled policy snapshot (the
  key's use case, the version the decision resolved to), never from the request body, so they
  are bounded by the release plans; refusals before the version is known carry ``""``.
* ``deployer``: the first ``max_deployers`` distinct deployer ids seen get their own value, every
  later one is counted as ``other`` (``""`` = the request named no known deployer).
* ``code`` takes values only from the closed reason-code set (``policy.access.REASONS`` plus
  ``client_disconnected``), ``none`` for a request that was served, ``other`` for anything else;
  ``outcome`` is ``allowed``/``denied``/``error``; ``limit`` is one of ``LIMITS``.
* ``rule`` (scope violations) and ``detector`` (flags) are capped like deployers (``MAX_RULES``,
  ``MAX_DETECTORS``), although both are bounded by the plan already.

The hot path (``observe``) costs one dict lookup for the label tuple and a few integer additions
on plain per-tuple accumulators (1.5-4 µs per served request on a shared 2-core machine); a
collector turns them into prometheus_client metric families at scrape time. (``Counter`` and
``Histogram`` children cached per tuple cost 8-13 µs here: every increment takes a lock.)
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from releasegate.policy.access import REASONS

#: The exposition format's content type (text format 0.0.4).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: Label values of ``outcome`` and ``limit``; anything else is reported as ``other``.
OUTCOMES: frozenset[str] = frozenset({"allowed", "denied", "error"})
LIMITS: frozenset[str] = frozenset({"rpm", "tpm", "daily_tokens", "concurrency", "limiter_unavailable"})
#: The closed set of ``code`` label values besides ``none`` and ``other``.
CODES: frozenset[str] = frozenset(REASONS) | {"client_disconnected"}

MAX_RULES = 64
MAX_DETECTORS = 64
OTHER = "other"

#: Seconds: sub-millisecond gateway overhead up to the 60 s a long generation may take.
LATENCY_BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                      0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

VERSION_LABELS = ("model", "version", "stage")
LABELS = (*VERSION_LABELS, "use_case", "deployer")

SCOPE_VIOLATIONS = "releasegate_scope_violations"
FLAGS = "releasegate_flags"
RATE_LIMITED = "releasegate_rate_limit_denials"
#: Counter families of rare events: name -> (help, labels).
RARE_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    SCOPE_VIOLATIONS: ("Requests refused for leaving their use case's scope, by the rule they broke.", (*LABELS, "rule")),
    FLAGS: ("Requests flagged by a detector.", (*LABELS, "detector")),
    RATE_LIMITED: ("Requests refused by a rate limit, by the limit.", (*VERSION_LABELS, "deployer", "limit")),
}


class CappedLabel:
    """Maps raw values to at most ``limit`` distinct label values; later newcomers become ``other``."""

    __slots__ = ("_seen", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self._seen: dict[str, str] = {"": ""}  # "" (unknown) never uses up a slot

    def __call__(self, value: str) -> str:
        """The label value for ``value``: itself while there is room (or it already has one), else ``other``."""
        label = self._seen.get(value)
        if label is not None:
            return label
        if len(self._seen) - 1 >= self.limit:
            return OTHER  # not remembered: the map stays bounded too
        self._seen[value] = value
        return value

    def __len__(self) -> int:
        return len(self._seen) - 1


class _Series:
    """Plain accumulators of one label tuple, updated on the event loop without locks (see ``GatewayMetrics``)."""

    __slots__ = ("buckets", "completion", "phases", "prompt", "requests", "seconds")

    def __init__(self) -> None:
        self.phases: tuple[_Series, _Series] | None = None  # (upstream, gateway) of the same version, once needed
        self.requests = 0
        self.prompt = 0
        self.completion = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.seconds = 0.0


def _histogram_buckets(counts: list[int]) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return out


class GatewayMetrics:
    """One replica's metrics in a private registry (module docstring).

    Thread model: ``observe`` runs on the replica's event loop only, and updates plain integers
    (no locks: a ``labels().inc()`` round trip costs several microseconds); the collector reads
    them at scrape time from another thread, which at worst misses a request counted meanwhile.
    Rare events (scope violations, rate-limit denials, flags, which detectors may report from any
    thread) are counted under a lock.
    """

    def __init__(self, *, max_deployers: int = 100) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.shared: SharedExposition | None = None  # set for a worker of ``gateway --workers N``
        r = self.registry
        self.deployer = CappedLabel(max_deployers)
        self._rule = CappedLabel(MAX_RULES)
        self._detector = CappedLabel(MAX_DETECTORS)
        self._series: dict[tuple[str, ...], _Series] = {}  # (*LABELS, outcome, code) -> accumulators
        self._phases: dict[tuple[str, ...], _Series] = {}  # (*VERSION_LABELS, phase) -> latency only
        r.register(_HotCollector(self))
        # Rare events (refusals, flags) may come from detector threads: counted under a lock.
        self._lock = threading.Lock()
        self._rare: dict[tuple[str, tuple[str, ...]], int] = {}  # (family, labels) -> count
        self.snapshot_revision = Gauge("releasegate_snapshot_revision", "Revision of the policy snapshot in use "
                                       "(-1: none yet).", registry=r)
        self.snapshot_age = Gauge("releasegate_snapshot_age_seconds", "Seconds since the policy snapshot was last "
                                  "confirmed current.", registry=r)

    # -- scrape-time values ---------------------------------------------------------------------

    def watch_snapshot(self, revision: Callable[[], float], age: Callable[[], float]) -> None:
        """Read the snapshot gauges from these callables at each scrape."""
        self.snapshot_revision.set_function(revision)
        self.snapshot_age.set_function(age)

    def register(self, collector: Collector) -> None:
        """Add a collector (e.g. ``services.metrics.ControlPlaneCollector``) to this replica's exposition."""
        self.registry.register(collector)

    def render(self) -> bytes:
        """The whole registry in Prometheus' text exposition format (with ``shared``: every worker's)."""
        own = generate_latest(self.registry)
        return own if self.shared is None else self.shared.render(own)

    def publish(self) -> None:
        """Publish this worker's exposition to the other workers (``shared`` only; from any thread)."""
        if self.shared is not None:
            self.shared.publish(generate_latest(self.registry))

    # -- the hot path ---------------------------------------------------------------------------

    def _base(self, record: dict[str, Any]) -> tuple[str, str, str, str, str]:
        return (record.get("model_name") or "", record.get("version") or "", record.get("stage") or "",
                record.get("use_case") or "", self.deployer(record.get("deployer_id") or ""))

    def observe(self, record: dict[str, Any]) -> None:
        """Count one finished request (the gateway's end record: outcome, reason, tokens, latency)."""
        base = self._base(record)
        outcome = record.get("outcome") or ""
        if outcome not in OUTCOMES:
            outcome = OTHER
        reason = record.get("reason_code")
        code = "none" if not reason else reason if reason in CODES else OTHER
        key = (*base, outcome, code)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.requests += 1
        prompt, completion = record.get("prompt_tokens"), record.get("completion_tokens")
        if prompt:
            series.prompt += prompt
        if completion:
            series.completion += completion
        upstream_ms = record.get("upstream_ms")
        latency_ms = record.get("latency_ms")
        if upstream_ms is not None and latency_ms is not None:  # it was sent to a model server
            seconds = latency_ms / 1000
            series.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            series.seconds += seconds
            phases = series.phases or self._phases_of(series, base)
            seconds = upstream_ms / 1000
            phases[0].buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            phases[0].seconds += seconds
            seconds = max(0.0, latency_ms - upstream_ms) / 1000
            phases[1].buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            phases[1].seconds += seconds
        if record.get("scope_violation"):
            self._add(SCOPE_VIOLATIONS, (*base, self._rule(str(record.get("rule") or ""))), 1)
        limit = record.get("limit")
        if limit is not None and outcome == "denied":
            self._add(RATE_LIMITED, (base[0], base[1], base[2], base[4], limit if limit in LIMITS else OTHER), 1)

    def _phases_of(self, series: _Series, base: tuple[str, ...]) -> tuple[_Series, _Series]:
        pair = []
        for phase in ("upstream", "gateway"):
            key = (base[0], base[1], base[2], phase)
            found = self._phases.get(key)
            if found is None:
                found = self._phases[key] = _Series()
            pair.append(found)
        series.phases = (pair[0], pair[1])
        return series.phases

    def note_flag(self, detector: str, record: dict[str, Any], n: int = 1) -> None:
        """Count ``n`` requests flagged by ``detector`` (the detectors' hook; safe from any thread)."""
        # The capped maps are shared with the event loop unlocked: a race can at worst admit one extra value.
        self._add(FLAGS, (*self._base(record), self._detector(detector)), n)

    def _add(self, family: str, labels: tuple[str, ...], n: int) -> None:
        with self._lock:
            key = (family, labels)
            self._rare[key] = self._rare.get(key, 0) + n

    # -- scrape ---------------------------------------------------------------------------------

    def collect_hot(self) -> Iterator[Metric]:
        """The request, token and latency families from the hot-path accumulators."""
        requests = CounterMetricFamily("releasegate_requests", "Requests finished by this replica, by outcome and "
                                       "reason code.", labels=(*LABELS, "outcome", "code"))
        tokens = CounterMetricFamily("releasegate_tokens", "Tokens reported by the model server for served requests.",
                                     labels=(*LABELS, "kind"))
        duration = HistogramMetricFamily("releasegate_request_duration_seconds", "Time from arrival to the last byte "
                                         "of the answer, for requests sent to a model server.", labels=LABELS)
        phase = HistogramMetricFamily("releasegate_request_phase_seconds", "Requests sent to a model server, split into "
                                      "the model server's time (upstream) and the gateway's own (gateway).",
                                      labels=(*VERSION_LABELS, "phase"))
        latency: dict[tuple[str, ...], tuple[list[int], float]] = {}
        used: dict[tuple[str, ...], tuple[int, int]] = {}  # tokens and latency have no outcome/code labels: summed
        for key, s in list(self._series.items()):  # list(): the event loop may add a series meanwhile
            base = key[:5]
            requests.add_metric(key, s.requests)
            if s.prompt or s.completion:
                prompt, completion = used.get(base, (0, 0))
                used[base] = (prompt + s.prompt, completion + s.completion)
            if s.seconds or any(s.buckets):
                counts, seconds = latency.get(base, ([0] * len(s.buckets), 0.0))
                latency[base] = ([a + b for a, b in zip(counts, s.buckets, strict=True)], seconds + s.seconds)
        for base, (prompt, completion) in used.items():
            tokens.add_metric((*base, "prompt"), prompt)
            tokens.add_metric((*base, "completion"), completion)
        for base, (counts, seconds) in latency.items():
            duration.add_metric(base, _histogram_buckets(counts), seconds)
        for key, s in list(self._phases.items()):
            phase.add_metric(key, _histogram_buckets(list(s.buckets)), s.seconds)
        rare = {name: CounterMetricFamily(name, doc, labels=labels) for name, (doc, labels) in RARE_FAMILIES.items()}
        with self._lock:
            rare_counts = list(self._rare.items())
        for (family, labels), n in sorted(rare_counts):
            rare[family].add_metric(labels, n)
        yield from (requests, tokens, duration, phase, *rare.values())


class _HotCollector:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect_hot()


#: The durable log's counters: (attribute of the log or shipper, metric name, help).
REQUEST_LOG_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("records_written", "releasegate_request_log_records", "Records (start, end, flags) made durable in the local log."),
    ("batches", "releasegate_request_log_batches", "Group commits: writes of one or more records with one sync."),
    ("fsyncs", "releasegate_request_log_syncs", "fdatasync calls on the log (preallocation included)."),
    ("inline_writes", "releasegate_request_log_inline_writes", "Batches written on the event loop by an idle replica "
     "(no thread hand-off)."),
    ("preallocations", "releasegate_request_log_preallocations", "Zero-filled extensions of a log segment."),
    ("write_failures", "releasegate_request_log_write_failures", "Batches that could not be made durable (their requests "
     "were refused)."),
    ("dropped_ends", "releasegate_request_log_dropped_records", "End or flags records lost (log closed, or too many to "
     "retry after failures)."),
)
SHIPPER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("shipped_records", "releasegate_request_log_shipped_records", "Records loaded from the local log into the store."),
    ("skipped_lines", "releasegate_request_log_skipped_lines", "Unparsable complete lines the shipper skipped."),
)


class RequestLogCollector:
    """The durable request log's and its shipper's counters, read at scrape time (absent ones are
    skipped: a test's in-memory log has none)."""

    def __init__(self, request_log: object, shipper: object | None) -> None:
        self._log = request_log
        self._shipper = shipper

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for source, counters in ((self._log, REQUEST_LOG_COUNTERS), (self._shipper, SHIPPER_COUNTERS)):
            for attribute, name, doc in counters:
                value = getattr(source, attribute, None)
                if isinstance(value, int):
                    family = CounterMetricFamily(name, doc)
                    family.add_metric((), value)
                    yield family
        sync = getattr(self._log, "sync_seconds", None)
        if isinstance(sync, float):
            gauge = GaugeMetricFamily("releasegate_request_log_sync_seconds", "Recent write+sync time of a batch "
                                      "(moving average over about five batches).")
            gauge.add_metric((), sync)
            yield gauge


class SharedExposition:
    """The metrics of the worker processes of one ``releasegate gateway --workers N``.

    A scrape reaches one worker, chosen by the kernel; alone, its counters would jump between the
    workers' values. So each worker publishes its own exposition to ``directory`` (``publish``,
    every second, written to a temporary file and renamed into place), and any worker answers a
    scrape with every worker's samples, each labelled ``replica="<worker's replica name>"``: its own
    live, the others' as of their last publication (at most ``interval`` old). A worker that stops
    withdraws its file; one that died stops counting after ``stale_after`` seconds. Sum over
    ``replica`` for the whole server, e.g. ``sum without (replica) (rate(releasegate_requests_total[5m]))``.
    """

    SUFFIX = ".prom"

    def __init__(self, directory: Path, replica: str, *, interval: float = 1.0, stale_after: float = 30.0) -> None:
        self.directory = Path(directory)
        self.replica = replica
        self.interval = interval
        self.stale_after = stale_after

    @property
    def path(self) -> Path:
        return self.directory / f"{self.replica}{self.SUFFIX}"

    @classmethod
    def reset(cls, directory: Path) -> None:
        """Create ``directory`` empty of expositions (before starting workers: an earlier run's are stale)."""
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob(f"*{cls.SUFFIX}"):
            old.unlink(missing_ok=True)

    def publish(self, text: bytes) -> None:
        """Make ``text`` (this worker's exposition) what the other workers serve for it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{self.replica}.{os.getpid()}.tmp"
        tmp.write_bytes(text)
        os.replace(tmp, self.path)

    def withdraw(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def render(self, own: bytes) -> bytes:
        """Every live worker's samples in one exposition, ``own`` (this worker's, current) included."""
        texts: dict[str, str] = {self.replica: own.decode()}
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.directory.glob(f"*{self.SUFFIX}")):
                name = path.name[: -len(self.SUFFIX)]
                if name == self.replica:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime <= self.stale_after:
                        texts[name] = path.read_text()
        families: dict[str, Metric] = {}
        for replica, text in texts.items():
            try:
                parsed = list(text_string_to_metric_families(text))
            except ValueError:  # a file cut short cannot happen (rename), a foreign one can: skip it
                continue
            for family in parsed:
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "replica": replica}, sample.value,
                                      sample.timestamp, sample.exemplar)
        return generate_latest(_Families(list(families.values())))


class _Families:
    """A collector of fixed families (what ``generate_latest`` reads)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def series_count(registry: CollectorRegistry, names: Iterable[str] | None = None) -> int:
    """How many samples the registry exposes (optionally only for metric families in ``names``)."""
    wanted = set(names) if names is not None else None
    return sum(len(m.samples) for m in registry.collect() if wanted is None or m.name in wanted)
