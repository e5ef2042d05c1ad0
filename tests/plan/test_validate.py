"""Semantic checks over a plan the schema accepted."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from releasegate.plan.schema import Audience, Plan
from releasegate.plan.validate import (
    PlanIssue,
    audience_reductions,
    join_path,
    parent_path,
    validate_plan,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "atlas" / "plan.yaml"

Data = dict[str, Any]


def example() -> Data:
    data: Data = yaml.safe_load(EXAMPLE.read_text())
    return data


def issues_after(change: Callable[[Data], None]) -> list[PlanIssue]:
    data = copy.deepcopy(example())
    change(data)
    return validate_plan(Plan.model_validate(data), source="plan.yaml")


def stage(data: Data, name: str) -> Data:
    found: Data = next(s for s in data["stages"] if s["name"] == name)
    return found


def _do(fn: Callable[[Data], Any]) -> Callable[[Data], None]:
    def change(data: Data) -> None:
        fn(data)
    return change


# (case id, change to the example plan, severity, code, path, words in message or hint)
CASES: list[tuple[str, Callable[[Data], None], str, str, str, str]] = [
    ("duplicate stage", _do(lambda d: d["stages"][3].update(name="internal")),
     "error", "duplicate_stage", "stages[3].name", "already used by stages[0]"),
    ("unknown audience tier", _do(lambda d: stage(d, "trusted-partners")["audience"].update(tiers=["internal", "trusted-partnr"])),
     "error", "unknown_tier", "stages[1].audience.tiers[1]", "did you mean 'trusted-partner'?"),
    ("unknown requires_tier", _do(lambda d: d["use_cases"]["security-research"].update(requires_tier="vip")),
     "error", "unknown_tier", "use_cases.security-research.requires_tier", "declared: internal, public, trusted-partner"),
    ("unknown weights tier", _do(lambda d: stage(d, "open-weights")["weights"].update(tiers=["partners"])),
     "error", "unknown_tier", "stages[4].weights.tiers[0]", "unknown tier 'partners'"),
    ("unknown auto-approve tier", _do(lambda d: stage(d, "open-weights")["weights"]["vetting"]["auto_approve"].update(admitted_tiers=["publik"])),
     "error", "unknown_tier", "stages[4].weights.vetting.auto_approve.admitted_tiers[0]", "did you mean 'public'?"),
    ("unknown role", _do(lambda d: stage(d, "general-availability")["gate"][1]["approvals"].update(roles=["safety-lead", "policy_lead"])),
     "error", "unknown_role", "stages[3].gate[1].approvals.roles[1]", "did you mean 'policy-lead'?"),
    ("unknown eval version", _do(lambda d: stage(d, "trusted-partners")["gate"][1]["eval"].update(version="v9")),
     "error", "unknown_version", "stages[1].gate[1].eval.version", "use 'this'"),
    ("weights channel without policy", _do(lambda d: stage(d, "open-weights").pop("weights")),
     "error", "weights_without_policy", "stages[4].channels", "has no weights: policy"),
    ("policy without weights channel", _do(lambda d: stage(d, "open-weights").update(channels=["api"])),
     "error", "policy_without_weights", "stages[4].weights", "channels do not include weights"),
    ("unknown terms", _do(lambda d: stage(d, "open-weights")["weights"].update(terms="atlas-license-v2")),
     "error", "unknown_terms", "stages[4].weights.terms", "did you mean 'atlas-license-v1'?"),
    ("undeclared detector in gate", _do(lambda d: stage(d, "limited-public")["gate"][3]["flag_rate"].update(detector="moderaton")),
     "warning", "unknown_detector", "stages[2].gate[3].flag_rate.detector", "did you mean 'moderation'?"),
    ("undeclared detector in halt rule", _do(lambda d: d.update(detectors={})),
     "warning", "unknown_detector", "stages[1].halt_on[1].flag_rate.detector", "detector plugin"),
    ("alias to unknown version", _do(lambda d: d["aliases"]["atlas"].update(v3=5)),
     "error", "unknown_version", "aliases.atlas.v3", "unknown version 'v3'"),
    ("alias without weight", _do(lambda d: d["aliases"].update(atlas={"v1": 0, "v2": 0})),
     "error", "alias_no_weight", "aliases.atlas", "more than 0"),
    ("alias negative weight", _do(lambda d: d["aliases"].update(atlas={"v1": 100, "v2": -1})),
     "error", "alias_negative_weight", "aliases.atlas.v2", "negative"),
    ("alias named like a version", _do(lambda d: d["aliases"].update(v1={"v2": 1})),
     "error", "alias_shadows_version", "aliases.v1", "ambiguous"),
    ("tier dropped", _do(lambda d: stage(d, "limited-public")["audience"].update(tiers=["internal", "public"])),
     "error", "audience_narrowed", "stages[2].audience",
     "stage 'limited-public' admits less than 'trusted-partners': tier 'trusted-partner' dropped; set narrows_audience: true if intended"),
    ("max_deployers lowered", _do(lambda d: d["stages"].insert(2, {"name": "fewer", "audience": {"tiers": ["internal", "trusted-partner"], "max_deployers": 10}})),
     "error", "audience_narrowed", "stages[2].audience", "max_deployers lowered from 25 to 10"),
    ("waitlist lowered", _do(lambda d: d["stages"].insert(3, {"name": "less-waitlist", "audience": {"tiers": ["internal", "trusted-partner", "public"], "waitlist_percent": 5}})),
     "error", "audience_narrowed", "stages[3].audience", "waitlist_percent lowered from 10 to 5"),
    ("everyone turned off", _do(lambda d: d["stages"].append({"name": "after-ga", "audience": {"tiers": ["internal"]}})),
     "error", "audience_narrowed", "stages[5].audience", "everyone is no longer admitted"),
    ("weights before api", _do(lambda d: d["stages"][0].update(channels=["weights"], weights={"terms": "atlas-license-v1"})),
     "warning", "weights_before_api", "stages[0].channels", "API access first"),
    ("version unserved", _do(lambda d: d["versions"].update(v3={"description": "not yet"})),
     "warning", "version_unserved", "versions.v3", "neither api: nor weights:"),
    ("no weight files", _do(lambda d: d["versions"]["v1"].pop("weights")),
     "warning", "no_weight_files", "stages[4].channels", "no version has weights: files"),
]


@pytest.mark.parametrize(
    ("change", "severity", "code", "path", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_check(change: Callable[[Data], None], severity: str, code: str, path: str, words: str) -> None:
    issues = issues_after(change)
    found = [i for i in issues if i.code == code and i.path == path]
    assert found, [str(i) for i in issues]
    assert found[0].severity == severity
    assert words in f"{found[0].message}; {found[0].hint}"
    assert found[0].source == "plan.yaml"


def test_example_plan_has_no_issues() -> None:
    assert validate_plan(Plan.model_validate(example())) == []


@pytest.mark.parametrize(
    "change",
    [
        _do(lambda d: stage(d, "trusted-partners")["gate"][1]["eval"].update(version="v1")),
        _do(lambda d: d.update(stages=[d["stages"][1], {**d["stages"][0], "narrows_audience": True}])),
        _do(lambda d: d["aliases"].update(atlas={"v1": 0, "v2": 1})),
    ],
    ids=["eval version names a real version", "narrowing acknowledged", "alias with a zero weight"],
)
def test_allowed(change: Callable[[Data], None]) -> None:
    assert [i for i in issues_after(change) if i.severity == "error"] == []


def test_terms_files_are_checked_only_with_a_base_dir(tmp_path: Path) -> None:
    plan = Plan.model_validate(example())
    assert validate_plan(plan) == []
    [issue] = validate_plan(plan, base_dir=tmp_path)
    assert (issue.code, issue.path, issue.severity) == ("terms_file_missing", "terms.atlas-license-v1.file", "error")
    assert validate_plan(plan, base_dir=EXAMPLE.parent) == []


# (case id, before, after, cap_added, reasons)
REDUCTIONS = [
    ("same", {"tiers": ["a"]}, {"tiers": ["a"]}, False, []),
    ("wider", {"tiers": ["a"]}, {"tiers": ["a", "b"], "waitlist_percent": 5}, False, []),
    ("to everyone", {"tiers": ["a"], "max_deployers": 3}, {"everyone": True}, True, []),
    ("tier dropped", {"tiers": ["a", "b"]}, {"tiers": ["b"]}, False, ["tier 'a' dropped"]),
    ("deployer dropped", {"deployers": ["x"]}, {}, False, ["deployer 'x' dropped"]),
    ("cap lowered", {"max_deployers": 5}, {"max_deployers": 4}, False, ["max_deployers lowered from 5 to 4"]),
    ("cap added between stages", {}, {"max_deployers": 4}, False, []),
    ("cap added on a live stage", {}, {"max_deployers": 4}, True, ["max_deployers capped at 4 (was no cap)"]),
    ("waitlist dropped", {"waitlist_percent": 10}, {}, False, ["waitlist_percent lowered from 10 to 0"]),
    ("everyone off", {"everyone": True}, {"tiers": ["a"]}, False, ["everyone is no longer admitted"]),
]


@pytest.mark.parametrize(
    ("before", "after", "cap_added", "reasons"),
    [case[1:] for case in REDUCTIONS],
    ids=[case[0] for case in REDUCTIONS],
)
def test_audience_reductions(before: Data, after: Data, cap_added: bool, reasons: list[str]) -> None:
    got = audience_reductions(Audience.model_validate(before), Audience.model_validate(after), cap_added=cap_added)
    assert got == reasons


@pytest.mark.parametrize(
    ("parent", "key", "path"),
    [("", "stages", "stages"), ("stages", 1, "stages[1]"), ("tiers", "trusted-partner", "tiers.trusted-partner"),
     ("versions", "1.0", 'versions["1.0"]'), ("versions", 'a"b', 'versions["a\\"b"]')],
)
def test_paths(parent: str, key: str | int, path: str) -> None:
    assert join_path(parent, key) == path
    assert parent_path(path) == parent


def test_issue_rendering() -> None:
    issue = PlanIssue("error", "unknown_field", "unknown field", path="stages[1].audience.tierz",
                      line=42, column=7, source="plan.yaml", hint="did you mean 'tiers'?")
    assert str(issue) == "plan.yaml:42:7: stages[1].audience.tierz: unknown field; did you mean 'tiers'?"
    assert str(PlanIssue("warning", "x", "careful", source="p.yaml")) == "p.yaml: warning: careful"
    assert issue.to_dict()["line"] == 42
