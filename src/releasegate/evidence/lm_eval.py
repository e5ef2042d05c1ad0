"""Importer for lm-evaluation-harness (0.4.x) aggregated results files (``results_<date>.json``).

The file holds ``results`` (``{task: {"alias": ..., "<metric>,<filter>": value,
"<metric>_stderr,<filter>": stderr | "N/A"}}``), ``groups``/``group_subtasks`` for task
groups, ``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``
(``{task: {"original": n, "effective": n}}``), ``config`` (``model``, ``model_args``...),
``model_name``, ``date`` (Unix time at start), ``total_evaluation_time_seconds`` and more.

Each ``"<metric>,<filter>"`` of each task becomes one ``EvalResult``: task is the lm-eval task,
suite the outermost group containing it (or the task itself), metric the metric name, with
``,<filter>`` kept when the filter is not ``none`` (``"exact_match,strict-match"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ._common import (
    SNIFF_BYTES,
    SourceFile,
    describe,
    finite_number,
    invalid,
    json_top_level,
    optional_count,
    optional_stderr,
    parse_json,
    read_source,
    require_unique,
)
from .records import EvalResult, ImportBatch

FORMAT = "lm_eval"
DEFAULT_FILTER = "none"
NOT_AVAILABLE = "N/A"
#: Top-level keys only an lm-eval results file has beside ``results``.
_MARKERS = frozenset(
    {
        "versions",
        "configs",
        "n-shot",
        "n-samples",
        "higher_is_better",
        "group_subtasks",
        "groups",
        "lm_eval_version",
        "config",
    }
)


class LmEvalImporter:
    """Reads lm-evaluation-harness 0.4 results JSON into one result per task and metric."""

    name = FORMAT

    def sniff(self, path: Path, head: bytes) -> bool:
        """Claim a JSON object whose ``results`` is an object, beside lm-eval's other keys."""
        keys = json_top_level(head)
        if keys is None or keys.get("results") != "{" or "eval" in keys:
            return False
        return bool(_MARKERS & keys.keys()) or len(head) >= SNIFF_BYTES

    def load(self, path: Path) -> ImportBatch:
        """Read the results file; refuse metric values that are not finite numbers."""
        source = read_source(path)
        doc = parse_json(source)
        if not isinstance(doc, Mapping):
            raise invalid(
                source, f"an lm-eval results file must be a JSON object, got {describe(doc)}"
            )
        results = doc.get("results")
        if not isinstance(results, Mapping) or not results:
            raise invalid(source, "results must be a non-empty object of tasks", field="results")
        warnings: list[str] = []
        parents = _parents(source, doc.get("group_subtasks"))
        groups = set(_mapping(doc.get("groups"))) | {
            group for group, members in _mapping(doc.get("group_subtasks")).items() if members
        }
        effective = _effective_samples(source, doc.get("n-samples"))
        model = _model_name(doc)
        started_at, completed_at = _times(source, doc)
        versions = _mapping(doc.get("versions"))
        n_shot = _mapping(doc.get("n-shot"))
        higher_is_better = _mapping(doc.get("higher_is_better"))
        config = _mapping(doc.get("config"))
        run_extra: dict[str, Any] = {
            "lm_eval_version": doc.get("lm_eval_version"),
            "git_hash": doc.get("git_hash"),
            "backend": config.get("model"),
            "limit": config.get("limit"),
        }

        records: list[EvalResult] = []
        for task, entry in results.items():
            where = f"results.{task}"
            if not isinstance(entry, Mapping):
                raise invalid(source, f"{where} must be an object", field=where)
            values: dict[tuple[str, str], tuple[str, object]] = {}
            stderrs: dict[tuple[str, str], tuple[str, object]] = {}
            for key, raw in entry.items():
                if "," not in key:
                    continue  # "alias", "name", "sample_len": descriptions, not metrics
                metric, _, filter_name = key.partition(",")
                if metric.endswith("_stderr"):
                    stderrs[(metric.removesuffix("_stderr"), filter_name)] = (key, raw)
                else:
                    values[(metric, filter_name)] = (key, raw)
            if not values:
                warnings.append(f"{where} has no metric values; skipped")
                continue
            is_group = task in groups
            samples = effective.get(task)
            if samples is None and is_group:
                samples = _group_samples(task, doc.get("group_subtasks"), effective)
            hib = _mapping(higher_is_better.get(task))
            for (metric, filter_name), (key, raw) in values.items():
                value = finite_number(source, raw, f'{where}["{key}"]', task=task, key=key)
                stderr_key, stderr_raw = stderrs.get((metric, filter_name), ("", None))
                stderr = (
                    None
                    if stderr_raw in (None, NOT_AVAILABLE, "")
                    else optional_stderr(
                        source, stderr_raw, f'{where}["{stderr_key}"]', task=task, key=stderr_key
                    )
                )
                records.append(
                    EvalResult(
                        suite=_outermost(task, parents),
                        task=task,
                        metric=metric
                        if filter_name == DEFAULT_FILTER
                        else f"{metric},{filter_name}",
                        value=value,
                        stderr=stderr,
                        model=model,
                        samples=samples,
                        source_format=FORMAT,
                        source_sha256=source.sha256,
                        source_name=source.name,
                        started_at=started_at,
                        completed_at=completed_at,
                        extra={
                            **run_extra,
                            "filter": filter_name,
                            "alias": entry.get("alias"),
                            "is_group": is_group,
                            "task_version": versions.get(task),
                            "num_fewshot": n_shot.get(task),
                            "higher_is_better": hib.get(metric),
                        },
                    )
                )
        if not records:
            raise invalid(
                source,
                "no metric values found; releasegate reads lm-eval 0.4 results, whose metric "
                'keys look like "acc,none"',
                field="results",
            )
        require_unique(source, records)
        return ImportBatch(
            source_format=FORMAT,
            source_sha256=source.sha256,
            source_name=source.name,
            results=tuple(records),
            warnings=tuple(warnings),
        )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _parents(source: SourceFile, group_subtasks: object) -> dict[str, str]:
    """Map each subtask to the group that lists it."""
    parents: dict[str, str] = {}
    for group, members in _mapping(group_subtasks).items():
        if not isinstance(members, list):
            raise invalid(
                source, f"group_subtasks.{group} must be a list", field=f"group_subtasks.{group}"
            )
        for member in members:
            if isinstance(member, str) and member != group:
                parents.setdefault(member, group)
    return parents


def _outermost(task: str, parents: Mapping[str, str]) -> str:
    seen = {task}
    while task in parents and parents[task] not in seen:
        task = parents[task]
        seen.add(task)
    return task


def _effective_samples(source: SourceFile, n_samples: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task, entry in _mapping(n_samples).items():
        if isinstance(entry, Mapping) and entry.get("effective") is not None:
            count = optional_count(source, entry["effective"], f"n-samples.{task}.effective")
            if count is not None:
                counts[task] = count
    return counts


def _group_samples(group: str, group_subtasks: object, effective: Mapping[str, int]) -> int | None:
    """Samples behind a group's aggregate: the sum over its leaf tasks, if all are known."""
    tree = _mapping(group_subtasks)
    total = 0
    stack, seen = [group], {group}
    while stack:
        node = stack.pop()
        members = tree.get(node)
        if isinstance(members, list) and members:
            for member in members:
                if isinstance(member, str) and member not in seen:
                    seen.add(member)
                    stack.append(member)
        elif node in effective:
            total += effective[node]
        else:
            return None
    return total


def _model_name(doc: Mapping[str, Any]) -> str | None:
    """The model as the file names it: ``model_name``, else ``pretrained=`` in model_args."""
    name = doc.get("model_name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    config = _mapping(doc.get("config"))
    args = config.get("model_args")
    if isinstance(args, Mapping):
        for key in ("peft", "delta", "pretrained", "model", "path", "engine"):
            if isinstance(args.get(key), str) and args[key].strip():
                return str(args[key]).strip()
    elif isinstance(args, str):
        pairs = dict(part.split("=", 1) for part in args.split(",") if "=" in part)
        for key in ("peft", "delta", "pretrained", "model", "path", "engine"):
            if pairs.get(key, "").strip():
                return pairs[key].strip()
    backend = config.get("model")
    return backend.strip() if isinstance(backend, str) and backend.strip() else None


def _times(source: SourceFile, doc: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    """Start from ``date`` (Unix time); end from it plus ``total_evaluation_time_seconds``."""
    date = doc.get("date")
    if date is None:
        return None, None
    seconds = finite_number(source, date, "date")
    started = datetime.fromtimestamp(seconds, tz=UTC)
    duration = doc.get("total_evaluation_time_seconds")
    if isinstance(duration, str):
        try:
            duration = float(duration)
        except ValueError:
            return started, None
    if (
        isinstance(duration, int | float)
        and not isinstance(duration, bool)
        and math.isfinite(duration)
        and duration >= 0
    ):
        return started, started + timedelta(seconds=float(duration))
    return started, None
