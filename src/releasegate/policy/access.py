"""Who may send this request, to which model version, right now. Pure: compiled entries and request facts in, a Decision out.

The order of checks (each denial names the first rule that failed, with a code a deployer can act on):

1. the API key: present, well-formed (checksum), known, hash matches (constant time), not revoked, not expired;
2. the deployer: not suspended, still approved for the key's use case;
3. the model name: resolved within the key's model to one version (``routing`` below);
4. the version: not decommissioned, released (not draft), the deployer in its stage's audience, not halted,
   the stage open on the ``api`` channel;
5. the scope of the key's use case: endpoint, features, parameter bounds, input size.

Limits (rpm, tpm, daily tokens, concurrency) need shared counters, so the gateway asks its rate limiter
after an allowing Decision; the Decision carries the effective (stricter of stage and tier) limits.

Model names a key may send (relative to the key's model, say ``acme/atlas-8b``):
``acme/atlas-8b`` (the plan's first alias, or without aliases the newest released version),
``acme/atlas-8b:<alias>`` or ``<alias>`` (weighted split, sticky per deployer),
``acme/atlas-8b:<version>`` or ``<version>`` (exactly that version). A version name wins over an
alias of the same name. An alias or the bare model name only picks among versions this deployer may
use now, so a halted canary's share falls back to the other targets; naming a version explicitly
never falls back.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from releasegate import credentials
from releasegate.plan.schema import Bounds, Features, Limits

# code -> (HTTP status, OpenAI error type). The single source for /v1, /authz and the docs table.
REASONS: Final[dict[str, tuple[int, str]]] = {
    "invalid_api_key": (401, "authentication_error"),
    "key_revoked": (401, "authentication_error"),
    "key_expired": (401, "authentication_error"),
    "deployer_suspended": (403, "permission_error"),
    "use_case_not_approved": (403, "permission_error"),
    "not_in_audience": (403, "permission_error"),
    "version_halted": (403, "permission_error"),
    "channel_closed": (403, "permission_error"),
    "scope_violation": (403, "permission_error"),
    "content_flagged": (403, "permission_error"),
    "model_required": (400, "invalid_request_error"),
    "model_not_found": (404, "invalid_request_error"),
    "version_not_released": (404, "invalid_request_error"),
    "version_decommissioned": (404, "invalid_request_error"),
    "rate_limited": (429, "rate_limit_error"),
    "limiter_unavailable": (503, "api_error"),
    "policy_stale": (503, "api_error"),
    "log_unavailable": (503, "api_error"),
    "detector_unavailable": (503, "api_error"),
    "upstream_unavailable": (503, "api_error"),
    "upstream_error": (502, "api_error"),
    "upstream_timeout": (504, "api_error"),
    "invalid_json": (400, "invalid_request_error"),
    "invalid_request": (400, "invalid_request_error"),
    "unsupported_media_type": (415, "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error"),
    "request_timeout": (408, "invalid_request_error"),
    "unknown_url": (404, "invalid_request_error"),
    "method_not_allowed": (405, "invalid_request_error"),
}

# Denials a retry cannot fix: the SDK is told not to retry them (x-should-retry: false).
NO_RETRY: Final[frozenset[str]] = frozenset(
    code for code, (status, _) in REASONS.items() if status in (400, 401, 403, 404, 405, 413, 415)
)

ENDPOINTS: Final[tuple[str, ...]] = ("chat.completions", "completions", "embeddings", "responses")


# ------------------------------------------------------------------------------------------ entries


@dataclass(frozen=True, slots=True)
class KeyEntry:
    id: str
    lookup: str
    secret_hash: str
    deployer_id: str
    model: str
    use_case: str
    expires_at: float | None  # unix seconds
    revoked: bool
    revoked_reason: str | None = None


@dataclass(frozen=True, slots=True)
class DeployerEntry:
    id: str
    name: str
    tier: str | None
    status: str  # pending | active | waitlisted | suspended
    status_reason: str | None = None


@dataclass(frozen=True, slots=True)
class VersionEntry:
    """One model version as the gateway needs it: state, stage, who is admitted, effective limits."""

    model: str
    version: str
    state: str
    stage_index: int | None
    stage_name: str | None
    reason: str | None
    channels: frozenset[str]
    admitted: frozenset[str]
    limits_by_tier: Mapping[str | None, Limits]
    upstream_model: str
    has_api: bool

    @property
    def qualified(self) -> str:
        return f"{self.model}:{self.version}"

    def limits_for(self, tier: str | None) -> Limits:
        found = self.limits_by_tier.get(tier)
        return found if found is not None else self.limits_by_tier.get(None, UNLIMITED)


@dataclass(frozen=True, slots=True)
class ScopeRule:
    """What one use case allows: endpoints, features and parameter bounds."""

    use_case: str
    endpoints: frozenset[str]
    features: Features
    bounds: Bounds


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    versions: Mapping[str, VersionEntry]
    version_order: tuple[str, ...]  # declaration order in the plan; the last is the newest
    aliases: Mapping[str, tuple[tuple[str, int], ...]]
    default_alias: str | None
    use_cases: Mapping[str, ScopeRule]


@dataclass(frozen=True, slots=True)
class PolicyView:
    """Everything a decision reads, compiled from the store at one revision."""

    revision: int
    keys: Mapping[str, KeyEntry]  # by lookup id
    deployers: Mapping[str, DeployerEntry]
    models: Mapping[str, ModelEntry]
    grants: frozenset[tuple[str, str, str]]  # (deployer_id, model, use_case)
    # The same keys by secret_hash (SHA-256 of the whole key): one C hash and one dict lookup
    # authenticate a known key; ``authenticate`` falls back to ``keys`` for what it misses.
    keys_by_hash: Mapping[str, KeyEntry] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What a request asks for, as far as the policy cares. ``None`` means "not stated"."""

    endpoint: str | None
    model: str | None
    stream: bool = False
    tools: bool = False
    images: bool = False
    logprobs: bool = False
    n: int = 1
    response_format: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    input_chars: int = 0
    body_seen: bool = True  # False for edge-proxy checks: features and bounds are then unknown


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    code: str | None = None
    message: str = ""
    param: str | None = None  # the rule or request field a denial is about
    key: KeyEntry | None = None
    deployer: DeployerEntry | None = None
    version: VersionEntry | None = None
    limits: Limits | None = None

    @property
    def status(self) -> int:
        return 200 if self.code is None else REASONS[self.code][0]


UNLIMITED: Final[Limits] = Limits()


def _deny(code: str, message: str, *, param: str | None = None, key: KeyEntry | None = None,
          deployer: DeployerEntry | None = None, version: VersionEntry | None = None) -> Decision:
    return Decision(False, code, message, param, key, deployer, version)


# ------------------------------------------------------------------------------------------ limits


def stricter(a: Limits | None, b: Limits | None) -> Limits:
    """Field by field, the smaller of two limits (unset means unlimited at that level)."""
    if a is None:
        return b or UNLIMITED
    if b is None:
        return a

    def low(x: int | None, y: int | None) -> int | None:
        if x is None:
            return y
        return x if y is None else min(x, y)

    return Limits(rpm=low(a.rpm, b.rpm), tpm=low(a.tpm, b.tpm), daily_tokens=low(a.daily_tokens, b.daily_tokens),
                  concurrency=low(a.concurrency, b.concurrency))


def is_unlimited(limits: Limits) -> bool:
    return limits.rpm is None and limits.tpm is None and limits.daily_tokens is None and limits.concurrency is None


# ------------------------------------------------------------------------------------------ keys


def authenticate(view: PolicyView, token: str | None, now: float) -> KeyEntry | Decision:
    """The key entry for ``token``, or a denial (invalid_api_key, key_revoked, key_expired)."""
    if not token:
        return _deny("invalid_api_key", "no API key: send it as 'Authorization: Bearer rgk_…'", param="authorization")
    # Looking a key up by the hash of all of it compares digests, never the secret: a timing
    # difference could only tell an attacker about SHA-256 outputs of keys they already hold.
    key = view.keys_by_hash.get(credentials.hash_secret(token))
    if key is None:  # a malformed, unknown or mistyped key (or a view built without the index)
        parsed = credentials.parse(token, "rgk")
        if parsed is None:
            return _deny("invalid_api_key", "the API key is not a valid releasegate key (malformed or mistyped); "
                         "copy it again from where it was issued", param="authorization")
        key = view.keys.get(parsed.lookup)
        if key is None or not credentials.matches(token, key.secret_hash):
            return _deny("invalid_api_key", "the API key is not known to this gateway", param="authorization")
    if key.revoked:
        why = f": {key.revoked_reason}" if key.revoked_reason else ""
        return _deny("key_revoked", f"API key {key.id} was revoked{why}; ask your organisation for a new key", key=key)
    if key.expires_at is not None and key.expires_at <= now:
        return _deny("key_expired", f"API key {key.id} has expired; rotate or issue a new key", key=key)
    return key


def _deployer(view: PolicyView, key: KeyEntry) -> DeployerEntry | Decision:
    d = view.deployers.get(key.deployer_id)
    if d is None or d.status == "suspended":
        why = f": {d.status_reason}" if d is not None and d.status_reason else ""
        return _deny("deployer_suspended", f"deployer {d.name if d else key.deployer_id} is suspended{why}", key=key, deployer=d)
    if (d.id, key.model, key.use_case) not in view.grants:
        return _deny("use_case_not_approved", f"{d.name} is no longer approved for use case {key.use_case!r} of {key.model}",
                     key=key, deployer=d)
    return d


# ------------------------------------------------------------------------------------------ routing


def sticky_point(name: str, deployer_id: str) -> float:
    """A stable number in [0, 1) for this deployer and alias: the same version on every replica and request."""
    return (zlib.crc32(f"{name}\x00{deployer_id}".encode()) % 100_000) / 100_000


def pick_weighted(targets: tuple[tuple[str, int], ...], point: float) -> str | None:
    """The target whose cumulative weight band contains ``point``; moving weight moves only the deployers in between."""
    total = sum(w for _, w in targets if w > 0)
    if total <= 0:
        return None
    at = point * total
    acc = 0.0
    chosen: str | None = None
    for version, weight in targets:
        if weight <= 0:
            continue
        acc += weight
        chosen = version
        if at < acc:
            return version
    return chosen


def check_version(v: VersionEntry, d: DeployerEntry) -> Decision | None:
    """A denial if ``d`` may not use version ``v`` now, else None."""
    if v.state == "decommissioned":
        return _deny("version_decommissioned", f"{v.qualified} is decommissioned and no longer served", param="model",
                     deployer=d, version=v)
    if v.state == "draft" or v.stage_index is None:
        return _deny("version_not_released", f"{v.qualified} has not been released yet", param="model", deployer=d, version=v)
    if not v.has_api:
        return _deny("model_not_found", f"{v.qualified} is not served through the API", param="model", deployer=d, version=v)
    if d.id not in v.admitted:
        if d.status == "waitlisted":
            msg = f"{d.name} is on the waitlist and not yet admitted to stage {v.stage_name!r} of {v.qualified}"
        elif v.state == "paused":
            msg = f"{v.qualified} is paused in stage {v.stage_name!r}: it admits no new deployers; {d.name} is not among its audience"
        else:
            msg = f"{d.name} is not in the audience of stage {v.stage_name!r} of {v.qualified}"
        return _deny("not_in_audience", msg, param="model", deployer=d, version=v)
    if v.state == "halted":
        why = f": {v.reason}" if v.reason else ""
        return _deny("version_halted", f"{v.qualified} is halted{why}", param="model", deployer=d, version=v)
    if "api" not in v.channels:
        return _deny("channel_closed", f"stage {v.stage_name!r} of {v.qualified} does not open the API channel",
                     param="model", deployer=d, version=v)
    return None


def _choose(m: ModelEntry, name: str, targets: tuple[tuple[str, int], ...], d: DeployerEntry) -> VersionEntry | Decision:
    """Sticky weighted pick among targets ``d`` may use now; if none, the sticky pick's own denial."""
    eligible = tuple((v, w) for v, w in targets if v in m.versions and check_version(m.versions[v], d) is None)
    point = sticky_point(name, d.id)
    picked = pick_weighted(eligible, point)
    if picked is not None:
        return m.versions[picked]
    fallback = pick_weighted(tuple((v, w) for v, w in targets if v in m.versions), point)
    if fallback is None:
        return _deny("model_not_found", f"{name!r} of {m.name} has no version to serve", param="model", deployer=d)
    denial = check_version(m.versions[fallback], d)
    assert denial is not None
    return denial


def resolve(m: ModelEntry, name: str, d: DeployerEntry) -> VersionEntry | Decision:
    """The version ``name`` means for deployer ``d`` (see the module docstring), or a denial."""
    if name == m.name:
        if m.default_alias is not None:
            return _choose(m, m.default_alias, m.aliases[m.default_alias], d)
        for version in reversed(m.version_order):
            if check_version(m.versions[version], d) is None:
                return m.versions[version]
        return check_version(m.versions[m.version_order[-1]], d) or _deny(
            "model_not_found", f"{m.name} has no version to serve", param="model", deployer=d)
    prefix = m.name + ":"
    suffix = name[len(prefix):] if name.startswith(prefix) else name
    v = m.versions.get(suffix)
    if v is not None:
        return check_version(v, d) or v
    targets = m.aliases.get(suffix)
    if targets is not None:
        return _choose(m, suffix, targets, d)
    return _deny("model_not_found", f"the model {name!r} does not exist or this key may not use it; this key is for "
                 f"{m.name} (GET /v1/models lists the names it may use)", param="model", deployer=d)


def model_names(m: ModelEntry, d: DeployerEntry) -> list[str]:
    """The model names ``d`` may send now, for ``GET /v1/models``."""
    names: list[str] = []
    if not isinstance(resolve(m, m.name, d), Decision):
        names.append(m.name)
    for alias in m.aliases:
        if alias not in m.versions and not isinstance(_choose(m, alias, m.aliases[alias], d), Decision):
            names.append(f"{m.name}:{alias}")
    for version in m.version_order:
        if check_version(m.versions[version], d) is None:
            names.append(f"{m.name}:{version}")
    return names


# ------------------------------------------------------------------------------------------ scope


def check_scope(rule: ScopeRule, f: RequestFacts) -> tuple[str, str] | None:
    """(rule, message) for the first way the request leaves its use case's scope, else None."""
    uc = f"use case {rule.use_case!r}"
    if f.endpoint is not None and f.endpoint not in rule.endpoints:
        return "endpoints", f"{uc} allows the endpoints {', '.join(sorted(rule.endpoints))}; the request used {f.endpoint}"
    if not f.body_seen:
        return None
    feats, b = rule.features, rule.bounds
    if f.stream and not feats.streaming:
        return "features.streaming", f"{uc} does not allow streaming; the request asked for stream=true"
    if f.tools and not feats.tools:
        return "features.tools", f"{uc} does not allow tools or function calling; the request included tools"
    if f.images and not feats.images:
        return "features.images", f"{uc} does not allow image inputs; the request included an image"
    if f.logprobs and not feats.logprobs:
        return "features.logprobs", f"{uc} does not allow logprobs; the request asked for them"
    if f.response_format and not feats.response_format:
        return "features.response_format", f"{uc} does not allow response_format (structured output); the request set it"
    if f.n > feats.n_max:
        return "features.n_max", f"{uc} allows n ≤ {feats.n_max}; the request asked for {f.n}"
    if b.max_tokens is not None and f.max_tokens is not None and f.max_tokens > b.max_tokens:
        return "bounds.max_tokens", f"{uc} allows max_tokens ≤ {b.max_tokens}; the request asked for {f.max_tokens}"
    if b.temperature is not None and f.temperature is not None and not b.temperature[0] <= f.temperature <= b.temperature[1]:
        return "bounds.temperature", (f"{uc} allows temperature in [{b.temperature[0]:g}, {b.temperature[1]:g}]; "
                                      f"the request asked for {f.temperature:g}")
    if b.top_p is not None and f.top_p is not None and not b.top_p[0] <= f.top_p <= b.top_p[1]:
        return "bounds.top_p", f"{uc} allows top_p in [{b.top_p[0]:g}, {b.top_p[1]:g}]; the request asked for {f.top_p:g}"
    if b.max_input_chars is not None and f.input_chars > b.max_input_chars:
        return "bounds.max_input_chars", (f"{uc} allows at most {b.max_input_chars} input characters; "
                                          f"the request has {f.input_chars}")
    return None


# ------------------------------------------------------------------------------------------ decide


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated key with its deployer (for listing models without a request body)."""

    key: KeyEntry
    deployer: DeployerEntry
    model: ModelEntry | None = field(default=None)


def identify(view: PolicyView, token: str | None, now: float) -> Caller | Decision:
    """Steps 1-2: the key and its deployer, or the denial."""
    key = authenticate(view, token, now)
    if isinstance(key, Decision):
        return key
    d = _deployer(view, key)
    if isinstance(d, Decision):
        return d
    return Caller(key, d, view.models.get(key.model))


def decide(view: PolicyView, token: str | None, facts: RequestFacts, now: float) -> Decision:
    """Whether the holder of ``token`` may send this request now, and to which version."""
    caller = identify(view, token, now)
    if isinstance(caller, Decision):
        return caller
    return authorize(caller, facts)


def authorize(caller: Caller, facts: RequestFacts) -> Decision:
    """Steps 3-5 for an identified caller: the version its request resolves to and the scope check."""
    key, d, m = caller.key, caller.deployer, caller.model
    if m is None:
        return _deny("model_not_found", f"model {key.model} has no release plan any more", param="model", key=key, deployer=d)
    if not facts.model:
        return _deny("model_required", f"the request names no model; use {m.name} or one listed by GET /v1/models",
                     param="model", key=key, deployer=d)
    v = resolve(m, facts.model, d)
    if isinstance(v, Decision):
        return Decision(False, v.code, v.message, v.param, key, d, v.version)
    rule = m.use_cases.get(key.use_case)
    if rule is None:
        return _deny("use_case_not_approved", f"use case {key.use_case!r} is no longer in the plan of {m.name}",
                     key=key, deployer=d, version=v)
    violation = check_scope(rule, facts)
    if violation is not None:
        return _deny("scope_violation", violation[1], param=violation[0], key=key, deployer=d, version=v)
    return Decision(True, None, "", None, key, d, v, v.limits_for(d.tier))
