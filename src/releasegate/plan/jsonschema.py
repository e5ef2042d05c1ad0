"""The JSON Schema of a release plan, for editors (yaml-language-server) and other tools.

Point an editor at it with a first line such as
``# yaml-language-server: $schema=./plan.schema.json``.
"""

from __future__ import annotations

from typing import Any

from releasegate.plan.schema import Plan

PLAN_SCHEMA_ID = "https://releasegate.dev/schemas/plan.schema.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def plan_json_schema(*, schema_id: str = PLAN_SCHEMA_ID) -> dict[str, Any]:
    """A fresh JSON Schema (draft 2020-12) document describing a release plan."""
    body = Plan.model_json_schema(mode="validation")
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": schema_id,
        "title": "releasegate release plan",
        **{k: v for k, v in body.items() if k != "title"},
    }


__all__ = ["JSON_SCHEMA_DIALECT", "PLAN_SCHEMA_ID", "plan_json_schema"]
