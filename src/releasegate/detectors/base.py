"""The detector plug-in interface: what a detector is given, what it answers, how it is registered.

Contract of ``Detector.inspect(item)``:

* return ``None``: nothing found (the request passes this detector);
* return a ``Flag``: the request is flagged (the flag is recorded on the request's record and
  counted for ``flag_rate`` gates and halt rules under the detector's plan name);
* raise ``DetectorUnavailable``: the detector could not judge (endpoint down, timeout...). This is
  recorded as an error, never as a pass; an ``inline`` detector that cannot judge refuses the
  request (fail closed).

Any other exception is treated like ``DetectorUnavailable``. ``inspect`` runs on the gateway's
event loop: blocking work (model inference) belongs in ``asyncio.to_thread``.

Detector kinds are registered in a ``DetectorRegistry`` with a factory ``(name, settings) ->
Detector``. The built-in kinds (``patterns``, ``moderation``, ``scope_drift``) are registered
through the same door as a user's (``register_builtins``), and a package can add kinds through the
``releasegate.detectors`` entry-point group: each entry point is a ``register(registry)`` function.
"""

from __future__ import annotations

import abc
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from releasegate.detectors.settings import BUILTIN_SETTINGS, Mode, common_settings, kind_settings
from releasegate.errors import InvalidInput

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "releasegate.detectors"


class DetectorUnavailable(Exception):
    """The detector could not judge this request (recorded as an error, never as a pass)."""


@dataclass(frozen=True, slots=True)
class DetectionInput:
    """One request as detectors see it. ``output_text`` is None when the answer is not inspected."""

    request_id: str
    deployer_id: str
    use_case: str
    use_case_description: str
    model: str
    version: str
    endpoint: str
    input_text: str
    output_text: str | None = None


@dataclass(frozen=True, slots=True)
class Flag:
    """What a detector found: ``category`` is its word for it, ``score`` its strength (kind-specific)."""

    detector: str
    category: str
    score: float | None = None
    detail: str = ""

    def record(self) -> dict[str, Any]:
        """The flag as stored on the request's record (keyed by detector name there)."""
        return {"category": self.category, "score": self.score, "detail": self.detail[:300]}


class Detector(abc.ABC):
    """A misuse detector (module docstring for the contract). ``name`` is its plan name."""

    name: str
    # True for a detector that only computes (nothing to wait for): the runner then calls
    # ``inspect_now`` directly, without the per-call timer (which could not interrupt it anyway).
    synchronous: ClassVar[bool] = False

    @abc.abstractmethod
    async def inspect(self, item: DetectionInput) -> Flag | None:
        """A Flag, None (nothing found), or raise DetectorUnavailable (could not judge)."""

    def inspect_now(self, item: DetectionInput) -> Flag | None:
        """``inspect`` without the event loop, for ``synchronous`` detectors."""
        raise NotImplementedError(f"{type(self).__name__} is not synchronous")

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most detectors hold nothing
        """Release what the detector holds (connections, models); called when the plan changes."""


Factory = Callable[[str, dict[str, Any]], Detector]


@dataclass
class DetectorRegistry:
    """Detector kinds by name. ``register`` refuses to replace a kind unless ``replace=True``."""

    factories: dict[str, Factory] = field(default_factory=dict)

    def register(self, kind: str, factory: Factory, *, replace: bool = False) -> None:
        if kind in self.factories and not replace:
            raise InvalidInput(f"a detector kind {kind!r} is already registered; pass replace=True to replace it",
                               code="detector_kind_taken")
        self.factories[kind] = factory

    def kinds(self) -> list[str]:
        return sorted(self.factories)


def register_builtins(registry: DetectorRegistry) -> None:
    """Register ``patterns``, ``moderation`` and ``scope_drift`` (their modules import lazily)."""

    def patterns(name: str, settings: dict[str, Any]) -> Detector:
        from releasegate.detectors.patterns import PatternDetector

        return PatternDetector.from_settings(name, settings)

    def moderation(name: str, settings: dict[str, Any]) -> Detector:
        from releasegate.detectors.moderation import ModerationDetector

        return ModerationDetector.from_settings(name, settings)

    def scope_drift(name: str, settings: dict[str, Any]) -> Detector:
        from releasegate.detectors.scope_drift import ScopeDriftDetector

        return ScopeDriftDetector.from_settings(name, settings)

    registry.register("patterns", patterns)
    registry.register("moderation", moderation)
    registry.register("scope_drift", scope_drift)


def default_registry(*, plugins: bool = True) -> DetectorRegistry:
    """The built-in kinds, then every ``releasegate.detectors`` entry point's ``register(registry)``."""
    registry = DetectorRegistry()
    register_builtins(registry)
    if plugins:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()(registry)
            except Exception as exc:  # one broken plugin must not take the gateway down
                log.error("detector plugin %s could not be registered: %s", ep.value, exc)
    return registry


@dataclass(frozen=True, slots=True)
class ConfiguredDetector:
    """A built detector with the plan's common settings: how often and where it runs."""

    name: str
    kind: str
    detector: Detector
    sample: float = 1.0
    mode: Mode = "async"

    def sampled(self, request_id: str) -> bool:
        """Stable per request: the same id always gets the same answer for this detector."""
        if self.sample >= 1.0:
            return True
        if self.sample <= 0.0:
            return False
        digest = hashlib.blake2b(f"{self.name}\0{request_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.sample


def checked_settings(name: str, raw: Any, model: type[Any] | None) -> dict[str, Any]:
    """``raw``'s kind-specific settings validated by ``model``; InvalidInput naming detector and field."""
    assert isinstance(raw, dict)
    if model is None:
        return {k: v for k, v in raw.items() if k not in ("kind", "sample", "mode")}
    parsed, problems = kind_settings(model, raw)
    if problems:
        field_name, message = problems[0]
        raise InvalidInput(f"detector {name!r}: {field_name or 'settings'}: {message}", code="invalid_detector",
                           details={"detector": name, "field": field_name, "problems": problems})
    assert parsed is not None
    return dict(parsed.model_dump())


def build_detectors(settings: Mapping[str, Any], registry: DetectorRegistry) -> dict[str, ConfiguredDetector]:
    """Build every detector a plan declares; InvalidInput naming the detector and field on bad settings."""
    built: dict[str, ConfiguredDetector] = {}
    for name, raw in settings.items():
        common, problems = common_settings(raw)
        if common is None:
            field_name, message = problems[0]
            raise InvalidInput(f"detector {name!r}: {field_name or 'settings'}: {message}", code="invalid_detector",
                               details={"detector": name, "field": field_name})
        factory = registry.factories.get(common.kind)
        if factory is None:
            raise InvalidInput(f"detector {name!r}: unknown kind {common.kind!r}; known kinds: "
                               f"{', '.join(registry.kinds())}", code="unknown_detector_kind",
                               details={"detector": name, "field": "kind"})
        own = checked_settings(name, raw, BUILTIN_SETTINGS.get(common.kind) if _is_builtin(registry, common.kind)
                               else None)
        detector = factory(name, own)
        built[name] = ConfiguredDetector(name=name, kind=common.kind, detector=detector, sample=common.sample,
                                         mode=common.mode)
    return built


def _is_builtin(registry: DetectorRegistry, kind: str) -> bool:
    # A user who replaced a built-in kind brings their own settings: do not hold them to ours.
    return kind in BUILTIN_SETTINGS and getattr(registry.factories[kind], "__module__", "") == __name__


async def close_all(detectors: Iterable[ConfiguredDetector]) -> None:
    """``aclose`` every detector, logging (never raising) failures."""
    for c in detectors:
        try:
            await c.detector.aclose()
        except Exception as exc:
            log.warning("detector %s did not close cleanly: %s", c.name, exc)
