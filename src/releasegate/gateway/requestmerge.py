"""Request-log records into the store: each request's ``request_events`` row and its hourly ``request_buckets``.

``apply_records`` merges a batch of start, end and flags records (``gateway.requestlog``'s schema)
into the rows of their requests and adds each request once to its bucket, in the caller's
transaction. ``shipper.RequestLogShipper`` decides which records and when; this module, what they
become.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Insert, Table, bindparam, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from releasegate.store.base import UTCDateTime
from releasegate.store.requests import RequestBucket, RequestEvent

__all__ = ["apply_records"]

_EVENTS = cast(Table, RequestEvent.__table__)
_BUCKETS = cast(Table, RequestBucket.__table__)
_COLUMNS = tuple(c.name for c in _EVENTS.columns)
_BLANK: dict[str, Any] = dict.fromkeys(_COLUMNS)  # a request no record has shipped for yet
_ROW_VALUES = operator.itemgetter(*_COLUMNS)
_BUCKET_KEY = ("bucket_start", "model", "version", "stage", "deployer_id", "use_case")
_COUNTERS = ("requests", "allowed", "denied", "errors", "scope_violations", "prompt_tokens", "completion_tokens",
             "latency_ms_sum")

ID_CHUNK = 500  # ids per IN (...) query
STRING_LIMITS = {"deployer_id": 40, "key_id": 40, "model": 160, "version": 64, "stage": 64, "use_case": 64, "endpoint": 200, "reason_code": 64, "replica": 64}


def _clip(name: str, value: Any) -> Any:
    if isinstance(value, str) and name in STRING_LIMITS:
        return value[: STRING_LIMITS[name]]
    return value


def _time(at: Any) -> datetime:
    return datetime.fromtimestamp(float(at), UTC)


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _flag_names(flags: Any) -> list[str]:
    """Detectors that flagged the request (an entry ``{"error": ...}`` is a detector that could not judge)."""
    if isinstance(flags, dict):
        return [str(k) for k, v in flags.items() if not (isinstance(v, dict) and "error" in v)]
    if isinstance(flags, list):
        return [str(f) for f in flags]
    return []


def _merge_flags(ev: dict[str, Any], rec: dict[str, Any]) -> list[str]:
    """Add the record's flags and detector errors to ``ev["flags"]`` (first word per detector wins);
    the names of the detectors whose flags are new."""
    flags = rec.get("flags")
    errors = rec.get("detector_errors")
    if not flags and not errors:
        return []  # nothing to add (most records)
    have: dict[str, Any] = {}
    if isinstance(ev["flags"], dict):
        have = dict(ev["flags"])
    elif isinstance(ev["flags"], list):
        have = {str(f): {} for f in ev["flags"]}
    new: dict[str, Any] = {}
    if isinstance(flags, dict):
        new.update({str(k): v for k, v in flags.items()})
    elif isinstance(flags, list):
        new.update({str(f): {} for f in flags})
    if isinstance(errors, dict):
        for k, message in errors.items():
            new.setdefault(str(k), {"error": str(message)[:300]})
    fresh = {k: v for k, v in new.items() if k not in have}
    if fresh:
        ev["flags"] = {**have, **fresh}  # a new object: the stored row is compared with it
    return _flag_names(fresh)


@dataclass
class _Increments:
    requests: int = 0
    allowed: int = 0
    denied: int = 0
    errors: int = 0
    scope_violations: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms_sum: float = 0.0
    flagged: dict[str, int] = field(default_factory=dict)


BucketKey = tuple[datetime, str, str, str, str, str]


def _bucket_key(ev: dict[str, Any]) -> BucketKey:
    started_at = ev["started_at"]
    assert started_at is not None
    hour = started_at.replace(minute=0, second=0, microsecond=0)
    return (hour, ev["model"] or "", ev["version"] or "", ev["stage"] or "", ev["deployer_id"] or "", ev["use_case"] or "")


def _is_scope_violation(rec: dict[str, Any], ev: dict[str, Any]) -> bool:
    if ev["outcome"] != "denied":
        return False
    return bool(rec.get("scope_violation")) or (ev["reason_code"] or "").startswith("scope_")


def _outcome(rec: dict[str, Any], status: int | None) -> str:
    """allowed | denied | error, from an end record (the gateway's own words are mapped)."""
    said = str(rec.get("outcome") or "")
    if said in ("denied", "error"):
        return said
    if said in ("upstream_failed", "failed") or (status is not None and status >= 500):
        return "error"
    return "allowed"


_NOTED = tuple((name, STRING_LIMITS[name]) for name in ("deployer_id", "key_id", "version", "stage", "use_case", "endpoint"))


def _note_request(ev: dict[str, Any], rec: dict[str, Any]) -> None:
    """Who asked for what: from the first record of the request that ships."""
    model = rec.get("model_name") or rec.get("model")
    ev["model"] = str(model)[: STRING_LIMITS["model"]] if model is not None else None
    for name, limit in _NOTED:
        value = rec.get(name)
        ev[name] = str(value)[:limit] if value is not None else None
    ev["stream"] = bool(rec["stream"]) if rec.get("stream") is not None else None
    reason = rec.get("reason_code") or rec.get("reason")
    ev["reason_code"] = str(reason)[: STRING_LIMITS["reason_code"]] if reason else None


def apply_records(conn: Connection, records: list[dict[str, Any]], *, read_all: bool) -> bool:
    """Merge ``records`` into their requests' rows and add to the hourly buckets; return whether a
    request whose first record in the batch is a start had a row already (a replay).

    Plain rows and Core statements, not the ORM: shipping shares a CPU with the gateway, and
    per-object bookkeeping cost more than the requests it records. Rows are read only for the
    requests whose first record here is not a start (or for all of them with ``read_all``): a
    start is a new request unless the log is being re-shipped, and new rows go in without
    ``ON CONFLICT`` (``_insert_events``), so a row that did exist fails the transaction with an
    ``IntegrityError`` instead of being counted again.
    """
    rids = [str(r["id"])[:64] for r in records]
    first: dict[str, str] = {}
    for rid, rec in zip(rids, records, strict=True):
        if rid not in first:
            first[rid] = rec["kind"]
    wanted = sorted(first) if read_all else sorted(rid for rid, kind in first.items() if kind != "start")
    stored: dict[str, dict[str, Any]] = {}
    events: dict[str, dict[str, Any]] = {}
    for i in range(0, len(wanted), ID_CHUNK):
        for row in conn.execute(select(_EVENTS).where(_EVENTS.c.id.in_(wanted[i : i + ID_CHUNK]))):
            stored[row.id] = row._asdict()
            events[row.id] = row._asdict()
    incs: dict[BucketKey, _Increments] = {}
    # A request's bucket, once looked up: its key cannot change after started_at is set.
    buckets: dict[str, _Increments] = {}

    def bucket(ev: dict[str, Any]) -> _Increments:
        inc = buckets.get(ev["id"])
        if inc is None:
            key = _bucket_key(ev)
            inc = incs.get(key)
            if inc is None:
                inc = incs[key] = _Increments()
            buckets[ev["id"]] = inc
        return inc

    def count_request(ev: dict[str, Any], rec: dict[str, Any]) -> None:
        inc = bucket(ev)
        inc.requests += 1
        inc.allowed += ev["outcome"] != "denied"
        inc.denied += ev["outcome"] == "denied"
        inc.scope_violations += _is_scope_violation(rec, ev)

    def count_end(ev: dict[str, Any]) -> None:
        inc = bucket(ev)
        inc.errors += ev["outcome"] == "error"
        inc.prompt_tokens += ev["prompt_tokens"] or 0
        inc.completion_tokens += ev["completion_tokens"] or 0
        inc.latency_ms_sum += ev["latency_ms"] or 0.0
        if ev["flags"]:
            for name in _flag_names(ev["flags"]):
                inc.flagged[name] = inc.flagged.get(name, 0) + 1

    for rid, rec in zip(rids, records, strict=True):
        ev = events.get(rid)
        if ev is None:
            ev = events[rid] = {**_BLANK, "id": rid, "replica": _clip("replica", str(rec.get("replica") or ""))}
        kind = rec["kind"]
        if kind == "flags":
            # Detectors that ran after the response: each (request, detector) counts once. Before
            # the end has shipped, its count_end counts them; after it, they are counted here.
            fresh = _merge_flags(ev, rec)
            if fresh and ev["ended_at"] is not None:
                inc = bucket(ev)
                for name in fresh:
                    inc.flagged[name] = inc.flagged.get(name, 0) + 1
            continue
        if kind == "start":
            if ev["started_at"] is not None:
                continue  # replay
            ev["started_at"] = _time(rec.get("at", 0))
            _note_request(ev, rec)
            if ev["ended_at"] is None:
                ev["outcome"] = "denied" if rec.get("decision") == "deny" else "allowed"
            count_request(ev, rec)
            if ev["ended_at"] is not None:  # the end shipped first (only if the log was reordered)
                count_end(ev)
            continue
        if ev["ended_at"] is not None:
            continue  # replay
        ended_at = ev["ended_at"] = _time(rec.get("at", 0))
        status = ev["status"] = _int(rec["status"]) if rec.get("status") is not None else None
        latency_ms = ev["latency_ms"] = float(rec["latency_ms"]) if rec.get("latency_ms") is not None else None
        started_at = ev["started_at"]
        if started_at is not None and ended_at == started_at and latency_ms:
            # The caller re-sent its start record's "at" with the end: the end is latency later.
            ev["ended_at"] = ended_at = started_at + timedelta(milliseconds=latency_ms)
        ev["prompt_tokens"] = _int(rec.get("prompt_tokens"))
        ev["completion_tokens"] = _int(rec.get("completion_tokens"))
        ev["outcome"] = _outcome(rec, status)
        _merge_flags(ev, rec)  # counted below by count_end, with any that shipped before the end
        if started_at is None:
            # A log holds a request's start before its end, and ships in order: an end
            # without a start is a request refused before forwarding. Count it now.
            ev["started_at"] = ended_at - timedelta(milliseconds=latency_ms or 0.0)
            _note_request(ev, rec)
            count_request(ev, rec)
        else:
            reason = rec.get("reason_code") or rec.get("reason")
            if reason:
                ev["reason_code"] = _clip("reason_code", str(reason))
        count_end(ev)
    fresh_rows = [ev for rid, ev in events.items() if rid not in stored]
    if fresh_rows:
        _insert_events(conn, fresh_rows)
    changed: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # rows by the columns that changed
    for rid, old in stored.items():
        ev = events[rid]
        columns = tuple(c for c in _COLUMNS if ev[c] != old[c])
        if columns:
            changed.setdefault(columns, []).append({"b_id": rid, **{c: ev[c] for c in columns}})
    for rows in changed.values():
        conn.execute(update(_EVENTS).where(_EVENTS.c.id == bindparam("b_id")), rows)
    _add_to_buckets(conn, incs)
    return any(first[rid] == "start" for rid in stored)

def _add_to_buckets(conn: Connection, incs: dict[BucketKey, _Increments]) -> None:
    """Add ``incs`` to their buckets: one upsert adding to the counters, row by row in key order
    (the rows are locked in one order by every shipper: no deadlocks), then the ``flagged`` maps."""
    if not incs:
        return
    keys = sorted(incs)
    rows = []
    for key in keys:
        inc = incs[key]
        rows.append({
            "bucket_start": key[0], "model": key[1], "version": key[2], "stage": key[3], "deployer_id": key[4],
            "use_case": key[5], "requests": inc.requests, "allowed": inc.allowed, "denied": inc.denied,
            "errors": inc.errors, "scope_violations": inc.scope_violations, "prompt_tokens": inc.prompt_tokens,
            "completion_tokens": inc.completion_tokens, "latency_ms_sum": inc.latency_ms_sum, "flagged": {},
        })
    conn.execute(_bucket_upsert(conn.dialect.name), rows)
    flagged = [key for key in keys if incs[key].flagged]
    if not flagged:
        return
    have: dict[BucketKey, Any] = {}
    for i in range(0, len(flagged), ID_CHUNK):  # rows this transaction holds now
        for row in conn.execute(_SELECT_FLAGGED, {"keys": flagged[i : i + ID_CHUNK]}):
            have[tuple(row[:6])] = row.flagged
    updates = []
    for key in flagged:
        merged = dict(have[key] or {})
        for name, n in incs[key].flagged.items():
            merged[name] = int(merged.get(name, 0)) + n
        updates.append({**{f"b_{name}": value for name, value in zip(_BUCKET_KEY, key, strict=True)}, "flagged": merged})
    conn.execute(_UPDATE_FLAGGED, updates)


def _insert_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Add ``rows`` (dicts of every column) to ``request_events``, without ``ON CONFLICT``: an id
    that is taken raises ``IntegrityError`` (``RequestLogShipper._store`` then applies the batch again).

    The values go through the columns' own bind processors, as a Core INSERT's would, then straight
    to the driver: ``COPY`` with psycopg, one ``executemany`` with a qmark driver (SQLite); a Core
    executemany spent more on its per-row parameter handling than shipping did on the rest of a batch.
    """
    dialect = conn.dialect
    copy_in = dialect.name == "postgresql" and dialect.driver == "psycopg"
    if not copy_in and dialect.paramstyle != "qmark":
        conn.execute(insert(_EVENTS), rows)
        return
    columns_values = list(zip(*map(_ROW_VALUES, rows), strict=True))  # column by column: C loops
    for i, name in enumerate(_COLUMNS):
        kind = _EVENTS.c[name].type
        if dialect.name == "sqlite" and isinstance(kind, UTCDateTime):  # the same text, without the layers
            text = UTCDateTime.sqlite_text
            columns_values[i] = tuple([None if v is None else text(v) for v in columns_values[i]])
            continue
        proc = kind.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None:
            none = proc(None)  # most flags and some times are null: process that once
            columns_values[i] = tuple([none if v is None else proc(v) for v in columns_values[i]])
    values = list(zip(*columns_values, strict=True))
    quote = dialect.identifier_preparer
    table = quote.format_table(_EVENTS)
    columns = ", ".join(quote.quote(name) for name in _COLUMNS)
    if copy_in:
        sql = f"COPY {table} ({columns}) FROM STDIN"
        driver: Any = conn.connection.driver_connection
        try:
            with driver.cursor() as cursor, cursor.copy(sql) as copy:
                for row_values in values:
                    copy.write_row(row_values)
        except dialect.loaded_dbapi.IntegrityError as exc:
            raise IntegrityError(sql, None, exc) from exc
    else:
        placeholders = ", ".join("?" * len(_COLUMNS))
        conn.exec_driver_sql(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", values)


def _bucket_upsert(dialect: str) -> Insert:
    """``INSERT INTO request_buckets … ON CONFLICT (its key) DO UPDATE`` adding to every counter."""
    stmt = _UPSERTS.get(dialect)
    if stmt is None:
        insert = pg_insert(_BUCKETS) if dialect == "postgresql" else sqlite_insert(_BUCKETS)
        stmt = _UPSERTS[dialect] = insert.on_conflict_do_update(
            index_elements=list(_BUCKET_KEY),
            set_={name: _BUCKETS.c[name] + insert.excluded[name] for name in _COUNTERS},
        )
    return stmt


_UPSERTS: dict[str, Insert] = {}
_BUCKET_COLUMNS = [_BUCKETS.c[name] for name in _BUCKET_KEY]
_SELECT_FLAGGED = select(*_BUCKET_COLUMNS, _BUCKETS.c.flagged).where(
    tuple_(*_BUCKET_COLUMNS).in_(bindparam("keys", expanding=True)))
_UPDATE_FLAGGED = update(_BUCKETS).where(*[_BUCKETS.c[name] == bindparam(f"b_{name}") for name in _BUCKET_KEY])
