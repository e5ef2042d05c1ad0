"""Running a replica's detectors: off the hot path on a bounded queue, or inline before forwarding.

``DetectorRunner`` is owned by the gateway service. ``configure`` (re)builds each model's
detectors from its plan when the plan's ``detectors`` or use case descriptions change. For a
served request the gateway calls ``submit``, which never waits: a full queue drops the request's
inspection and counts it in ``dropped``. ``workers`` tasks take requests off the queue and run
the sampled detectors concurrently, each bounded by ``timeout``; when any flags or cannot judge,
one ``flags`` record goes to the request log with the request's id::

    {"id": ..., "kind": "flags", "flags": {name: {category, score, detail}}, "detector_errors": {name: message}}

so every (request, detector) pair is recorded at most once; the shipper merges it into the
request's event and counts each flag once in ``RequestBucket.flagged``. ``inspect_inline`` runs
the ``inline`` detectors on the input before forwarding and returns what they found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from releasegate.detectors.base import (
    ConfiguredDetector,
    DetectionInput,
    Detector,
    DetectorRegistry,
    DetectorUnavailable,
    Flag,
    build_detectors,
    close_all,
    default_registry,
)
from releasegate.detectors.settings import common_settings

log = logging.getLogger(__name__)

Findings = tuple[dict[str, dict[str, Any]], dict[str, str]]  # (flags by detector, errors by detector)
OnFlag = Callable[[str, dict[str, Any]], None]  # (detector, the request's record) -> count it somewhere
Job = tuple[DetectionInput, tuple[ConfiguredDetector, ...], dict[str, Any]]


class _Unbuildable(Detector):
    """Stands in for a detector whose settings or dependencies are broken: it never judges."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    async def inspect(self, item: DetectionInput) -> Flag | None:
        raise DetectorUnavailable(f"detector {self.name!r} could not be built: {self.reason}")


@dataclass(frozen=True)
class ModelDetectors:
    """One model's detectors, split by mode, and its use cases' descriptions."""

    asynchronous: tuple[ConfiguredDetector, ...]
    inline: tuple[ConfiguredDetector, ...]
    descriptions: Mapping[str, str]
    source: Any = None  # what they were built from, to skip rebuilding an unchanged plan

    def all(self) -> tuple[ConfiguredDetector, ...]:
        return self.asynchronous + self.inline


@dataclass
class RunnerStats:
    submitted: int = 0
    dropped: int = 0  # inspections skipped because the queue was full
    flags: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


class DetectorRunner:
    """Bounded queue + worker tasks over a request log (module docstring)."""

    def __init__(self, request_log: Any, *, registry: DetectorRegistry | None = None, workers: int = 2,
                 queue_size: int = 1000, timeout: float = 10.0, on_flag: OnFlag | None = None) -> None:
        self.request_log = request_log
        self.registry = registry
        self.workers = workers
        self.queue_size = queue_size
        self.timeout = timeout
        self.on_flag = on_flag
        self.models: dict[str, ModelDetectors] = {}  # model name -> detectors; empty when none configured
        self.stats = RunnerStats()
        self._queue: asyncio.Queue[Job] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.registry is None:
            self.registry = default_registry()
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._tasks = [asyncio.create_task(self._work(), name=f"releasegate-detector-{i}") for i in range(self.workers)]

    async def stop(self, *, drain: float = 2.0) -> None:
        """Finish what is queued (at most ``drain`` seconds), stop the workers, close every detector."""
        if self._queue is not None and self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout=drain)
            self.stats.dropped += self._queue.qsize()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for entry in self.models.values():
            await close_all(entry.all())
        self.models = {}

    # -- configuration -------------------------------------------------------------------------

    async def configure(self, plans: Mapping[str, tuple[Mapping[str, Any], Mapping[str, str]]]) -> None:
        """Build the detectors of each model from ``{model: (plan detectors, use case descriptions)}``.

        Models whose settings did not change keep their detectors (and loaded encoders). A detector
        that cannot be built is replaced by one that never judges, so its errors are recorded (and an
        inline one refuses requests: fail closed) instead of its checks silently stopping.
        """
        if self.registry is None:
            self.registry = default_registry()
        models: dict[str, ModelDetectors] = {}
        retired: list[ConfiguredDetector] = []
        for model, (settings, descriptions) in plans.items():
            source = (repr(sorted(settings.items())), tuple(sorted(descriptions.items())))
            current = self.models.get(model)
            if current is not None and current.source == source:
                models[model] = current
                continue
            if current is not None:
                retired.extend(current.all())
            if not settings:
                continue
            built = [self._build_one(name, raw) for name, raw in settings.items()]
            models[model] = ModelDetectors(
                asynchronous=tuple(c for c in built if c.mode == "async"),
                inline=tuple(c for c in built if c.mode == "inline"),
                descriptions=dict(descriptions), source=source,
            )
        retired.extend(c for model, entry in self.models.items() if model not in plans for c in entry.all())
        self.models = models  # one reference swap, like the snapshot
        await close_all(retired)

    def _build_one(self, name: str, raw: Any) -> ConfiguredDetector:
        assert self.registry is not None
        try:
            return build_detectors({name: raw}, self.registry)[name]
        except Exception as exc:
            log.error("detector %r cannot be built, its checks are recorded as errors: %s", name, exc)
            common, _ = common_settings(raw)
            return ConfiguredDetector(name=name, kind=common.kind if common else "?", detector=_Unbuildable(name, str(exc)),
                                      sample=common.sample if common else 1.0, mode=common.mode if common else "async")

    # -- inspection ----------------------------------------------------------------------------

    def submit(self, item: DetectionInput, detectors: tuple[ConfiguredDetector, ...],
               context: dict[str, Any] | None = None) -> None:
        """Queue ``item`` for the sampled ones of ``detectors``; never waits (a full queue drops it).

        ``context`` (the gateway's record of the request) is handed to ``on_flag`` with each flag.
        """
        chosen = tuple(c for c in detectors if c.sampled(item.request_id))
        if not chosen or self._queue is None:
            return
        try:
            self._queue.put_nowait((item, chosen, context or {}))
            self.stats.submitted += 1
        except asyncio.QueueFull:
            self.stats.dropped += 1

    async def inspect_inline(self, item: DetectionInput, detectors: tuple[ConfiguredDetector, ...],
                             context: dict[str, Any] | None = None) -> Findings:
        """Run the sampled ones of ``detectors`` now; flags and errors by detector name."""
        chosen = tuple(c for c in detectors if c.sampled(item.request_id))
        if not chosen:
            return {}, {}
        return await self._inspect(item, chosen, context or {})

    async def _inspect(self, item: DetectionInput, detectors: tuple[ConfiguredDetector, ...],
                       context: dict[str, Any]) -> Findings:
        if len(detectors) == 1:  # the usual case: no task per detector (gather wraps each in one)
            results: list[Flag | str | None] = [await self._one(detectors[0], item)]
        else:
            results = list(await asyncio.gather(*(self._one(c, item) for c in detectors)))
        flags: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for c, result in zip(detectors, results, strict=True):
            if isinstance(result, Flag):
                flags[c.name] = result.record()
                self.stats.flags[c.name] = self.stats.flags.get(c.name, 0) + 1
                if self.on_flag is not None:
                    try:
                        self.on_flag(c.name, context)
                    except Exception as exc:  # counting must never lose the flag itself
                        log.warning("on_flag failed for %s: %s", c.name, exc)
            elif isinstance(result, str):
                errors[c.name] = result
                self.stats.errors[c.name] = self.stats.errors.get(c.name, 0) + 1
        return flags, errors

    async def _one(self, c: ConfiguredDetector, item: DetectionInput) -> Flag | str | None:
        """The detector's Flag, None, or the reason it could not judge."""
        try:
            if c.detector.synchronous:
                return c.detector.inspect_now(item)
            async with asyncio.timeout(self.timeout):
                return await c.detector.inspect(item)
        except TimeoutError:
            return f"no answer within {self.timeout:g}s"
        except DetectorUnavailable as exc:
            return str(exc) or "unavailable"
        except Exception as exc:  # a buggy plug-in is an error to record, not a pass
            log.warning("detector %s failed on %s: %r", c.name, item.request_id, exc)
            return f"{type(exc).__name__}: {exc}"[:300]

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            item, detectors, context = await self._queue.get()
            try:
                flags, errors = await self._inspect(item, detectors, context)
                if flags or errors:
                    record: dict[str, Any] = {"id": item.request_id, "flags": flags}
                    if errors:
                        record["detector_errors"] = errors
                    self.request_log.record_flags(record)
            except Exception:
                log.exception("detector run failed for %s", item.request_id)
            finally:
                self._queue.task_done()
