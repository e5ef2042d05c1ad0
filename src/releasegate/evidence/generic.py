"""Importers for releasegate's own generic evidence formats, JSON and CSV.

They are for evaluations and red-team reports that no built-in importer reads: convert to
one of these shapes (documented in ``docs/evidence-formats.md``) and import. Both are strict:
an unknown key or column is refused rather than ignored, because a misspelt ``stderr`` column
silently dropped is worse than a refusal.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ._common import (
    SourceFile,
    describe,
    finite_number,
    invalid,
    json_top_level,
    optional_count,
    optional_stderr,
    optional_text,
    parse_json,
    read_source,
    require_unique,
    required_text,
    timestamp,
)
from .records import EvalResult, Finding, FindingStatus, ImportBatch, Severity

JSON_FORMAT = "generic_json"
CSV_FORMAT = "generic_csv"

RESULT_FIELDS = ("suite", "task", "metric", "value", "stderr", "samples", "model")
RESULT_REQUIRED = ("suite", "metric", "value")
FINDING_FIELDS = ("title", "severity", "status", "description", "reproduction", "model")
FINDING_REQUIRED = ("title", "severity")
TOP_LEVEL_FIELDS = ("results", "findings", "model", "started_at", "completed_at")
SEVERITIES = tuple(s.value for s in Severity)
STATUSES = tuple(s.value for s in FindingStatus)


def _severity(source: SourceFile, value: object, where: str, **details: Any) -> Severity:
    text = required_text(source, value, where, **details)
    try:
        return Severity(text.lower())
    except ValueError:
        raise invalid(
            source,
            f"{where} is {text!r}; severity must be one of {', '.join(SEVERITIES)}",
            field=where,
            **details,
        ) from None


def _status(source: SourceFile, value: object, where: str, **details: Any) -> FindingStatus:
    text = optional_text(source, value, where, **details)
    if text is None:
        return FindingStatus.OPEN
    try:
        return FindingStatus(text.lower())
    except ValueError:
        raise invalid(
            source,
            f"{where} is {text!r}; status must be one of {', '.join(STATUSES)}",
            field=where,
            **details,
        ) from None


class GenericJsonImporter:
    """Reads ``{"results": [...], "findings": [...]}`` as documented in evidence-formats.md."""

    name = JSON_FORMAT

    def sniff(self, path: Path, head: bytes) -> bool:
        """Claim a JSON object whose ``results`` or ``findings`` is a list."""
        keys = json_top_level(head)
        if keys is None or "eval" in keys:
            return False
        return keys.get("results") == "[" or keys.get("findings") == "["

    def load(self, path: Path) -> ImportBatch:
        """Read and check every result and finding; refuse unknown keys and non-numbers."""
        source = read_source(path)
        doc = parse_json(source)
        if not isinstance(doc, Mapping):
            raise invalid(source, f"must be a JSON object, got {describe(doc)}")
        _refuse_unknown(source, doc, TOP_LEVEL_FIELDS, "the top level")
        warnings: list[str] = []
        default_model = optional_text(source, doc.get("model"), "model")
        started_at = timestamp(source, doc.get("started_at"), "started_at", warnings)
        completed_at = timestamp(source, doc.get("completed_at"), "completed_at", warnings)
        raw_results = _list(source, doc, "results")
        raw_findings = _list(source, doc, "findings")
        if not raw_results and not raw_findings:
            raise invalid(source, "has no results and no findings")

        results: list[EvalResult] = []
        for index, item in enumerate(raw_results):
            where = f"results[{index}]"
            if not isinstance(item, Mapping):
                raise invalid(source, f"{where} must be an object", field=where)
            _refuse_unknown(source, item, (*RESULT_FIELDS, "extra"), where)
            results.append(
                _result(
                    source,
                    item,
                    _json_label(where),
                    source_format=JSON_FORMAT,
                    default_model=default_model,
                    started_at=started_at,
                    completed_at=completed_at,
                )
            )
        require_unique(source, results, [f"results[{i}]" for i in range(len(results))])

        findings: list[Finding] = []
        for index, item in enumerate(raw_findings):
            where = f"findings[{index}]"
            if not isinstance(item, Mapping):
                raise invalid(source, f"{where} must be an object", field=where)
            _refuse_unknown(source, item, (*FINDING_FIELDS, "extra"), where)
            findings.append(
                _finding(
                    source,
                    item,
                    _json_label(where),
                    source_format=JSON_FORMAT,
                    default_model=default_model,
                )
            )
        return ImportBatch(
            source_format=JSON_FORMAT,
            source_sha256=source.sha256,
            source_name=source.name,
            results=tuple(results),
            findings=tuple(findings),
            warnings=tuple(warnings),
        )


def _list(source: SourceFile, doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(source, f"{key} must be a list, got {describe(value)}", field=key)
    return value


def _refuse_unknown(
    source: SourceFile, item: Mapping[str, Any], allowed: tuple[str, ...], where: str
) -> None:
    unknown = sorted(set(item) - set(allowed))
    if unknown:
        raise invalid(
            source,
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed)}",
            field=where,
            unknown=unknown,
        )


def _extra(source: SourceFile, item: Mapping[str, Any], label: Label) -> Mapping[str, Any]:
    extra = item.get("extra")
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise invalid(source, f"{label('extra')} must be an object", field=label("extra"))
    return extra


Label = Callable[[str], str]


def _json_label(where: str) -> Label:
    return lambda name: f"{where}.{name}"


def _csv_label(line: int) -> Label:
    return lambda name: f"line {line}, column {name}"


def _result(
    source: SourceFile,
    item: Mapping[str, Any],
    label: Label,
    *,
    source_format: str,
    default_model: str | None = None,
    started_at: datetime | None = None,
    completed_at: datetime | None = None,
    **details: Any,
) -> EvalResult:
    for name in RESULT_REQUIRED:
        if item.get(name) is None:
            raise invalid(source, f"{label(name)} is required", field=label(name), **details)
    return EvalResult(
        suite=required_text(source, item.get("suite"), label("suite"), **details),
        task=optional_text(source, item.get("task"), label("task"), **details),
        metric=required_text(source, item.get("metric"), label("metric"), **details),
        value=finite_number(source, item.get("value"), label("value"), **details),
        stderr=optional_stderr(source, item.get("stderr"), label("stderr"), **details),
        samples=optional_count(source, item.get("samples"), label("samples"), **details),
        model=optional_text(source, item.get("model"), label("model"), **details) or default_model,
        source_format=source_format,
        source_sha256=source.sha256,
        source_name=source.name,
        started_at=started_at,
        completed_at=completed_at,
        extra=_extra(source, item, label),
    )


def _finding(
    source: SourceFile,
    item: Mapping[str, Any],
    label: Label,
    *,
    source_format: str,
    default_model: str | None = None,
    **details: Any,
) -> Finding:
    description = optional_text(source, item.get("description"), label("description"), **details)
    reproduction = optional_text(source, item.get("reproduction"), label("reproduction"), **details)
    return Finding(
        title=required_text(source, item.get("title"), label("title"), **details),
        severity=_severity(source, item.get("severity"), label("severity"), **details),
        status=_status(source, item.get("status"), label("status"), **details),
        description=description or "",
        reproduction=reproduction or "",
        model=optional_text(source, item.get("model"), label("model"), **details) or default_model,
        source_format=source_format,
        source_sha256=source.sha256,
        source_name=source.name,
        extra=_extra(source, item, label),
    )


class GenericCsvImporter:
    """Reads a results CSV (``suite,task,metric,value,stderr,samples,model``) or a findings CSV
    (``title,severity,status,description,reproduction``); the header says which."""

    name = CSV_FORMAT

    def sniff(self, path: Path, head: bytes) -> bool:
        """Claim ``.csv`` files, and any file whose first line is one of the two headers."""
        if path.suffix.lower() == ".csv":
            return True
        first_line = head.decode("utf-8-sig", errors="replace").splitlines()[:1]
        if not first_line:
            return False
        columns = {c.strip().lower() for c in first_line[0].split(",")}
        return set(RESULT_REQUIRED) <= columns or set(FINDING_REQUIRED) <= columns

    def load(self, path: Path) -> ImportBatch:
        """Read every row; refuse missing or unknown columns and bad cells, naming the line."""
        source = read_source(path)
        try:
            text = source.data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise invalid(
                source,
                f"is not UTF-8 text: bad byte at offset {exc.start}",
                code="evidence_unreadable",
            ) from None
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise invalid(source, "the file is empty") from None
        except csv.Error as exc:
            raise invalid(source, f"line 1: {exc}", code="evidence_unreadable", line=1) from None
        columns = [c.strip().lower() for c in header]
        is_results = bool({"suite", "metric", "value"} & set(columns))
        is_findings = bool({"title", "severity"} & set(columns))
        if is_results == is_findings:
            raise invalid(
                source,
                "line 1: the header must be a results header "
                f"({','.join(RESULT_FIELDS)}) or a findings header ({','.join(FINDING_FIELDS[:5])})"
                f", got {','.join(columns)!r}",
                line=1,
            )
        allowed, required = (
            (RESULT_FIELDS, RESULT_REQUIRED) if is_results else (FINDING_FIELDS, FINDING_REQUIRED)
        )
        missing = [c for c in required if c not in columns]
        if missing:
            raise invalid(
                source,
                f"line 1: missing required column(s) {', '.join(missing)}; "
                f"the header must include {','.join(required)}",
                line=1,
                missing=missing,
            )
        unknown = [c for c in columns if c not in allowed]
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if unknown or duplicated:
            problem = (
                f"unknown column(s) {', '.join(map(repr, unknown))}"
                if unknown
                else f"column(s) {', '.join(duplicated)} appear more than once"
            )
            raise invalid(
                source, f"line 1: {problem}; allowed columns: {','.join(allowed)}", line=1
            )

        results: list[EvalResult] = []
        places: list[str] = []
        findings: list[Finding] = []
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise invalid(
                    source,
                    f"line {reader.line_num}: {exc}",
                    code="evidence_unreadable",
                    line=reader.line_num,
                ) from None
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                raise invalid(
                    source,
                    f"line {line}: has {len(row)} fields, the header has {len(columns)}",
                    line=line,
                )
            cells = {column: _cell(row[i]) for i, column in enumerate(columns)}
            label = _csv_label(line)
            if is_results:
                item: dict[str, Any] = {
                    **cells,
                    "value": _number_cell(source, cells.get("value"), label("value"), line),
                    "stderr": _number_cell(source, cells.get("stderr"), label("stderr"), line),
                    "samples": _count_cell(source, cells.get("samples"), label("samples"), line),
                }
                results.append(_result(source, item, label, source_format=CSV_FORMAT, line=line))
                places.append(f"line {line}")
            else:
                findings.append(_finding(source, cells, label, source_format=CSV_FORMAT, line=line))
        if not results and not findings:
            raise invalid(source, "has a header but no rows")
        require_unique(source, results, places)
        return ImportBatch(
            source_format=CSV_FORMAT,
            source_sha256=source.sha256,
            source_name=source.name,
            results=tuple(results),
            findings=tuple(findings),
        )


def _cell(text: str) -> str | None:
    stripped = text.strip()
    return stripped or None


def _number_cell(source: SourceFile, text: str | None, where: str, line: int) -> float | None:
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        raise invalid(
            source, f"{where} must be a number, got {describe(text)}", line=line, field=where
        ) from None
    if not math.isfinite(number):
        raise invalid(
            source,
            f"{where} must be a finite number, got {describe(number)}",
            line=line,
            field=where,
        )
    return number


def _count_cell(source: SourceFile, text: str | None, where: str, line: int) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise invalid(
            source, f"{where} must be a whole number, got {describe(text)}", line=line, field=where
        ) from None
