"""Typed evidence records: what an importer makes of an evaluation log or a red-team report.

An ``EvalResult`` is one number a gate can judge (suite, task, metric, value); a ``Finding``
is one red-team finding; an ``ImportBatch`` is everything one source file yielded, bound to
the SHA-256 of that file's bytes so a verdict can name exactly the evidence it relied on.

Records are frozen and check their own invariants; importers check the same rules earlier,
where they can still say which line or field of the file is at fault.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Severity(StrEnum):
    """How serious a finding is, from ``low`` to ``critical``."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class FindingStatus(StrEnum):
    """Where a finding stands: ``open`` until triaged, mitigated or closed."""

    OPEN = "open"
    TRIAGED = "triaged"
    MITIGATED = "mitigated"
    CLOSED = "closed"


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


def _require_text(value: object, name: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _require_aware(value: datetime | None, name: str) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must carry a UTC offset, got {value.isoformat()}")


@dataclass(frozen=True, slots=True)
class EvalResult:
    """One metric value from one evaluation run, with where it came from.

    ``model`` is the model as the log names it (``mockllm/model``, ``EleutherAI/pythia-160m``);
    mapping it to a releasegate ModelVersion is the caller's decision, not the importer's.
    """

    suite: str
    task: str | None
    metric: str
    value: float
    source_format: str
    source_sha256: str
    source_name: str
    stderr: float | None = None
    model: str | None = None
    samples: int | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _require_text(self.suite, "suite")
        _require_text(self.metric, "metric")
        if self.task is not None:
            _require_text(self.task, "task")
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise ValueError(f"value must be a number, got {self.value!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"value must be finite, got {self.value!r}")
        if self.stderr is not None and (
            isinstance(self.stderr, bool)
            or not isinstance(self.stderr, int | float)
            or not math.isfinite(self.stderr)
            or self.stderr < 0
        ):
            raise ValueError(f"stderr must be a finite number >= 0, got {self.stderr!r}")
        if self.samples is not None and (
            isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 0
        ):
            raise ValueError(f"samples must be an integer >= 0, got {self.samples!r}")
        _require_aware(self.started_at, "started_at")
        _require_aware(self.completed_at, "completed_at")
        object.__setattr__(self, "value", float(self.value))
        if self.stderr is not None:
            object.__setattr__(self, "stderr", float(self.stderr))
        object.__setattr__(self, "extra", _frozen(self.extra))

    @property
    def key(self) -> tuple[str, str | None, str, str | None]:
        """The identity of this result within one batch: (suite, task, metric, model)."""
        return (self.suite, self.task, self.metric, self.model)


@dataclass(frozen=True, slots=True)
class Finding:
    """One red-team finding as reported, with where it came from."""

    title: str
    severity: Severity
    source_format: str
    source_sha256: str
    source_name: str
    status: FindingStatus = FindingStatus.OPEN
    description: str = ""
    reproduction: str = ""
    model: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _require_text(self.title, "title")
        object.__setattr__(self, "severity", Severity(self.severity))
        object.__setattr__(self, "status", FindingStatus(self.status))
        object.__setattr__(self, "extra", _frozen(self.extra))


@dataclass(frozen=True, slots=True)
class ImportBatch:
    """Everything one source file yielded, bound to the SHA-256 of its bytes.

    ``warnings`` are things a reviewer should see that did not make the file unusable.
    """

    source_format: str
    source_sha256: str
    source_name: str
    results: tuple[EvalResult, ...] = ()
    findings: tuple[Finding, ...] = ()
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "results", tuple(self.results))
        object.__setattr__(self, "findings", tuple(self.findings))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        if len(self.source_sha256) != 64:
            raise ValueError(f"source_sha256 must be 64 hex digits, got {self.source_sha256!r}")
