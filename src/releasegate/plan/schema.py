"""The release plan: one model, its versions, use cases, tiers, terms and ordered stages.

These frozen pydantic models are the typed core the rest of releasegate speaks. They do
no I/O. Loading YAML with line numbers lives in ``plan.loader``; checks that need the whole
plan (unknown roles, shrinking audiences...) live in ``plan.validate``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

Channel = Literal["api", "weights"]
Endpoint = Literal["chat.completions", "completions", "embeddings", "responses"]
Severity = Literal["low", "medium", "high", "critical"]
HaltAction = Literal["halt", "pause", "rollback", "suspend_deployer"]

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"
MODEL_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """Parse ``30s``, ``15m``, ``1h``, ``14d``, ``2w`` (or a number of seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m, 24h or 14d")
    seconds: float | None = None
    if isinstance(value, int | float):
        # A bare number is ambiguous (is `min: 14` fourteen days or seconds?): make the unit explicit.
        raise ValueError(f"a duration needs a unit: write {value}s, {value}m, {value}h or {value}d")
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds is None:
        raise ValueError(f"expected a duration such as 30m, 24h or 14d, got {value!r}")
    if seconds != seconds or seconds < 0:  # NaN compares unequal to itself
        raise ValueError(f"a duration cannot be negative or NaN, got {value!r}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {value!r} is too long") from None


def format_duration(td: timedelta) -> str:
    """The shortest exact spelling of ``td`` that ``parse_duration`` reads back, e.g. ``2w``."""
    if td.microseconds:
        return f"{td.total_seconds():g}s"
    seconds = int(td.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?(s|m|h|d|w)$", "examples": ["30m", "24h", "14d"]}),
]


def _default_endpoints() -> list[Endpoint]:
    return ["chat.completions"]


def _default_severities() -> list[Severity]:
    return ["high", "critical"]


def _default_channels() -> list[Channel]:
    return ["api"]


class Strict(BaseModel):
    """Base for plan parts: unknown fields are errors, instances are immutable."""

    # NaN and infinity would make every comparison in a gate false: reject them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------- versions


class ApiBackend(Strict):
    """Where a version is served: an OpenAI-compatible upstream pool."""

    upstreams: list[str] = Field(min_length=1, description="Base URLs of OpenAI-compatible servers, e.g. http://127.0.0.1:8001/v1.")
    upstream_model: str | None = Field(default=None, description="Model name the upstream expects; defaults to the version name.")
    upstream_key_env: str | None = Field(default=None, description="Environment variable holding the upstream API key.")
    upstream_key_file: str | None = Field(default=None, description="File holding the upstream API key (secret mounts).")
    timeout: Duration = Field(default=timedelta(seconds=120), description="How long to wait for an upstream response.")

    @field_validator("upstreams")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"^https?://[^\s/]+", url):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return [u.rstrip("/") for u in value]


class WeightsSource(Strict):
    """Where a version's weight files are (a directory of safetensors, config, tokenizer)."""

    path: str = Field(description="Directory with the weight files, relative to the plan file.")


class Version(Strict):
    api: ApiBackend | None = Field(default=None, description="The hosted API backend of this version.")
    weights: WeightsSource | None = Field(default=None, description="The weight files of this version.")
    description: str = ""


# ---------------------------------------------------------------------------- use cases


class Features(Strict):
    """Request features a use case may use. Anything not allowed is a scope violation."""

    tools: bool = Field(default=False, description="Tool / function calling.")
    images: bool = Field(default=False, description="Image inputs.")
    logprobs: bool = Field(default=False, description="Log probabilities in the output.")
    streaming: bool = Field(default=True, description="Server-sent-event streaming.")
    response_format: bool = Field(default=True, description="Structured output via response_format.")
    n_max: int = Field(default=1, ge=1, le=128, description="Largest number of choices (n) per request.")


class Bounds(Strict):
    """Parameter bounds a use case's requests must stay within."""

    max_tokens: int | None = Field(default=None, ge=1, description="Largest max_tokens / max_completion_tokens allowed.")
    temperature: tuple[float, float] | None = Field(default=None, description="Allowed [min, max] temperature.")
    top_p: tuple[float, float] | None = Field(default=None, description="Allowed [min, max] top_p.")
    max_input_chars: int | None = Field(default=None, ge=1, description="Largest total input size in characters.")

    @field_validator("temperature", "top_p")
    @classmethod
    def _range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"range [{value[0]}, {value[1]}] has its minimum above its maximum")
        return value


class UseCase(Strict):
    description: str = Field(min_length=1, description="What deployers may do under this use case; shown to applicants and used by the scope-drift detector.")
    endpoints: list[Endpoint] = Field(default_factory=_default_endpoints, description="API endpoints this use case may call.")
    features: Features = Field(default_factory=Features)
    bounds: Bounds = Field(default_factory=Bounds)
    requires_tier: str | None = Field(default=None, description="Only deployers in this tier can be approved for it.")


class Limits(Strict):
    """Per-deployer limits. Unset means unlimited at this level."""

    rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute.")
    daily_tokens: int | None = Field(default=None, ge=1, description="Tokens per UTC day.")
    concurrency: int | None = Field(default=None, ge=1, description="Requests in flight at once.")


class Tier(Strict):
    description: str = ""
    limits: Limits | None = Field(default=None, description="Tier limits; the stricter of tier and stage applies.")


class TermsDoc(Strict):
    file: str = Field(description="Markdown file with the terms, relative to the plan file.")
    summary: str | None = Field(default=None, description="Plain summary of the restrictions (use, modification, redistribution).")


# ---------------------------------------------------------------------------- audience


class Audience(Strict):
    """Who a stage admits. Deployers must also be approved for a use case."""

    tiers: list[str] = Field(default_factory=list, description="Tiers admitted in full.")
    deployers: list[str] = Field(default_factory=list, description="Deployers admitted by name, whatever their tier.")
    max_deployers: int | None = Field(default=None, ge=0, description="Cap on admitted deployers (earliest approved first).")
    waitlist_percent: float | None = Field(default=None, ge=0, le=100, description="Stable share of waitlisted deployers admitted (hash of the deployer id, so widening only adds).")
    everyone: bool = Field(default=False, description="Every approved deployer.")


# ---------------------------------------------------------------------------- gate criteria


class TimeInStage(Strict):
    min: Duration = Field(description="Minimum time in the current stage, e.g. 14d.")


class EvalCriterion(Strict):
    suite: str
    metric: str
    min: float | None = None
    max: float | None = None
    version: str = Field(default="this", description="Which version the evidence must be about; 'this' is the version being promoted.")
    max_age: Duration | None = Field(default=None, description="Evidence older than this is stale.")

    @model_validator(mode="after")
    def _bound(self) -> EvalCriterion:
        if self.min is None and self.max is None:
            raise ValueError("an eval criterion needs min, max or both")
        return self


class FindingsCriterion(Strict):
    severity: list[Severity] = Field(default_factory=_default_severities)
    open_max: int = Field(default=0, ge=0, description="Most open findings of these severities.")


class IncidentsCriterion(Strict):
    severity: list[Severity] = Field(default_factory=_default_severities)
    window: Duration | None = Field(default=None, description="Look back this far; unset means the whole stage.")
    max: int = Field(default=0, ge=0)


class TrafficCriterion(Strict):
    min_requests: int = Field(default=0, ge=0)
    min_deployers: int = Field(default=0, ge=0)


class FlagRateCriterion(Strict):
    detector: str
    max: float = Field(ge=0, le=1, description="Highest acceptable flag rate (upper confidence bound).")
    confidence: float = Field(default=0.95, gt=0, lt=1)
    min_requests: int = Field(default=100, ge=1)
    window: Duration | None = None


class ApprovalsCriterion(Strict):
    roles: list[str] = Field(min_length=1)
    min: int = Field(default=1, ge=1, description="Distinct approvers needed, holding any of the roles; the requester does not count.")


class PeersCriterion(Strict):
    posture: str = Field(description="Coordination posture to respect, e.g. comparable_models_open_or_consensus.")


def _single_key(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value)))
    if isinstance(value, BaseModel):
        fields = [k for k, v in value.__dict__.items() if v is not None]
        return fields[0] if len(fields) == 1 else None
    return None


class _TimeInStageC(Strict):
    time_in_stage: TimeInStage


class _EvalC(Strict):
    eval: EvalCriterion


class _FindingsC(Strict):
    findings: FindingsCriterion


class _IncidentsC(Strict):
    incidents: IncidentsCriterion


class _TrafficC(Strict):
    traffic: TrafficCriterion


class _FlagRateC(Strict):
    flag_rate: FlagRateCriterion


class _ApprovalsC(Strict):
    approvals: ApprovalsCriterion


class _PeersC(Strict):
    peers: PeersCriterion


CRITERION_KINDS: tuple[str, ...] = (
    "time_in_stage", "eval", "findings", "incidents", "traffic", "flag_rate", "approvals", "peers",
)

Criterion = Annotated[
    Annotated[_TimeInStageC, Tag("time_in_stage")]
    | Annotated[_EvalC, Tag("eval")]
    | Annotated[_FindingsC, Tag("findings")]
    | Annotated[_IncidentsC, Tag("incidents")]
    | Annotated[_TrafficC, Tag("traffic")]
    | Annotated[_FlagRateC, Tag("flag_rate")]
    | Annotated[_ApprovalsC, Tag("approvals")]
    | Annotated[_PeersC, Tag("peers")],
    Discriminator(_single_key, custom_error_type="unknown_kind", custom_error_message="expected a single key naming the criterion kind"),
]


def criterion_kind(criterion: BaseModel) -> str:
    """The kind of a gate criterion or halt rule, e.g. ``eval``."""
    kind = _single_key(criterion)
    assert kind is not None
    return kind


def criterion_spec(criterion: BaseModel) -> Any:
    """The parameters of a gate criterion or halt rule (the value under its single key)."""
    return getattr(criterion, criterion_kind(criterion))


# ---------------------------------------------------------------------------- halt rules


class IncidentRule(Strict):
    severity: Severity = "critical"
    action: HaltAction = "halt"


class FlagRateRule(Strict):
    detector: str
    window: Duration = Field(default=timedelta(hours=1))
    max: float = Field(ge=0, le=1)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    min_requests: int = Field(default=100, ge=1)
    action: HaltAction = "pause"


class ScopeViolationsRule(Strict):
    per_deployer_rate: float = Field(ge=0, le=1)
    window: Duration = Field(default=timedelta(hours=24))
    min_requests: int = Field(default=20, ge=1)
    action: HaltAction = "suspend_deployer"


class ErrorRateRule(Strict):
    max: float = Field(ge=0, le=1)
    window: Duration = Field(default=timedelta(minutes=15))
    min_requests: int = Field(default=100, ge=1)
    action: HaltAction = "pause"


class _IncidentR(Strict):
    incident: IncidentRule


class _FlagRateR(Strict):
    flag_rate: FlagRateRule


class _ScopeR(Strict):
    scope_violations: ScopeViolationsRule


class _ErrorRateR(Strict):
    error_rate: ErrorRateRule


HALT_RULE_KINDS: tuple[str, ...] = ("incident", "flag_rate", "scope_violations", "error_rate")

HaltRule = Annotated[
    Annotated[_IncidentR, Tag("incident")]
    | Annotated[_FlagRateR, Tag("flag_rate")]
    | Annotated[_ScopeR, Tag("scope_violations")]
    | Annotated[_ErrorRateR, Tag("error_rate")],
    Discriminator(_single_key, custom_error_type="unknown_kind", custom_error_message="expected a single key naming the halt rule kind"),
]


# ---------------------------------------------------------------------------- weights


FormFieldType = Literal["text", "checkbox", "date", "country", "select"]


class FormField(Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: FormFieldType = "text"
    label: str | None = None
    required: bool = False
    options: list[str] | None = None

    @model_validator(mode="after")
    def _options(self) -> FormField:
        if self.type == "select" and not self.options:
            raise ValueError(f"select field {self.name!r} needs options")
        if self.type != "select" and self.options:
            raise ValueError(f"only select fields take options ({self.name!r} is {self.type})")
        return self


class AutoApprove(Strict):
    email_domains: list[str] = Field(default_factory=list, description="Requester e-mail domains approved automatically ('.edu' matches any .edu domain).")
    countries_not: list[str] = Field(default_factory=list, description="Countries (ISO 3166 alpha-2) never approved automatically.")
    admitted_tiers: list[str] = Field(default_factory=list, description="Requesters whose organisation is a deployer in these tiers.")


class Vetting(Strict):
    auto_approve: AutoApprove | None = None
    otherwise: Literal["manual", "reject"] = "manual"


class WeightsPolicy(Strict):
    terms: str = Field(description="Terms document id that licensees must accept.")
    form: list[FormField] = Field(default_factory=list)
    vetting: Vetting = Field(default_factory=Vetting)
    grant_days: int | None = Field(default=None, ge=1, description="Grants expire after this many days (re-vetting).")
    fingerprint: bool = Field(default=True, description="Give each licensee a fingerprinted copy.")
    tiers: list[str] | None = Field(default=None, description="Tiers the weights channel opens to; unset means everyone vetted.")


# ---------------------------------------------------------------------------- stages


class Stage(Strict):
    name: str = Field(pattern=NAME_RE)
    description: str = ""
    channels: list[Channel] = Field(default_factory=_default_channels, min_length=1)
    audience: Audience = Field(default_factory=Audience)
    limits: Limits = Field(default_factory=Limits)
    gate: list[Criterion] = Field(default_factory=list, description="Criteria that must pass to enter this stage.")
    halt_on: list[HaltRule] = Field(default_factory=list, description="Rules that act automatically while in this stage.")
    weights: WeightsPolicy | None = None
    auto_promote: bool = Field(default=False, description="The controller promotes into this stage by itself once every criterion passes.")
    narrows_audience: bool = Field(default=False, description="Acknowledge that this stage admits less than the previous one.")


class Plan(Strict):
    model: str = Field(pattern=MODEL_RE, description="The model's repository-style name, org/name.")
    description: str = ""
    versions: dict[str, Version] = Field(min_length=1)
    aliases: dict[str, dict[str, int]] = Field(default_factory=dict, description="Alias -> {version: weight}; weights split traffic, sticky per deployer.")
    use_cases: dict[str, UseCase] = Field(min_length=1)
    tiers: dict[str, Tier] = Field(min_length=1)
    roles: dict[str, list[str]] = Field(default_factory=dict, description="Approval role -> e-mail addresses of the people holding it.")
    terms: dict[str, TermsDoc] = Field(default_factory=dict)
    detectors: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Detector name -> its settings (kind, sample, patterns...).")
    stages: list[Stage] = Field(min_length=1)

    @field_validator("versions", "use_cases", "tiers", "roles", "terms", "aliases")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.match(NAME_RE, name):
                raise ValueError(f"{name!r} is not a valid name (lowercase letters, digits, '.', '_' or '-')")
        return value

    def stage_index(self, name: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.name == name:
                return i
        raise KeyError(name)
