"""Differences between plans, and what applying a plan would do to the live stage."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from releasegate.plan.diff import Change, diff_plans, live_stage_impact
from releasegate.plan.loader import load_plan_text
from releasegate.plan.schema import Plan

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "atlas" / "plan.yaml"

Data = dict[str, Any]


def example() -> Data:
    data: Data = yaml.safe_load(EXAMPLE.read_text())
    return data


def changed(change: Callable[[Data], Any]) -> Plan:
    data = copy.deepcopy(example())
    change(data)
    return Plan.model_validate(data)


def stage(data: Data, name: str) -> Data:
    found: Data = next(s for s in data["stages"] if s["name"] == name)
    return found


OLD = Plan.model_validate(example())


def test_same_plan_has_no_changes() -> None:
    diff = diff_plans(OLD, Plan.model_validate(example()))
    assert diff.is_empty
    assert diff.render() == []


def test_reformatting_is_not_a_change() -> None:
    text = EXAMPLE.read_text().replace("{min: 14d}", "{min: 2w}").replace("# Example", "# Reformatted example")
    assert diff_plans(OLD, load_plan_text(text).plan).is_empty


def test_first_plan_adds_everything() -> None:
    diff = diff_plans(None, OLD)
    rendered = diff.render()
    assert "added model: acme/atlas-8b" in rendered
    assert "added versions.v1" in rendered
    assert "added stages[open-weights]" in rendered
    assert all(c.kind == "added" for c in diff.changes)


# (case id, change to the example, expected rendered line)
CASES: list[tuple[str, Callable[[Data], Any], str]] = [
    ("version added", lambda d: d["versions"].update(v3={"api": {"upstreams": ["http://x:1/v1"]}}), "added versions.v3"),
    ("version removed", lambda d: (d["versions"].pop("v2"), d["aliases"].pop("atlas")), "removed versions.v2"),
    ("version changed", lambda d: d["versions"]["v2"]["api"].update(upstream_model="atlas-8b-v2b"),
     "changed versions.v2.api.upstream_model: atlas-8b-v2 -> atlas-8b-v2b"),
    ("alias split", lambda d: d["aliases"].update(atlas={"v1": 50, "v2": 50}), "changed aliases.atlas.v1: 90 -> 50"),
    ("use case added", lambda d: d["use_cases"].update(tutor={"description": "Tutoring."}), "added use_cases.tutor"),
    ("use case bound", lambda d: d["use_cases"]["code-assistant"]["bounds"].update(max_tokens=2048),
     "changed use_cases.code-assistant.bounds.max_tokens: 4096 -> 2048"),
    ("tier removed", lambda d: d.update(tiers={"internal": {}}, stages=[{"name": "only"}]), "removed tiers.public"),
    ("stage added", lambda d: d["stages"].append({"name": "later", "audience": {"everyone": True}}), "added stages[later]"),
    ("stage removed", lambda d: d["stages"].pop(3), "removed stages[general-availability]"),
    ("audience widened", lambda d: stage(d, "limited-public")["audience"].update(waitlist_percent=20),
     "changed stages[limited-public].audience.waitlist_percent: 10.0 -> 20.0"),
    ("tiers changed", lambda d: stage(d, "internal")["audience"].update(tiers=["internal", "public"]),
     "changed stages[internal].audience.tiers: [internal] -> [internal, public]"),
    ("limit changed", lambda d: stage(d, "internal")["limits"].update(rpm=1200),
     "changed stages[internal].limits.rpm: 600 -> 1200"),
    ("limit unset", lambda d: stage(d, "internal")["limits"].pop("tpm"),
     "changed stages[internal].limits.tpm: 2000000 -> (unset)"),
    ("gate criterion changed", lambda d: stage(d, "open-weights")["gate"][1]["eval"].update(max=0.05),
     "changed stages[open-weights].gate[eval:cyber-uplift/accuracy].max: 0.1 -> 0.05"),
    ("gate criterion removed", lambda d: stage(d, "trusted-partners")["gate"].pop(3),
     "removed stages[trusted-partners].gate[findings]"),
    ("gate criterion added", lambda d: stage(d, "internal").update(gate=[{"time_in_stage": {"min": "1d"}}]),
     "added stages[internal].gate[time_in_stage]"),
    ("halt rule changed", lambda d: stage(d, "trusted-partners")["halt_on"][1]["flag_rate"].update(action="halt"),
     "changed stages[trusted-partners].halt_on[flag_rate:moderation].action: pause -> halt"),
    ("weights form changed", lambda d: stage(d, "open-weights")["weights"]["form"][1].update(required=False),
     "changed stages[open-weights].weights.form.country.required: true -> false"),
    ("weights policy added", lambda d: stage(d, "general-availability").update(
        channels=["api", "weights"], weights={"terms": "atlas-license-v1"}),
     "added stages[general-availability].weights"),
    ("weights grant changed", lambda d: stage(d, "open-weights")["weights"].update(grant_days=180),
     "changed stages[open-weights].weights.grant_days: 365 -> 180"),
    ("stages reordered", lambda d: d.update(stages=[d["stages"][1], d["stages"][0], *d["stages"][2:]]),
     "changed stages (order): [internal, trusted-partners, limited-public, general-availability, open-weights] -> "
     "[trusted-partners, internal, limited-public, general-availability, open-weights]"),
]


@pytest.mark.parametrize(("change", "line"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_change_is_reported(change: Callable[[Data], Any], line: str) -> None:
    rendered = diff_plans(OLD, changed(change)).render()
    assert line in rendered, rendered


def test_inserting_a_criterion_is_one_change() -> None:
    new = changed(lambda d: stage(d, "trusted-partners")["gate"].insert(0, {"traffic": {"min_requests": 10}}))
    assert diff_plans(OLD, new).changes == [
        Change("added", "stages[trusted-partners].gate[traffic]", None, {"traffic": {"min_requests": 10, "min_deployers": 0}})
    ]


def test_repeated_criteria_are_numbered() -> None:
    new = changed(lambda d: stage(d, "internal").update(
        gate=[{"approvals": {"roles": ["safety-lead"]}}, {"approvals": {"roles": ["policy-lead"]}}]))
    paths = [c.path for c in diff_plans(OLD, new).changes]
    assert paths == ["stages[internal].gate[approvals]", "stages[internal].gate[approvals#2]"]


# (case id, change, live stage, reasons)
IMPACT: list[tuple[str, Callable[[Data], Any], str, list[str]]] = [
    ("unchanged", lambda d: None, "trusted-partners", []),
    ("widened", lambda d: stage(d, "trusted-partners")["audience"].update(max_deployers=50), "trusted-partners", []),
    ("other stage narrowed", lambda d: stage(d, "limited-public").update(
        audience={"tiers": ["internal", "trusted-partner", "public"], "waitlist_percent": 5}, narrows_audience=True),
     "trusted-partners", []),
    ("stage removed", lambda d: d["stages"].pop(1), "trusted-partners",
     ["stage 'trusted-partners' is live and the new plan removes it"]),
    ("tier removed", lambda d: stage(d, "trusted-partners").update(audience={"tiers": ["internal"], "max_deployers": 25}, narrows_audience=True),
     "trusted-partners", ["live stage 'trusted-partners': tier 'trusted-partner' dropped"]),
    ("max_deployers lowered", lambda d: stage(d, "trusted-partners")["audience"].update(max_deployers=10),
     "trusted-partners", ["live stage 'trusted-partners': max_deployers lowered from 25 to 10"]),
    ("cap added", lambda d: stage(d, "internal")["audience"].update(max_deployers=3), "internal",
     ["live stage 'internal': max_deployers capped at 3 (was no cap)"]),
    ("waitlist lowered", lambda d: stage(d, "limited-public").update(audience={"tiers": ["internal", "trusted-partner", "public"], "waitlist_percent": 5}, narrows_audience=True),
     "limited-public", ["live stage 'limited-public': waitlist_percent lowered from 10 to 5"]),
    ("everyone off", lambda d: stage(d, "general-availability").update(audience={"tiers": ["internal", "trusted-partner", "public"], "waitlist_percent": 10}, narrows_audience=True),
     "general-availability", ["live stage 'general-availability': everyone is no longer admitted"]),
    ("weights closed", lambda d: stage(d, "open-weights").update(channels=["api"], weights=None), "open-weights",
     ["live stage 'open-weights': channel 'weights' closed"]),
]


@pytest.mark.parametrize(("change", "live", "reasons"), [c[1:] for c in IMPACT], ids=[c[0] for c in IMPACT])
def test_live_stage_impact(change: Callable[[Data], Any], live: str, reasons: list[str]) -> None:
    assert live_stage_impact(OLD, changed(change), live) == reasons


def test_live_deployers_removed() -> None:
    old = changed(lambda d: stage(d, "internal")["audience"].update(deployers=["acme-labs"]))
    assert live_stage_impact(old, OLD, "internal") == ["live stage 'internal': deployer 'acme-labs' dropped"]
