"""The plan schema: durations, criteria, constraints and the exported JSON Schema."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from releasegate.plan.jsonschema import PLAN_SCHEMA_ID, plan_json_schema
from releasegate.plan.schema import (
    CRITERION_KINDS,
    HALT_RULE_KINDS,
    Bounds,
    EvalCriterion,
    FormField,
    Limits,
    Plan,
    Stage,
    criterion_kind,
    criterion_spec,
    format_duration,
    parse_duration,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "atlas" / "plan.yaml"


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


@pytest.mark.parametrize(
    ("text", "expected", "spelt"),
    [
        ("30s", timedelta(seconds=30), "30s"),
        ("15m", timedelta(minutes=15), "15m"),
        ("1h", timedelta(hours=1), "1h"),
        ("24h", timedelta(days=1), "1d"),
        ("14d", timedelta(days=14), "2w"),
        ("2w", timedelta(weeks=2), "2w"),
        ("1.5h", timedelta(minutes=90), "90m"),
        (" 10m ", timedelta(minutes=10), "10m"),
        ("90s", timedelta(seconds=90), "90s"),
        ("0.5s", timedelta(seconds=0.5), "0.5s"),
        ("0s", timedelta(0), "0s"),
    ],
)
def test_durations(text: Any, expected: timedelta, spelt: str) -> None:
    assert parse_duration(text) == expected
    assert format_duration(expected) == spelt
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize("bad", ["14 days", "14", "d", "-1d", -5, 14, 0.5, True, None, [], float("nan"), float("inf"), "9" * 20 + "w"])
def test_bad_durations_raise_value_error(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_example_plan_validates_and_round_trips() -> None:
    plan = Plan.model_validate(example())
    assert Plan.model_validate(plan.model_dump(mode="json")) == plan
    assert plan.stage_index("general-availability") == 3
    with pytest.raises(KeyError):
        plan.stage_index("nope")


def test_criterion_kinds_and_specs() -> None:
    plan = Plan.model_validate(example())
    gate = plan.stages[1].gate
    assert [criterion_kind(c) for c in gate] == ["time_in_stage", "eval", "eval", "findings", "approvals"]
    spec = criterion_spec(gate[1])
    assert isinstance(spec, EvalCriterion)
    assert (spec.suite, spec.max, spec.version) == ("cyber-uplift", 0.2, "this")
    assert [criterion_kind(r) for r in plan.stages[1].halt_on] == ["incident", "flag_rate"]


@pytest.mark.parametrize("kind", CRITERION_KINDS)
def test_every_criterion_kind_is_accepted(kind: str) -> None:
    params = {
        "time_in_stage": {"min": "1d"}, "eval": {"suite": "s", "metric": "m", "min": 0.5},
        "findings": {}, "incidents": {}, "traffic": {}, "flag_rate": {"detector": "d", "max": 0.1},
        "approvals": {"roles": ["r"]}, "peers": {"posture": "p"},
    }
    stage = Stage.model_validate({"name": "s", "gate": [{kind: params[kind]}]})
    assert criterion_kind(stage.gate[0]) == kind


@pytest.mark.parametrize("kind", HALT_RULE_KINDS)
def test_every_halt_rule_kind_is_accepted(kind: str) -> None:
    params = {"incident": {}, "flag_rate": {"detector": "d", "max": 0.1},
              "scope_violations": {"per_deployer_rate": 0.1}, "error_rate": {"max": 0.5}}
    stage = Stage.model_validate({"name": "s", "halt_on": [{kind: params[kind]}]})
    assert criterion_kind(stage.halt_on[0]) == kind


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (EvalCriterion, {"suite": "s", "metric": "m"}),
        (EvalCriterion, {"suite": "s", "metric": "m", "max": float("nan")}),
        (EvalCriterion, {"suite": "s", "metric": "m", "min": float("-inf")}),
        (Bounds, {"temperature": [1.5, 0.5]}),
        (FormField, {"name": "use", "type": "select"}),
        (FormField, {"name": "org", "options": ["a"]}),
        (FormField, {"name": "1st"}),
        (Limits, {"rpm": 0}),
        (Limits, {"rpm": 10, "rps": 1}),
        (Stage, {"name": "s", "channels": []}),
        (Stage, {"name": "s", "gate": [{"eval": {"suite": "s", "metric": "m", "max": 1}, "min": 1}]}),
    ],
    ids=["eval without bound", "nan", "infinity", "inverted range", "select without options",
         "options on text", "field name", "zero limit", "unknown field", "no channels", "two-key criterion"],
)
def test_invalid(model: type[Any], data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(data)


def test_models_are_frozen() -> None:
    limits = Limits(rpm=5)
    with pytest.raises(ValidationError):
        limits.rpm = 6


def test_json_schema_headers() -> None:
    schema = plan_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == PLAN_SCHEMA_ID
    assert schema["title"] == "releasegate release plan"
    assert set(schema["required"]) >= {"model", "versions", "use_cases", "tiers", "stages"}
    assert plan_json_schema(schema_id="urn:x")["$id"] == "urn:x"
    assert plan_json_schema() is not plan_json_schema()  # a fresh copy each time


def test_json_schema_accepts_the_example_and_rejects_typos() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = plan_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    assert list(validator.iter_errors(example())) == []
    bad = example()
    bad["stages"][1]["audience"]["tierz"] = ["internal"]
    assert list(validator.iter_errors(bad))
    bad = example()
    bad["stages"][1]["gate"].append({"evall": {"suite": "s"}})
    assert list(validator.iter_errors(bad))
