"""Load a release plan from YAML, reporting every problem with its field path, line and column.

The text is composed into YAML nodes first (so each value keeps the line it came from),
checked for duplicate keys and alias bombs, constructed, validated by the pydantic schema
and then by ``plan.validate``. Any error raises ``PlanError`` listing all of them.

Composing and node positions live in ``plan.yamlpos``; phrasing pydantic errors for people
lives in ``plan.messages``.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from releasegate.errors import InvalidInput
from releasegate.plan.messages import schema_issue
from releasegate.plan.schema import Plan
from releasegate.plan.validate import PlanIssue, validate_plan
from releasegate.plan.yamlpos import MAX_DEPTH as MAX_DEPTH
from releasegate.plan.yamlpos import MAX_VALUES as MAX_VALUES
from releasegate.plan.yamlpos import Index, PlanYamlLoader, at_node, measure

MAX_PLAN_BYTES = 1024 * 1024

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
        loader = PlanYamlLoader(text)  # checks that every character is printable
    except yaml.YAMLError as e:
        raise PlanError([_yaml_issue(e, source, text)], source=source) from None
    try:
        return _load(loader, text, source, base_dir)
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------- stages of loading


def _load(loader: PlanYamlLoader, text: str, source: str, base_dir: Path | None) -> LoadedPlan:
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        raise PlanError([_yaml_issue(e, source, text)], source=source) from None
    if root is None or root.tag == "tag:yaml.org,2002:null":
        raise PlanError([_empty(source)], source=source)
    if not isinstance(root, yaml.MappingNode):
        raise PlanError([_not_a_mapping(root, source)], source=source)
    too_big = measure(root, source)
    if too_big is not None:
        raise PlanError([too_big], source=source)

    issues: list[PlanIssue] = []
    try:
        index = Index(loader, root, source, issues)
        if any(i.code == "yaml_invalid" for i in issues):
            raise PlanError(_sorted(issues), source=source)
        data = loader.construct_document(root)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        issues.append(_yaml_issue(e, source, text))
        raise PlanError(_sorted(issues), source=source) from None

    try:
        plan = Plan.model_validate(data)
    except ValidationError as e:
        issues.extend(_dedupe(schema_issue(err, index, source) for err in e.errors(include_url=False)))
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
    return at_node(PlanIssue(
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
