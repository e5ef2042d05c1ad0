"""Compose a plan's YAML into nodes and remember where each value was written.

``PlanYamlLoader`` refuses documents nested too deeply, ``measure`` refuses alias bombs, and
``Index`` maps each field path to the YAML node it came from (reporting duplicate keys and
unreadable scalars as it goes), so every problem can be reported with its line and column.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

import yaml

from releasegate.plan.validate import PlanIssue, join_path, parent_path

MAX_VALUES = 100_000
MAX_DEPTH = 64

__all__ = ["MAX_DEPTH", "MAX_VALUES", "Index", "PlanYamlLoader", "at_node", "measure"]


class PlanYamlLoader(yaml.SafeLoader):
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


def measure(root: yaml.Node, source: str) -> PlanIssue | None:
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
            return at_node(PlanIssue(
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


class Index:
    """Field path -> the YAML node it was written at. Reports duplicate keys while building."""

    def __init__(self, loader: PlanYamlLoader, root: yaml.Node, source: str, issues: list[PlanIssue]) -> None:
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
            self._issues.append(at_node(PlanIssue(
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
            self._issues.append(at_node(PlanIssue(
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
        return at_node(issue, entry.node) if entry else issue


def at_node(issue: PlanIssue, node: yaml.Node) -> PlanIssue:
    mark = node.start_mark
    if mark is None:
        return issue
    return PlanIssue(
        issue.severity, issue.code, issue.message, path=issue.path, line=mark.line + 1,
        column=mark.column + 1, source=issue.source, hint=issue.hint,
    )

