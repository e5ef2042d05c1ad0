"""The hash chain: canonical JSON, entry hashes and a verifier. Pure: no I/O.

Each entry's hash covers its own fields and the previous entry's hash, so an edited,
deleted, inserted or reordered entry breaks the chain at a point the verifier names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

GENESIS = "0" * 64
HASHED_FIELDS = ("seq", "at", "actor", "action", "target", "reason", "changes", "prev_hash")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"not JSON-serialisable in an audit entry: {type(value).__name__}")


def format_time(value: datetime) -> str:
    """UTC, microsecond precision, 'Z' suffix: one spelling for every backend."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME)


def entry_hash(fields: Mapping[str, Any]) -> str:
    """The hash of one entry over its canonical fields (which include the previous hash)."""
    payload = {name: fields.get(name) for name in HASHED_FIELDS}
    return hashlib.sha256(canonical_json(payload)).hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    kind: str  # edited | deleted | inserted_or_reordered | bad_start
    message: str


def verify_chain(entries: Iterable[Mapping[str, Any]], *, start_prev: str = GENESIS, start_seq: int = 1) -> list[ChainProblem]:
    """Check entries (in ``seq`` order) link up; return every problem found, empty if intact."""
    problems: list[ChainProblem] = []
    expected_prev = start_prev
    expected_seq = start_seq
    for entry in entries:
        seq = int(entry["seq"])
        if seq != expected_seq:
            if seq > expected_seq:
                problems.append(ChainProblem(seq, "deleted", f"entries {expected_seq}..{seq - 1} are missing before entry {seq}"))
            else:
                problems.append(ChainProblem(seq, "inserted_or_reordered", f"entry {seq} appears after entry {expected_seq - 1}: sequence goes backwards"))
        recomputed = entry_hash(entry)
        if recomputed != entry["hash"]:
            problems.append(ChainProblem(seq, "edited", f"entry {seq} was edited: its content no longer matches its hash"))
        elif entry["prev_hash"] != expected_prev:
            problems.append(ChainProblem(seq, "inserted_or_reordered", f"entry {seq} does not follow the entry before it: an entry was inserted, deleted or reordered here"))
        expected_prev = str(entry["hash"])
        expected_seq = seq + 1
    return problems
