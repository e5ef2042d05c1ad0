"""Checks that need the whole plan: references between its parts and the shape of the rollout.

``validate_plan`` runs every check over a plan the schema already accepted and returns
``PlanIssue``s; errors make loading fail, warnings are shown and kept. The checks are pure
(the terms-file check is the one exception, and it is only run when given a ``base_dir``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from releasegate.detectors.settings import BUILTIN_SETTINGS, settings_problems
from releasegate.plan.schema import (
    Audience,
    FlagRateCriterion,
    FlagRateRule,
    Plan,
    Stage,
    criterion_kind,
    criterion_spec,
)

IssueSeverity = Literal["error", "warning"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_LAST_SEGMENT = re.compile(r'(\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\]|\["(?:[^"\\]|\\.)*"\])$')


@dataclass(frozen=True)
class PlanIssue:
    """One problem in a release plan, located by field path and (when known) line and column.

    ``str(issue)`` reads like ``plan.yaml:42:7: stages[1].audience.tierz: unknown field; did
    you mean 'tiers'?``; warnings carry ``warning:`` after the location.
    """

    severity: IssueSeverity
    code: str
    message: str
    path: str = ""
    line: int | None = None
    column: int | None = None
    source: str = "<plan>"
    hint: str | None = None

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        parts = [where]
        if self.severity == "warning":
            parts.append("warning")
        if self.path:
            parts.append(self.path)
        text = ": ".join(parts) + ": " + self.message
        return f"{text}; {self.hint}" if self.hint else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "source": self.source,
            "hint": self.hint,
        }


def join_path(parent: str, key: str | int) -> str:
    """Extend a field path: ``stages`` + 1 -> ``stages[1]``; ``tiers`` + ``a.b`` -> ``tiers["a.b"]``."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if _IDENTIFIER.match(key):
        return f"{parent}.{key}" if parent else key
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'{parent}["{escaped}"]'


def parent_path(path: str) -> str:
    """The path one level up (``stages[1].gate`` -> ``stages[1]``); ``""`` at the top."""
    m = _LAST_SEGMENT.search(path)
    return path[: m.start()] if m else ""


def did_you_mean(word: str, candidates: Collection[str]) -> str | None:
    """A ``did you mean 'x'?`` hint for a misspelt name, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _choices(candidates: Collection[str]) -> str:
    if not candidates:
        return "none are declared"
    return "declared: " + ", ".join(sorted(candidates))


def _error(code: str, path: str, message: str, hint: str | None = None) -> PlanIssue:
    return PlanIssue("error", code, message, path=path, hint=hint)


def _warning(code: str, path: str, message: str, hint: str | None = None) -> PlanIssue:
    return PlanIssue("warning", code, message, path=path, hint=hint)


def _unknown(code: str, path: str, what: str, name: str, known: Collection[str]) -> PlanIssue:
    hint = did_you_mean(name, known) or _choices(known)
    return _error(code, path, f"unknown {what} '{name}'", hint)


def _stage_path(i: int) -> str:
    return f"stages[{i}]"


# ---------------------------------------------------------------------------- audience


def audience_reductions(before: Audience, after: Audience, *, cap_added: bool = False) -> list[str]:
    """Ways ``after`` admits fewer deployers than ``before`` (empty when it admits as many or more).

    A ``max_deployers`` cap where there was none counts only with ``cap_added=True``: between
    stages a cap usually comes with new tiers, while on a live stage it can cut people off.
    """
    if after.everyone:
        return []
    if before.everyone:
        return ["everyone is no longer admitted"]
    reasons = [f"tier '{t}' dropped" for t in before.tiers if t not in after.tiers]
    reasons += [f"deployer '{d}' dropped" for d in before.deployers if d not in after.deployers]
    if after.max_deployers is not None:
        if before.max_deployers is None and cap_added:
            reasons.append(f"max_deployers capped at {after.max_deployers} (was no cap)")
        elif before.max_deployers is not None and after.max_deployers < before.max_deployers:
            reasons.append(f"max_deployers lowered from {before.max_deployers} to {after.max_deployers}")
    before_pct = before.waitlist_percent or 0.0
    after_pct = after.waitlist_percent or 0.0
    if after_pct < before_pct:
        reasons.append(f"waitlist_percent lowered from {before_pct:g} to {after_pct:g}")
    return reasons


# ---------------------------------------------------------------------------- checks

Check = Callable[[Plan], Iterator[PlanIssue]]


def check_stage_names(plan: Plan) -> Iterator[PlanIssue]:
    first_at: dict[str, int] = {}
    for i, stage in enumerate(plan.stages):
        if stage.name in first_at:
            yield _error(
                "duplicate_stage",
                f"{_stage_path(i)}.name",
                f"stage name '{stage.name}' is already used by stages[{first_at[stage.name]}]",
                "give every stage its own name",
            )
        else:
            first_at[stage.name] = i


def check_tier_references(plan: Plan) -> Iterator[PlanIssue]:
    known = plan.tiers.keys()
    for name, use_case in plan.use_cases.items():
        if use_case.requires_tier is not None and use_case.requires_tier not in known:
            path = join_path(join_path("use_cases", name), "requires_tier")
            yield _unknown("unknown_tier", path, "tier", use_case.requires_tier, known)
    for i, stage in enumerate(plan.stages):
        refs: list[tuple[str, Sequence[str]]] = [(f"{_stage_path(i)}.audience.tiers", stage.audience.tiers)]
        if stage.weights is not None:
            if stage.weights.tiers is not None:
                refs.append((f"{_stage_path(i)}.weights.tiers", stage.weights.tiers))
            auto = stage.weights.vetting.auto_approve
            if auto is not None:
                refs.append((f"{_stage_path(i)}.weights.vetting.auto_approve.admitted_tiers", auto.admitted_tiers))
        for base, tiers in refs:
            for j, tier in enumerate(tiers):
                if tier not in known:
                    yield _unknown("unknown_tier", f"{base}[{j}]", "tier", tier, known)


def check_gate_references(plan: Plan) -> Iterator[PlanIssue]:
    """Approval roles and eval versions named in gates must be declared."""
    for i, stage in enumerate(plan.stages):
        for j, criterion in enumerate(stage.gate):
            kind = criterion_kind(criterion)
            spec = criterion_spec(criterion)
            base = f"{_stage_path(i)}.gate[{j}].{kind}"
            if kind == "approvals":
                for k, role in enumerate(spec.roles):
                    if role not in plan.roles:
                        yield _unknown("unknown_role", f"{base}.roles[{k}]", "role", role, plan.roles.keys())
            elif kind == "eval" and spec.version != "this" and spec.version not in plan.versions:
                hint = did_you_mean(spec.version, plan.versions.keys()) or (
                    "use 'this' for the version being promoted, or one of: "
                    + ", ".join(sorted(plan.versions))
                )
                yield _error("unknown_version", f"{base}.version", f"unknown version '{spec.version}'", hint)


def check_detectors(plan: Plan) -> Iterator[PlanIssue]:
    """Flag-rate criteria and rules should name a declared detector (a warning: detectors can be built in)."""
    for i, stage in enumerate(plan.stages):
        rules: list[tuple[str, int, BaseModel]] = [("gate", j, c) for j, c in enumerate(stage.gate)]
        rules += [("halt_on", j, r) for j, r in enumerate(stage.halt_on)]
        for section, j, item in rules:
            spec = criterion_spec(item)
            if isinstance(spec, FlagRateCriterion | FlagRateRule) and spec.detector not in plan.detectors:
                hint = did_you_mean(spec.detector, plan.detectors.keys()) or (
                    "declare it under detectors:, or make sure a detector plugin of that name is installed"
                )
                yield _warning(
                    "unknown_detector",
                    f"{_stage_path(i)}.{section}[{j}].flag_rate.detector",
                    f"detector '{spec.detector}' is not declared in detectors:",
                    hint,
                )


def check_detector_settings(plan: Plan) -> Iterator[PlanIssue]:
    """Each detector names a kind; a built-in kind's settings must be valid (an unknown kind is a
    warning: a detector plugin may provide it, and the gateway records errors if none does)."""
    for name, raw in plan.detectors.items():
        base = join_path("detectors", name)
        kind, problems = settings_problems(raw)
        for field, message in problems:
            yield _error("invalid_detector", join_path(base, field) if field else base,
                         f"detector '{name}': {message}")
        if kind is not None and kind not in BUILTIN_SETTINGS:
            hint = did_you_mean(kind, BUILTIN_SETTINGS.keys()) or (
                "built-in kinds: " + ", ".join(sorted(BUILTIN_SETTINGS)) + "; or install the plugin that provides it")
            yield _warning("unknown_detector_kind", join_path(base, "kind"), f"unknown detector kind '{kind}'", hint)


def check_weights_channel(plan: Plan) -> Iterator[PlanIssue]:
    """A stage opens the weights channel if and only if it says how (its weights: policy)."""
    has_weight_files = any(v.weights is not None for v in plan.versions.values())
    for i, stage in enumerate(plan.stages):
        opens = "weights" in stage.channels
        if opens and stage.weights is None:
            yield _error(
                "weights_without_policy",
                f"{_stage_path(i)}.channels",
                f"stage '{stage.name}' opens the weights channel but has no weights: policy",
                "add weights: {terms: ...} saying which terms licensees accept and how they are vetted",
            )
        if stage.weights is not None and not opens:
            yield _error(
                "policy_without_weights",
                f"{_stage_path(i)}.weights",
                f"stage '{stage.name}' has a weights: policy but its channels do not include weights",
                "add weights to channels:, or remove the weights: policy",
            )
        if stage.weights is not None and stage.weights.terms not in plan.terms:
            yield _unknown(
                "unknown_terms", f"{_stage_path(i)}.weights.terms", "terms document",
                stage.weights.terms, plan.terms.keys(),
            )
        if opens and not has_weight_files:
            yield _warning(
                "no_weight_files",
                f"{_stage_path(i)}.channels",
                f"stage '{stage.name}' opens the weights channel but no version has weights: files",
                "add weights: {path: ...} to the versions that will be downloadable",
            )


def check_aliases(plan: Plan) -> Iterator[PlanIssue]:
    for alias, split in plan.aliases.items():
        base = join_path("aliases", alias)
        if alias in plan.versions:
            yield _error(
                "alias_shadows_version", base,
                f"alias '{alias}' has the same name as a version, so requests for it are ambiguous",
                "rename the alias",
            )
        for version, weight in split.items():
            if version not in plan.versions:
                yield _unknown("unknown_version", join_path(base, version), "version", version, plan.versions.keys())
            if weight < 0:
                yield _error(
                    "alias_negative_weight", join_path(base, version),
                    f"alias '{alias}' gives version '{version}' a negative weight ({weight})",
                    "weights are traffic shares: use 0 or more",
                )
        if sum(w for w in split.values() if w > 0) <= 0:
            yield _error(
                "alias_no_weight", base,
                f"alias '{alias}' sends no traffic anywhere: its weights must add up to more than 0",
                "e.g. {v1: 90, v2: 10}",
            )


def check_audience_widens(plan: Plan) -> Iterator[PlanIssue]:
    """Each stage admits at least the previous stage's audience unless it says it narrows."""
    for i in range(1, len(plan.stages)):
        before, after = plan.stages[i - 1], plan.stages[i]
        if after.narrows_audience:
            continue
        reasons = audience_reductions(before.audience, after.audience)
        if reasons:
            yield _error(
                "audience_narrowed",
                f"{_stage_path(i)}.audience",
                f"stage '{after.name}' admits less than '{before.name}': " + ", ".join(reasons),
                "set narrows_audience: true if intended",
            )


def check_channel_order(plan: Plan) -> Iterator[PlanIssue]:
    """Staged release puts API access first: weights should open after an API-only stage."""
    for i, stage in enumerate(plan.stages):
        if "weights" not in stage.channels:
            continue
        if not any("api" in earlier.channels for earlier in plan.stages[:i]):
            yield _warning(
                "weights_before_api",
                f"{_stage_path(i)}.channels",
                f"stage '{stage.name}' opens the weights channel before any earlier stage has opened the api channel",
                "staged release puts API access first, so misuse can be seen and stopped before weights are out",
            )
        return


def check_versions_served(plan: Plan) -> Iterator[PlanIssue]:
    for name, version in plan.versions.items():
        if version.api is None and version.weights is None:
            yield _warning(
                "version_unserved", join_path("versions", name),
                f"version '{name}' has neither api: nor weights:, so nothing can reach it",
                "add api: {upstreams: [...]} or weights: {path: ...}",
            )


CHECKS: tuple[Check, ...] = (
    check_stage_names,
    check_tier_references,
    check_gate_references,
    check_detectors,
    check_detector_settings,
    check_weights_channel,
    check_aliases,
    check_audience_widens,
    check_channel_order,
    check_versions_served,
)


def check_terms_files(plan: Plan, base_dir: Path) -> Iterator[PlanIssue]:
    """Terms documents must exist, relative to the directory of the plan file."""
    for name, doc in plan.terms.items():
        target = base_dir / doc.file
        if not target.is_file():
            yield _error(
                "terms_file_missing",
                join_path(join_path("terms", name), "file"),
                f"terms file '{doc.file}' does not exist (looked for {target})",
                "paths are relative to the directory of the plan file",
            )


def validate_plan(
    plan: Plan, *, base_dir: Path | None = None, source: str = "<plan>"
) -> list[PlanIssue]:
    """Every semantic problem in ``plan``: errors (loading must fail) and warnings.

    Terms files are checked only when ``base_dir`` is given.
    """
    found: list[PlanIssue] = [issue for check in CHECKS for issue in check(plan)]
    if base_dir is not None:
        found.extend(check_terms_files(plan, base_dir))
    return [replace(issue, source=source) for issue in found]


def stage_by_name(plan: Plan, name: str) -> Stage | None:
    """The stage called ``name``, or None."""
    return next((s for s in plan.stages if s.name == name), None)


__all__ = [
    "CHECKS",
    "IssueSeverity",
    "PlanIssue",
    "audience_reductions",
    "did_you_mean",
    "join_path",
    "parent_path",
    "stage_by_name",
    "validate_plan",
]
