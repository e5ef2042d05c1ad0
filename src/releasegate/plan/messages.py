"""Phrase pydantic validation errors for people, as ``PlanIssue``s placed at their YAML line.

A pydantic error location is followed through the plan's types to the field path the plan
spells out (``_locate``), then described in plain words ("expected an integer, got 'abc'"),
with did-you-mean hints for unknown fields and criterion or halt-rule kinds.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Tag
from pydantic_core import ErrorDetails

from releasegate.plan.schema import CRITERION_KINDS, HALT_RULE_KINDS, MODEL_RE, NAME_RE, Plan
from releasegate.plan.validate import PlanIssue, did_you_mean, join_path
from releasegate.plan.yamlpos import Index, at_node

__all__ = ["schema_issue"]


# ---------------------------------------------------------------------------- pydantic loc -> path


def _strip(tp: Any) -> Any:
    """Drop ``Annotated`` and ``| None`` wrappers from a type."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif _is_union(tp) and len(_members(tp)) == 1:
            tp = _members(tp)[0]
        else:
            return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _members(tp: Any) -> list[Any]:
    return [a for a in get_args(tp) if a is not type(None)]


def _union_tags(tp: Any) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    for member in _members(_strip(tp)) if _is_union(_strip(tp)) else []:
        if get_origin(member) is Annotated:
            for meta in get_args(member)[1:]:
                if isinstance(meta, Tag):
                    tags[meta.tag] = get_args(member)[0]
    return tags


def _step(tp: Any, elem: str | int) -> tuple[bool, Any]:
    """Follow one element of a pydantic error location: (is it a field path step?, next type)."""
    if elem == "[key]":  # the error is about a mapping key, already stepped onto
        return False, Any
    outer = tp
    tp = _strip(tp)
    if _is_union(tp):  # the element names the union member: not part of the plan's shape
        return False, _union_tags(outer).get(str(elem), Any)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (list, set, frozenset) and args:
        return True, args[0]
    if origin is tuple and args:
        return True, args[elem] if isinstance(elem, int) and elem < len(args) else args[0]
    if origin is dict and len(args) == 2:
        return True, args[1]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        info = tp.model_fields.get(str(elem))
        return True, (info.annotation if info else Any)
    return True, Any


@dataclass
class _Located:
    path: str
    node: yaml.Node
    found: bool
    on_key: bool
    owner: Any
    last_type: Any


def _locate(loc: tuple[str | int, ...], index: Index) -> _Located:
    tp: Any = Plan
    path = ""
    deepest = ""
    found, on_key = True, False
    owner: Any = None
    for elem in loc:
        is_step, next_tp = _step(tp, elem)
        if is_step:
            owner = _strip(tp)
            child = index.child(path, elem) if found else None
            if child is None:
                found = False
                path = join_path(path, elem)
            else:
                path = deepest = child
        elif elem == "[key]":
            on_key = True
        tp = next_tp
    entry = index.entries[deepest]
    node = entry.key_node if (found and on_key and entry.key_node is not None) else entry.node
    return _Located(path, node, found, on_key, owner, tp)


# ---------------------------------------------------------------------------- messages


def _show(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, date):
        return f"the date {value.isoformat()}"
    return f"a {type(value).__name__}"


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "text",
    "list_type": "a list", "tuple_type": "a list", "set_type": "a list",
    "dict_type": "a mapping (key: value pairs)", "model_type": "a mapping (key: value pairs)",
    "model_attributes_type": "a mapping (key: value pairs)",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
    "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than"),
}
_PATTERNS = {
    NAME_RE: "a name of lowercase letters, digits, '.', '_' or '-' starting with a letter or digit",
    MODEL_RE: "an org/name such as acme/atlas-8b",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "a name of letters, digits and '_' not starting with a digit",
}


def _quote_hint(node: yaml.Node, value: Any) -> str | None:
    """YAML turns some unquoted words into non-text (no -> false, 2024-01-01 -> a date)."""
    if not isinstance(node, yaml.ScalarNode) or node.style is not None or isinstance(value, str):
        return None
    if isinstance(value, bool) or value is None:
        read_as = _show(value)
    elif isinstance(value, int | float):
        read_as = "a number"
    else:
        read_as = _show(value)
    return f"YAML reads unquoted {node.value} as {read_as}; put it in quotes: \"{node.value}\""


def _kind_issue(err: ErrorDetails, where: _Located) -> tuple[str, str | None]:
    tags = set(_union_tags(where.last_type))
    what, kinds = ("halt rule", HALT_RULE_KINDS) if tags and tags <= set(HALT_RULE_KINDS) else (
        "gate criterion", CRITERION_KINDS)
    listed = "one of: " + ", ".join(kinds)
    value = err["input"]
    if isinstance(value, dict):
        keys = [str(k) for k in value]
        if len(keys) == 1:
            return f"unknown {what} '{keys[0]}'", did_you_mean(keys[0], kinds) or f"expected {listed}"
        known = [k for k in keys if k in kinds]
        if len(known) == 1:
            others = ", ".join(k for k in keys if k != known[0])
            return (f"a {what} has exactly one key naming its kind, but '{known[0]}' is next to {others}",
                    f"indent {others} under '{known[0]}:'")
        return (f"a {what} has exactly one key naming its kind, found {len(keys)}: " + ", ".join(keys),
                f"expected {listed}")
    if isinstance(value, str) and value in kinds:
        return f"'{value}' needs its parameters", f"write it as '{value}: {{...}}'"
    hint = did_you_mean(value, kinds) if isinstance(value, str) else None
    return f"expected a {what} such as 'eval: {{...}}', got {_show(value)}", hint or f"expected {listed}"


def _describe(err: ErrorDetails, where: _Located) -> tuple[str, str, str | None]:
    kind, value, ctx = err["type"], err["input"], err.get("ctx") or {}
    if kind == "missing":
        last = err["loc"][-1] if err["loc"] else ""
        if isinstance(last, int):
            return "missing_field", f"item {last} is missing (this list is too short)", None
        return "missing_field", "required field is missing", None
    if kind == "extra_forbidden":
        allowed = list(where.owner.model_fields) if isinstance(where.owner, type) and issubclass(where.owner, BaseModel) else []
        name = str(err["loc"][-1])
        hint = did_you_mean(name, allowed) or ("allowed here: " + ", ".join(allowed) if allowed else None)
        return "unknown_field", "unknown field", hint
    if kind in ("unknown_kind", "union_tag_invalid", "union_tag_not_found"):
        message, hint = _kind_issue(err, where)
        return "unknown_kind", message, hint
    if kind in _EXPECTED:
        hint = _quote_hint(where.node, value) if where.found and kind == "string_type" else None
        if kind in ("model_type", "dict_type") and value is None:
            hint = "write {} for an empty mapping, or remove the key"
        subject = "names must be" if where.on_key else "expected"
        return "wrong_type", f"{subject} {_EXPECTED[kind]}, got {_show(value)}", hint
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(value, options) if isinstance(value, str) else None
        return "invalid_choice", f"expected {ctx.get('expected')}, got {_show(value)}", hint
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return "out_of_range", f"must be {words} {ctx.get(key)}, got {_show(value)}", None
    if kind in ("too_short", "string_too_short"):
        least = ctx.get("min_length", 1)
        if least == 1:
            return "out_of_range", "must not be empty", None
        return "out_of_range", f"needs at least {least} items, got {ctx.get('actual_length')}", None
    if kind in ("too_long", "string_too_long"):
        return "out_of_range", f"may have at most {ctx.get('max_length')} items", None
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return "invalid_format", f"expected {_PATTERNS.get(pattern, 'text matching ' + pattern)}, got {_show(value)}", None
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return "invalid_value", str(ctx["error"]), None
    return "invalid_value", err["msg"], None


def schema_issue(err: ErrorDetails, index: Index, source: str) -> PlanIssue:
    where = _locate(tuple(err["loc"]), index)
    code, message, hint = _describe(err, where)
    node = where.node
    if code == "unknown_field" and where.found:
        node = index.entries[where.path].key_node or node
    elif code == "unknown_kind" and isinstance(node, yaml.MappingNode) and len(node.value) == 1:
        node = node.value[0][0]
    return at_node(PlanIssue("error", code, message, path=where.path, source=source, hint=hint), node)
