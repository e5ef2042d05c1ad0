"""Every field of the release plan schema is documented in docs/plan-reference.md.

Field paths are written the way the reference writes them: ``.`` between fields, ``[]`` for
the items of a list, ``.<name>`` for the entries of a mapping keyed by name, e.g.
``stages[].gate[].eval.max_age`` or ``versions.<name>.api.timeout``.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from releasegate.plan.schema import Plan

DOC = Path(__file__).resolve().parents[1] / "docs" / "plan-reference.md"


def _models_in(tp: Any, suffix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """(path suffix, model) for every model reachable inside a field's type."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _models_in(get_args(tp)[0], suffix)
    if origin in (Union, types.UnionType):
        return [found for member in get_args(tp) for found in _models_in(member, suffix)]
    if origin in (list, tuple, set, frozenset):
        return [found for arg in get_args(tp) if arg is not Ellipsis for found in _models_in(arg, suffix + "[]")]
    if origin is dict:
        return _models_in(get_args(tp)[1], suffix + ".<name>")
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [(suffix, tp)]
    return []


def schema_field_paths(model: type[BaseModel] = Plan, prefix: str = "") -> list[str]:
    """Dotted paths of every field of ``model`` and of every model nested in it."""
    paths: list[str] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        for suffix, inner in _models_in(info.annotation):
            paths.extend(schema_field_paths(inner, f"{path}{suffix}."))
    return list(dict.fromkeys(paths))


def documented_paths(text: str) -> set[str]:
    """Paths named in the first column of the reference's tables."""
    return set(re.findall(r"^\|\s*`([^`]+)`\s*\|", text, flags=re.MULTILINE))


def test_walker_sees_nested_union_members() -> None:
    paths = schema_field_paths()
    assert "stages[].gate[].eval.max_age" in paths
    assert "stages[].halt_on[].flag_rate.window" in paths
    assert "versions.<name>.api.timeout" in paths
    assert "stages[].weights.vetting.auto_approve.countries_not" in paths


def test_every_plan_field_is_documented() -> None:
    missing = [p for p in schema_field_paths() if p not in documented_paths(DOC.read_text())]
    assert not missing, "fields missing from docs/plan-reference.md: " + ", ".join(missing)


def test_documented_fields_exist() -> None:
    stale = sorted(documented_paths(DOC.read_text()) - set(schema_field_paths()))
    assert not stale, "docs/plan-reference.md documents fields the schema does not have: " + ", ".join(stale)
