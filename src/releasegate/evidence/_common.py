"""Helpers the built-in importers share: reading a source file, and turning bad values into
``InvalidInput`` errors that name the file and the field or line at fault."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from releasegate.errors import InvalidInput

from .records import EvalResult

#: How much of a file ``import_file`` hands to ``sniff``.
SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class SourceFile:
    """The bytes of one evidence file, with its SHA-256 and the name errors should show."""

    path: Path
    data: bytes
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


def invalid(
    source: Path | SourceFile, problem: str, *, code: str = "evidence_invalid", **details: Any
) -> InvalidInput:
    """Build an ``InvalidInput`` whose message starts with the file name, for 3 a.m. readers."""
    path = source.path if isinstance(source, SourceFile) else source
    return InvalidInput(
        f"{path.name}: {problem}", code=code, details={"file": str(path), **details}
    )


def read_source(path: str | Path) -> SourceFile:
    """Read a whole evidence file; refuse a missing, unreadable or empty one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise invalid(path, "no such file", code="evidence_unreadable") from None
    except IsADirectoryError:
        raise invalid(path, "is a directory, not a file", code="evidence_unreadable") from None
    except OSError as exc:
        raise invalid(path, f"cannot be read ({exc.strerror})", code="evidence_unreadable") from exc
    if not data.strip():
        raise invalid(path, "the file is empty")
    return SourceFile(path=path, data=data, sha256=hashlib.sha256(data).hexdigest())


def read_head(path: str | Path) -> bytes:
    """The first ``SNIFF_BYTES`` of a file; refuse a missing, unreadable or empty one."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
            more = bool(handle.read(1)) if not head.strip() else True
    except FileNotFoundError:
        raise invalid(path, "no such file", code="evidence_unreadable") from None
    except IsADirectoryError:
        raise invalid(path, "is a directory, not a file", code="evidence_unreadable") from None
    except OSError as exc:
        raise invalid(path, f"cannot be read ({exc.strerror})", code="evidence_unreadable") from exc
    if not head.strip() and not more:
        raise invalid(path, "the file is empty")
    return head


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (evaluation logs can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_json(source: SourceFile, data: bytes | None = None, *, member: str | None = None) -> Any:
    """Parse JSON bytes (the file's, or a member of it); refuse bad JSON with line and column."""
    raw = source.data if data is None else data
    where = f" (member {member})" if member else ""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise invalid(
            source,
            f"is not UTF-8 text{where}: bad byte at offset {exc.start}",
            code="evidence_unreadable",
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid(
            source,
            f"is not valid JSON{where}: {exc.msg} at line {exc.lineno} column {exc.colno}"
            + (" (is the file truncated?)" if exc.pos >= len(text.rstrip()) else ""),
            code="evidence_unreadable",
            line=exc.lineno,
            column=exc.colno,
            **({"member": member} if member else {}),
        ) from None


def describe(value: object) -> str:
    """Short description of a bad value for an error message."""
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "infinity" if value > 0 else "-infinity"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return f"a {type(value).__name__}"


def finite_number(source: Path | SourceFile, value: object, where: str, **details: Any) -> float:
    """Return ``value`` as a finite float; refuse strings, booleans, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(
            source,
            f"{where} must be a finite number, got {describe(value)}",
            field=where,
            **details,
        )
    return float(value)


def optional_stderr(
    source: Path | SourceFile, value: object, where: str, **details: Any
) -> float | None:
    """Return a standard error (finite, >= 0) or None when absent."""
    if value is None:
        return None
    number = finite_number(source, value, where, **details)
    if number < 0:
        raise invalid(source, f"{where} must be >= 0, got {number}", field=where, **details)
    return number


def optional_count(
    source: Path | SourceFile, value: object, where: str, **details: Any
) -> int | None:
    """Return a sample count (an integer >= 0) or None when absent."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(
            source, f"{where} must be a whole number, got {describe(value)}", field=where, **details
        )
    if value < 0:
        raise invalid(source, f"{where} must be >= 0, got {value}", field=where, **details)
    return value


def optional_text(
    source: Path | SourceFile, value: object, where: str, **details: Any
) -> str | None:
    """Return a non-empty string, or None for null/empty; refuse other types."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(
            source, f"{where} must be a string, got {describe(value)}", field=where, **details
        )
    return value.strip() or None


def required_text(source: Path | SourceFile, value: object, where: str, **details: Any) -> str:
    """Return a non-empty string; refuse a missing, empty or non-string value."""
    text = optional_text(source, value, where, **details)
    if text is None:
        raise invalid(source, f"{where} is required and must not be empty", field=where, **details)
    return text


def timestamp(
    source: Path | SourceFile, value: object, where: str, warnings: list[str]
) -> datetime | None:
    """Parse an ISO 8601 timestamp; an empty one is None, one without an offset is taken as UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif not isinstance(value, str):
        raise invalid(
            source, f"{where} must be an ISO 8601 timestamp, got {describe(value)}", field=where
        )
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise invalid(
                source, f"{where} is not an ISO 8601 timestamp: {value!r}", field=where
            ) from None
    if parsed.utcoffset() is None:
        warnings.append(f"{where} {value!r} has no UTC offset; taken as UTC")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def require_unique(
    source: Path | SourceFile, results: Iterable[EvalResult], places: Iterable[str] | None = None
) -> None:
    """Refuse a batch that reports the same (suite, task, metric, model) twice."""
    seen: dict[tuple[str, str | None, str, str | None], str] = {}
    place_list = list(places) if places is not None else None
    for index, result in enumerate(results):
        place = place_list[index] if place_list is not None else f"result {index + 1}"
        if result.key in seen:
            suite, task, metric, model = result.key
            raise invalid(
                source,
                f"{place} repeats suite={suite!r} task={task!r} metric={metric!r} model={model!r}"
                f" already given at {seen[result.key]}; which one counts is ambiguous",
                first=seen[result.key],
                second=place,
            )
        seen[result.key] = place


def json_top_level(head: bytes) -> dict[str, str] | None:
    """Map each top-level key of a JSON object to the first character of its value.

    Works on a truncated prefix of the file (what ``sniff`` receives), so importers can
    recognise their files without parsing them whole. Returns None when ``head`` does not
    start like a JSON object.
    """
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text.startswith("{"):
        return None
    keys: dict[str, str] = {}
    depth = 0
    index = 0
    pending_key: str | None = None
    awaiting_value = False
    length = len(text)
    while index < length:
        char = text[index]
        if char == '"':
            end = index + 1
            while end < length and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if end >= length:
                break
            if depth == 1 and awaiting_value and pending_key is not None:
                keys[pending_key] = '"'
                pending_key, awaiting_value = None, False
            elif depth == 1 and pending_key is None:
                try:
                    pending_key = json.loads(text[index : end + 1])
                except json.JSONDecodeError:
                    return None
            index = end + 1
            continue
        if char in "{[":
            if depth == 1 and awaiting_value and pending_key is not None:
                keys[pending_key] = char
                pending_key, awaiting_value = None, False
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                break
        elif char == ":" and depth == 1 and pending_key is not None:
            awaiting_value = True
        elif depth == 1 and awaiting_value and pending_key is not None and not char.isspace():
            keys[pending_key] = char
            pending_key, awaiting_value = None, False
        index += 1
    return keys
