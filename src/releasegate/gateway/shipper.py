"""Ship a replica's request log into the store: events merged by id, hourly aggregates.

``RequestLogShipper(directory, db)`` reads the segments written by ``FileRequestLog``
(record schema in ``gateway.requestlog``) from offsets persisted in
``<directory>/shipped-offsets.json``. Each batch is applied in one transaction and the
offsets are written (atomically: temp file, fsync, rename) only after it commits, so a crash
re-ships at most one batch; re-shipping is harmless because

* a ``start`` is applied only if its request has no start yet, and an ``end`` only if it has
  no end yet (``request_events`` is keyed by request id: no duplicates);
* the hourly ``request_buckets`` counters change only together with those first
  applications, in the same transaction: a request is counted once, in the hour it started
  (``requests``/``allowed``/``denied``/``scope_violations`` with its start; ``errors``,
  tokens, latency and flags with its end, or with the start if the end shipped first);
* a ``flags`` record (detectors that ran after the response) adds to the request's ``flags``
  only the detectors it has no word from yet, and counts just those in ``flagged``: each
  (request, detector) is counted once, however often the record is re-shipped.

Bucket rows are locked in key order (``SELECT … FOR UPDATE`` on PostgreSQL), so shippers of
several replicas may share one store. One shipper per directory (an ``flock`` enforces it).
Only complete lines ship. A segment is *sealed* once its replica has started a newer one;
sealed segments that are fully shipped are deleted (a torn last line of a sealed segment,
left by a crash mid-write, belongs to a request that was never forwarded and is skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from releasegate.store.db import Database
from releasegate.store.requests import RequestBucket, RequestEvent

_COLUMNS = tuple(c.name for c in RequestEvent.__table__.columns)

__all__ = ["RequestLogShipper", "list_segments"]

log = logging.getLogger(__name__)

SEGMENT_RE = re.compile(r"^(?P<replica>[A-Za-z0-9][A-Za-z0-9_-]{0,63})\.(?P<index>\d{9})\.jsonl$")
OFFSETS_FILE = "shipped-offsets.json"
LOCK_FILE = "shipper.lock"
READ_CHUNK = 4 * 1024 * 1024
ID_CHUNK = 500  # ids per IN (...) query
STRING_LIMITS = {"deployer_id": 40, "key_id": 40, "model": 160, "version": 64, "stage": 64, "use_case": 64, "endpoint": 200, "reason_code": 64, "replica": 64}


def fsync_directory(directory: Path) -> None:
    """Make a file's creation, rename or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_segments(directory: Path) -> list[tuple[str, int, str]]:
    """``(replica, index, file name)`` of every segment in ``directory``, oldest first per replica."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            m = SEGMENT_RE.match(name)
            if m:
                found.append((m["replica"], int(m["index"]), name))
    return sorted(found)


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


def _merge_flags(ev: Any, rec: dict[str, Any]) -> list[str]:
    """Add the record's flags and detector errors to ``ev.flags`` (first word per detector wins);
    the names of the detectors whose flags are new."""
    have: dict[str, Any] = {}
    if isinstance(ev.flags, dict):
        have = dict(ev.flags)
    elif isinstance(ev.flags, list):
        have = {str(f): {} for f in ev.flags}
    new: dict[str, Any] = {}
    flags = rec.get("flags")
    if isinstance(flags, dict):
        new.update({str(k): v for k, v in flags.items()})
    elif isinstance(flags, list):
        new.update({str(f): {} for f in flags})
    errors = rec.get("detector_errors")
    if isinstance(errors, dict):
        for k, message in errors.items():
            new.setdefault(str(k), {"error": str(message)[:300]})
    fresh = {k: v for k, v in new.items() if k not in have}
    if fresh:
        ev.flags = {**have, **fresh}  # a new object: the JSON column sees the change
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


def _bucket_key(ev: Any) -> BucketKey:
    assert ev.started_at is not None
    hour = ev.started_at.replace(minute=0, second=0, microsecond=0)
    return (hour, ev.model or "", ev.version or "", ev.stage or "", ev.deployer_id or "", ev.use_case or "")


def _is_scope_violation(rec: dict[str, Any], ev: Any) -> bool:
    if ev.outcome != "denied":
        return False
    return bool(rec.get("scope_violation")) or (ev.reason_code or "").startswith("scope_")


def _outcome(rec: dict[str, Any], status: int | None) -> str:
    """allowed | denied | error, from an end record (the gateway's own words are mapped)."""
    said = str(rec.get("outcome") or "")
    if said in ("denied", "error"):
        return said
    if said in ("upstream_failed", "failed") or (status is not None and status >= 500):
        return "error"
    return "allowed"


def _note_request(ev: Any, rec: dict[str, Any]) -> None:
    """Who asked for what: from the first record of the request that ships."""
    model = rec.get("model_name") or rec.get("model")
    ev.model = _clip("model", str(model)) if model is not None else None
    for name in ("deployer_id", "key_id", "version", "stage", "use_case", "endpoint"):
        value = rec.get(name)
        setattr(ev, name, _clip(name, str(value)) if value is not None else None)
    ev.stream = bool(rec["stream"]) if rec.get("stream") is not None else None
    reason = rec.get("reason_code") or rec.get("reason")
    ev.reason_code = _clip("reason_code", str(reason)) if reason else None


class RequestLogShipper:
    """Moves durable request records from one log directory into the store (module docstring)."""

    def __init__(self, directory: Path, db: Database, *, batch: int = 5000) -> None:
        self.directory = Path(directory)
        self.db = db
        self.batch = batch
        self.skipped_lines = 0  # unparsable complete lines (should stay 0)
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ public

    async def ship_once(self) -> int:
        """Ship everything readable now, ``batch`` records per transaction; return the count."""
        return await asyncio.to_thread(self.ship_once_sync)

    def ship_once_sync(self) -> int:
        """Blocking form of ``ship_once`` (for the CLI and threads)."""
        self._lock()
        total = 0
        while True:
            shipped, full = self._ship_batch()
            total += shipped
            if not full:
                return total

    async def run(self, interval: float = 1.0) -> None:
        """Ship every ``interval`` seconds until cancelled; failures are logged and retried."""
        while True:
            try:
                await self.ship_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("request log shipper: shipping %s failed; retrying in %ss", self.directory, interval)
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Release the directory lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ files

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise RuntimeError(f"another shipper is already shipping {self.directory}") from exc
        self._lock_fd = fd

    def _load_offsets(self) -> dict[str, int]:
        try:
            data = orjson.loads((self.directory / OFFSETS_FILE).read_bytes())
        except FileNotFoundError:
            return {}
        return {str(k): int(v) for k, v in data.get("segments", {}).items()}

    def _save_offsets(self, offsets: dict[str, int]) -> None:
        path = self.directory / OFFSETS_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps({"segments": offsets}, option=orjson.OPT_SORT_KEYS))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_directory(self.directory)

    def _read(self, path: Path, offset: int, budget: int) -> tuple[list[bytes], int, int, bool]:
        """Up to ``budget`` complete lines from ``offset``.

        Returns (lines, new offset, bytes left in the file after it, whether every complete
        line up to the end of the file was taken).
        """
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(offset)
            chunk = READ_CHUNK
            while True:
                data = fh.read(chunk)
                end = data.rfind(b"\n")
                if end >= 0 or offset + len(data) >= size:
                    break
                fh.seek(offset)  # one line longer than the chunk: read more
                chunk *= 2
        lines: list[bytes] = []
        pos = 0
        while len(lines) < budget:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            lines.append(data[pos:nl])
            pos = nl + 1
        drained = offset + len(data) >= size and data.find(b"\n", pos) < 0
        return lines, offset + pos, size - (offset + pos), drained

    # ------------------------------------------------------------------ one batch

    def _ship_batch(self) -> tuple[int, bool]:
        segments = list_segments(self.directory)
        offsets = self._load_offsets()
        newest = {replica: index for replica, index, _ in segments}
        records: list[dict[str, Any]] = []
        present = {name for _, _, name in segments}
        new_offsets = {name: off for name, off in offsets.items() if name in present}
        done: list[str] = []
        more = False
        for replica, index, name in segments:
            budget = self.batch - len(records)
            sealed = index < newest[replica]
            start = offsets.get(name, 0)
            if budget <= 0:
                more = True
                break
            lines, end, left, drained = self._read(self.directory / name, start, budget)
            more = more or not drained
            for line in lines:
                try:
                    rec = orjson.loads(line)
                    if not isinstance(rec, dict) or not rec.get("id") or rec.get("kind") not in ("start", "end", "flags"):
                        raise ValueError("not a request record")
                    records.append(rec)
                except ValueError as exc:
                    self.skipped_lines += 1
                    log.warning("request log shipper: skipping a bad line in %s: %s", name, exc)
            if sealed and left and drained:
                log.warning("request log shipper: %s ends in a torn line (%d bytes), left by a crash; skipped", name, left)
                end, left = end + left, 0
            new_offsets[name] = end
            if sealed and not left:
                done.append(name)
        if records:
            with self.db.transaction() as session:
                self._apply(session, records)
        if records or new_offsets != offsets:
            self._save_offsets(new_offsets)
        if done:
            for name in done:
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / name).unlink()
                new_offsets.pop(name, None)
            self._save_offsets(new_offsets)
        return len(records), more

    def _apply(self, session: Session, records: list[dict[str, Any]]) -> None:
        # Plain rows and bulk statements, not the ORM unit of work: shipping shares a CPU with the
        # gateway, and per-object bookkeeping cost more than the requests it records.
        ids = sorted({str(r["id"])[:64] for r in records})
        table = RequestEvent.__table__
        events: dict[str, SimpleNamespace] = {}
        for i in range(0, len(ids), ID_CHUNK):
            for row in session.execute(select(table).where(table.c.id.in_(ids[i : i + ID_CHUNK]))):
                events[row.id] = SimpleNamespace(**row._asdict())
        existing = {rid: dict(vars(ev)) for rid, ev in events.items()}
        incs: dict[BucketKey, _Increments] = {}

        def count_request(ev: Any, rec: dict[str, Any]) -> None:
            inc = incs.setdefault(_bucket_key(ev), _Increments())
            inc.requests += 1
            inc.allowed += ev.outcome != "denied"
            inc.denied += ev.outcome == "denied"
            inc.scope_violations += _is_scope_violation(rec, ev)

        def count_end(ev: Any) -> None:
            inc = incs.setdefault(_bucket_key(ev), _Increments())
            inc.errors += ev.outcome == "error"
            inc.prompt_tokens += ev.prompt_tokens or 0
            inc.completion_tokens += ev.completion_tokens or 0
            inc.latency_ms_sum += ev.latency_ms or 0.0
            for name in _flag_names(ev.flags):
                inc.flagged[name] = inc.flagged.get(name, 0) + 1

        for rec in records:
            rid = str(rec["id"])[:64]
            if rid not in events:
                events[rid] = SimpleNamespace(**{**dict.fromkeys(_COLUMNS), "id": rid,
                                                 "replica": _clip("replica", str(rec.get("replica") or ""))})
            ev = events[rid]
            if rec["kind"] == "flags":
                # Detectors that ran after the response: each (request, detector) counts once. Before
                # the end has shipped, its count_end counts them; after it, they are counted here.
                fresh = _merge_flags(ev, rec)
                if fresh and ev.ended_at is not None:
                    inc = incs.setdefault(_bucket_key(ev), _Increments())
                    for name in fresh:
                        inc.flagged[name] = inc.flagged.get(name, 0) + 1
                continue
            if rec["kind"] == "start":
                if ev.started_at is not None:
                    continue  # replay
                ev.started_at = _time(rec.get("at", 0))
                _note_request(ev, rec)
                if ev.ended_at is None:
                    ev.outcome = "denied" if rec.get("decision") == "deny" else "allowed"
                count_request(ev, rec)
                if ev.ended_at is not None:  # the end shipped first (only if the log was reordered)
                    count_end(ev)
                continue
            if ev.ended_at is not None:
                continue  # replay
            ev.ended_at = _time(rec.get("at", 0))
            ev.status = _int(rec["status"]) if rec.get("status") is not None else None
            ev.latency_ms = float(rec["latency_ms"]) if rec.get("latency_ms") is not None else None
            if ev.started_at is not None and ev.ended_at == ev.started_at and ev.latency_ms:
                # The caller re-sent its start record's "at" with the end: the end is latency later.
                ev.ended_at = ev.started_at + timedelta(milliseconds=ev.latency_ms)
            ev.prompt_tokens = _int(rec.get("prompt_tokens"))
            ev.completion_tokens = _int(rec.get("completion_tokens"))
            ev.outcome = _outcome(rec, ev.status)
            _merge_flags(ev, rec)  # counted below by count_end, with any that shipped before the end
            if ev.started_at is None:
                # A log holds a request's start before its end, and ships in order: an end
                # without a start is a request refused before forwarding. Count it now.
                ev.started_at = ev.ended_at - timedelta(milliseconds=ev.latency_ms or 0.0)
                _note_request(ev, rec)
                count_request(ev, rec)
            else:
                reason = rec.get("reason_code") or rec.get("reason")
                if reason:
                    ev.reason_code = _clip("reason_code", str(reason))
            count_end(ev)
        fresh_rows = [vars(ev) for rid, ev in events.items() if rid not in existing]
        changed = [vars(ev) for rid, ev in events.items() if rid in existing and vars(ev) != existing[rid]]
        if fresh_rows:
            session.execute(insert(RequestEvent), fresh_rows)
        if changed:
            session.execute(update(RequestEvent), changed)  # bulk UPDATE by primary key
        self._add_to_buckets(session, incs)

    def _add_to_buckets(self, session: Session, incs: dict[BucketKey, _Increments]) -> None:
        dialect = session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        for key in sorted(incs):  # one lock order for every shipper: no deadlocks
            inc = incs[key]
            pk = dict(zip(("bucket_start", "model", "version", "stage", "deployer_id", "use_case"), key, strict=True))
            session.execute(insert(RequestBucket).values(
                **pk, requests=0, allowed=0, denied=0, errors=0, scope_violations=0,
                prompt_tokens=0, completion_tokens=0, latency_ms_sum=0.0, flagged={},
            ).on_conflict_do_nothing())
            row = session.get(RequestBucket, pk, with_for_update=True, populate_existing=True)
            assert row is not None
            row.requests += inc.requests
            row.allowed += inc.allowed
            row.denied += inc.denied
            row.errors += inc.errors
            row.scope_violations += inc.scope_violations
            row.prompt_tokens += inc.prompt_tokens
            row.completion_tokens += inc.completion_tokens
            row.latency_ms_sum += inc.latency_ms_sum
            if inc.flagged:
                merged = dict(row.flagged or {})
                for name, n in inc.flagged.items():
                    merged[name] = int(merged.get(name, 0)) + n
                row.flagged = merged
