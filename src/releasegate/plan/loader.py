"""Load a release plan from YAML, reporting every problem with its field path, line and column.

The text is composed into YAML nodes first (so each value keeps the line it came from),
checked for duplicate keys and alias bombs, constructed, validated by the pydantic schema
and then by ``plan.validate``. Any error raises ``PlanError`` listing all of them.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Tag, ValidationError
from pydantic_core import ErrorDetails

from releasegate.errors import InvalidInput
from releasegate.plan.schema import CRITERION_KINDS, HALT_RULE_KINDS, MODEL_RE, NAME_RE, Plan
from releasegate.plan.validate import (
    PlanIssue,
    did_you_mean,
    join_path,
    parent_path,
    validate_plan,
)

MAX_PLAN_BYTES = 1024 * 1024
MAX_VALUES = 100_000
MAX_DEPTH = 64

__all__ = [
    "MAX_PLAN_BYTES",
    "LoadedPlan",
    "PlanError",
    "PlanIssue",
    "load_plan_file",
    "load_plan_text",
    "plan_content_hash",
]


class PlanError(InvalidInput):
    """The release plan cannot be used; ``issues`` lists every problem found (and warnings)."""

    code = "plan_invalid"

    def __init__(self, issues: Sequence[PlanIssue], *, source: str = "<plan>") -> None:
        self.issues: list[PlanIssue] = list(issues)
        count = len(self.errors) or len(self.issues)
        noun = "problem" if count == 1 else "problems"
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(
            f"{source}: the release plan has {count} {noun}:\n{lines}",
            details={"source": source, "issues": [issue.to_dict() for issue in self.issues]},
        )

    @property
    def errors(self) -> list[PlanIssue]:
        return [issue for issue in self.issues if issue.severity == "error"]


@dataclass(frozen=True)
class LoadedPlan:
    """A validated plan with the text it came from.

    ``content_hash`` is the sha256 of the plan's canonical JSON (validated values, defaults
    filled in, keys sorted), so comments, formatting, key order and spelling out a default do
    not change it; any change in meaning does.
    """

    plan: Plan
    text: str
    content_hash: str
    source: str
    warnings: list[PlanIssue] = field(default_factory=list)
    base_dir: Path | None = None


def plan_content_hash(plan: Plan) -> str:
    """Hex sha256 of the canonical JSON of ``plan`` (see ``LoadedPlan.content_hash``)."""
    canonical = json.dumps(
        plan.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_plan_file(path: str | Path) -> LoadedPlan:
    """Read and load the plan at ``path``; terms files are looked up beside it."""
    path = Path(path)
    source = str(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PLAN_BYTES + 1)
    except OSError as e:
        reason = e.strerror or str(e)
        raise PlanError(
            [PlanIssue("error", "file_unreadable", f"cannot read the plan file: {reason}", source=source)],
            source=source,
        ) from None
    if len(data) > MAX_PLAN_BYTES:
        raise PlanError([_too_large(source)], source=source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        issue = PlanIssue(
            "error", "not_utf8", f"the plan file is not UTF-8 text (byte {e.start})",
            line=line, source=source, hint="save the file as UTF-8",
        )
        raise PlanError([issue], source=source) from None
    return load_plan_text(text, source=source, base_dir=path.absolute().parent)


def load_plan_text(text: str, *, source: str = "<plan>", base_dir: Path | None = None) -> LoadedPlan:
    """Parse, validate and check a plan; raise ``PlanError`` listing every problem.

    Terms files are checked for existence only when ``base_dir`` is given.
    """
    if len(text.encode("utf-8", errors="replace")) > MAX_PLAN_BYTES:
        raise PlanError([_too_large(source)], source=source)
    if not text.strip():
        raise PlanError([_empty(source)], source=source)

    try:
        loader = _PlanYamlLoader(text)  # checks that every character is printable
    except yaml.YAMLError as e:
        raise PlanError([_yaml_issue(e, source, text)], source=source) from None
    try:
        return _load(loader, text, source, base_dir)
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------- stages of loading


def _load(loader: _PlanYamlLoader, text: str, source: str, base_dir: Path | None) -> LoadedPlan:
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        raise PlanError([_yaml_issue(e, source, text)], source=source) from None
    if root is None or root.tag == "tag:yaml.org,2002:null":
        raise PlanError([_empty(source)], source=source)
    if not isinstance(root, yaml.MappingNode):
        raise PlanError([_not_a_mapping(root, source)], source=source)
    too_big = _measure(root, source)
    if too_big is not None:
        raise PlanError([too_big], source=source)

    issues: list[PlanIssue] = []
    try:
        index = _Index(loader, root, source, issues)
        if any(i.code == "yaml_invalid" for i in issues):
            raise PlanError(_sorted(issues), source=source)
        data = loader.construct_document(root)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        issues.append(_yaml_issue(e, source, text))
        raise PlanError(_sorted(issues), source=source) from None

    try:
        plan = Plan.model_validate(data)
    except ValidationError as e:
        issues.extend(_dedupe(_schema_issue(err, index, source) for err in e.errors(include_url=False)))
        raise PlanError(_sorted(issues), source=source) from None

    issues.extend(index.place(i) for i in validate_plan(plan, base_dir=base_dir, source=source))
    issues = _sorted(issues)
    if any(i.severity == "error" for i in issues):
        raise PlanError(issues, source=source)
    return LoadedPlan(
        plan=plan,
        text=text,
        content_hash=plan_content_hash(plan),
        source=source,
        warnings=issues,
        base_dir=base_dir,
    )


class _PlanYamlLoader(yaml.SafeLoader):
    """A SafeLoader that refuses documents nested deeper than ``MAX_DEPTH`` (with the line)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
                mark = typing.cast("yaml.Mark | None", event.start_mark)
                raise yaml.composer.ComposerError(
                    None, None, f"the plan is nested more than {MAX_DEPTH} levels deep", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _measure(root: yaml.Node, source: str) -> PlanIssue | None:
    """Refuse plans whose aliases expand to too many values, too deep, or into themselves."""
    sizes: dict[int, tuple[int, int]] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        kids = _children(node)
        if finished:
            count = 1 + sum(sizes[id(k)][0] for k in kids)
            depth = 1 + max((sizes[id(k)][1] for k in kids), default=0)
            sizes[id(node)] = (count, depth)
            visiting.discard(id(node))
            continue
        if id(node) in sizes:
            continue
        if id(node) in visiting:
            return _at(PlanIssue(
                "error", "recursive_alias", "a YAML alias refers to a value that contains it",
                source=source, hint="aliases (*name) must not point back into their own anchor",
            ), node)
        visiting.add(id(node))
        stack.append((node, True))
        stack.extend((k, False) for k in kids)
    count, depth = sizes[id(root)]
    if count > MAX_VALUES:
        return PlanIssue(
            "error", "too_many_values",
            f"the plan expands to {count} values, more than the {MAX_VALUES} allowed",
            line=1, column=1, source=source,
            hint="YAML aliases (*name) are expanded in full; a plan this size is likely an alias bomb",
        )
    if depth > MAX_DEPTH:
        return PlanIssue(
            "error", "too_deep", f"the plan is nested more than {MAX_DEPTH} levels deep once aliases are expanded",
            line=1, column=1, source=source,
        )
    return None


# ---------------------------------------------------------------------------- where each value is


@dataclass
class _Entry:
    node: yaml.Node
    key_node: yaml.Node | None
    keys: list[tuple[object, str, str]] = field(default_factory=list)  # (key, key text, child path)


class _Index:
    """Field path -> the YAML node it was written at. Reports duplicate keys while building."""

    def __init__(self, loader: _PlanYamlLoader, root: yaml.Node, source: str, issues: list[PlanIssue]) -> None:
        self.entries: dict[str, _Entry] = {}
        self.source = source
        self._loader = loader
        self._issues = issues
        self._add("", root, None)

    def _key(self, key_node: yaml.Node) -> tuple[object, str]:
        text = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{type(key_node).__name__}>"
        if not isinstance(key_node, yaml.ScalarNode):
            return text, text
        try:
            key: object = self._loader.construct_object(key_node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError):
            key = text
        return key, (key if isinstance(key, str) else text)

    def _add(self, path: str, node: yaml.Node, key_node: yaml.Node | None) -> None:
        entry = _Entry(node, key_node)
        self.entries[path] = entry
        if isinstance(node, yaml.ScalarNode):
            self._check_scalar(path, node)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._add(join_path(path, i), item, None)
        elif isinstance(node, yaml.MappingNode):
            self._report_duplicates(path, node)
            self._loader.flatten_mapping(node)
            # Later keys win, as when YAML builds the mapping (merged keys come first).
            children: dict[str, tuple[object, str, yaml.Node, yaml.Node]] = {}
            for k_node, v_node in node.value:
                key, text = self._key(k_node)
                children[join_path(path, text)] = (key, text, k_node, v_node)
            for child, (key, text, k_node, v_node) in children.items():
                entry.keys.append((key, text, child))
                self._add(child, v_node, k_node)

    def _check_scalar(self, path: str, node: yaml.ScalarNode) -> None:
        """Build the value now, so a bad one (a date like 2024-13-45) is reported with its line."""
        try:
            self._loader.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
            problem = e.problem if isinstance(e, yaml.MarkedYAMLError) and e.problem else str(e)
            self._issues.append(_at(PlanIssue(
                "error", "yaml_invalid", f"YAML cannot read {node.value!r}: {problem}",
                path=path, source=self.source, hint="put it in quotes if it is meant as text",
            ), node))

    def _report_duplicates(self, path: str, node: yaml.MappingNode) -> None:
        seen: dict[str, yaml.Node] = {}
        for k_node, _ in node.value:
            if k_node.tag == "tag:yaml.org,2002:merge":
                continue
            _, text = self._key(k_node)
            first = seen.get(text)
            if first is None:
                seen[text] = k_node
                continue
            at = f"line {first.start_mark.line + 1}"
            if first.start_mark.line == k_node.start_mark.line:
                at += f", column {first.start_mark.column + 1}"
            self._issues.append(_at(PlanIssue(
                "error", "duplicate_key",
                f"duplicate key '{text}' (first at {at}); YAML would keep only this one",
                path=join_path(path, text), source=self.source, hint="remove or merge one of them",
            ), k_node))

    def child(self, path: str, key: str | int) -> str | None:
        """The path of ``key`` under ``path`` when the plan spells it out."""
        entry = self.entries.get(path)
        if entry is None:
            return None
        if isinstance(entry.node, yaml.SequenceNode):
            candidate = join_path(path, key) if isinstance(key, int) else None
            return candidate if candidate in self.entries else None
        for k, text, child in entry.keys:
            if text == str(key) or (k == key and not isinstance(k, bool)):
                return child
        # pydantic reports a `yes:` or `true:` key (a bool) by its int value
        return next((child for k, _, child in entry.keys if k == key), None)

    def place(self, issue: PlanIssue) -> PlanIssue:
        """``issue`` with the line and column of its path, or of the nearest enclosing value."""
        path = issue.path
        while path not in self.entries and path:
            path = parent_path(path)
        entry = self.entries.get(path)
        return _at(issue, entry.node) if entry else issue


def _at(issue: PlanIssue, node: yaml.Node) -> PlanIssue:
    mark = node.start_mark
    if mark is None:
        return issue
    return PlanIssue(
        issue.severity, issue.code, issue.message, path=issue.path, line=mark.line + 1,
        column=mark.column + 1, source=issue.source, hint=issue.hint,
    )


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


def _locate(loc: tuple[str | int, ...], index: _Index) -> _Located:
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


def _schema_issue(err: ErrorDetails, index: _Index, source: str) -> PlanIssue:
    where = _locate(tuple(err["loc"]), index)
    code, message, hint = _describe(err, where)
    node = where.node
    if code == "unknown_field" and where.found:
        node = index.entries[where.path].key_node or node
    elif code == "unknown_kind" and isinstance(node, yaml.MappingNode) and len(node.value) == 1:
        node = node.value[0][0]
    return _at(PlanIssue("error", code, message, path=where.path, source=source, hint=hint), node)


# ---------------------------------------------------------------------------- whole-file problems


_YAML_HINTS = (
    ("cannot start any token", "indent with spaces; YAML does not allow tabs there"),
    ("mapping values are not allowed", "check the indentation, or quote a value that contains ': '"),
    ("undefined alias", "define the anchor (&name) before using the alias (*name)"),
    ("expected a single document", "a plan file holds one YAML document; remove the extra '---'"),
    ("could not determine a constructor", "custom YAML tags are not allowed in a plan"),
    ("found unhashable key", "keys must be plain words, not lists or mappings"),
)


def _yaml_issue(error: Exception, source: str, text: str = "") -> PlanIssue:
    if isinstance(error, yaml.MarkedYAMLError):
        problem = error.problem or "invalid YAML"
        if error.context:
            context_line = f" at line {error.context_mark.line + 1}" if error.context_mark else ""
            problem = f"{problem} ({error.context}{context_line})"
        mark = error.problem_mark or error.context_mark
        hint = next((h for needle, h in _YAML_HINTS if needle in problem), None)
        code = "yaml_syntax" if isinstance(error, yaml.scanner.ScannerError | yaml.parser.ParserError) else "yaml_invalid"
        return PlanIssue(
            "error", code, f"invalid YAML: {problem}",
            line=mark.line + 1 if mark else None, column=mark.column + 1 if mark else None,
            source=source, hint=hint,
        )
    if isinstance(error, yaml.reader.ReaderError):
        before = text[: error.position]
        return PlanIssue(
            "error", "yaml_invalid", f"invalid character U+{error.character:04X} in the plan",
            line=before.count("\n") + 1, column=len(before) - (before.rfind("\n") + 1) + 1,
            source=source, hint="remove control characters from the file",
        )
    return PlanIssue("error", "yaml_invalid", f"invalid YAML: {error}", source=source)


def _too_large(source: str) -> PlanIssue:
    return PlanIssue(
        "error", "too_large", f"the plan is larger than {MAX_PLAN_BYTES // 1024} KiB; refusing to parse it",
        source=source, hint="a release plan is a few kilobytes; is this the right file?",
    )


def _empty(source: str) -> PlanIssue:
    return PlanIssue(
        "error", "empty", "the plan is empty", source=source,
        hint="a release plan starts with model: org/name, then versions:, use_cases:, tiers: and stages:",
    )


def _not_a_mapping(node: yaml.Node, source: str) -> PlanIssue:
    got = "a list" if isinstance(node, yaml.SequenceNode) else f"the single value {node.value!r}"
    return _at(PlanIssue(
        "error", "not_a_mapping",
        f"the plan must be a mapping of fields (model:, versions:, stages: ...), but the file holds {got}",
        source=source, hint="is this the right file? A release plan starts with model: org/name",
    ), node)


def _dedupe(issues: typing.Iterable[PlanIssue]) -> list[PlanIssue]:
    seen: set[tuple[str, str]] = set()
    kept = []
    for issue in issues:
        if (issue.path, issue.message) not in seen:
            seen.add((issue.path, issue.message))
            kept.append(issue)
    return kept


def _sorted(issues: list[PlanIssue]) -> list[PlanIssue]:
    return sorted(issues, key=lambda i: (i.line or 0, i.column or 0))
