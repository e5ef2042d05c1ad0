"""Ship a replica's request log into the store: events merged by id, hourly aggregates.

``RequestLogShipper(directory, db)`` reads the segments written by ``FileRequestLog``
(record schema in ``gateway.requestlog``) from offsets persisted in
``<directory>/shipped-offsets.json``. Each batch is applied in one transaction and the
offsets are written (atomically: temp file, fsync, rename) only after it commits (what a batch
becomes in the store is ``requestmerge.apply_records``), so a crash
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

Bucket rows are upserted (``INSERT … ON CONFLICT DO UPDATE`` adding to the counters) in key
order, which locks them in one order on PostgreSQL, so shippers of several replicas may share one
store. One shipper per directory (an ``flock`` enforces it).
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from releasegate.gateway.requestmerge import apply_records
from releasegate.store.db import Database

__all__ = ["RequestLogShipper", "list_segments", "written_part"]

log = logging.getLogger(__name__)

SEGMENT_RE = re.compile(r"^(?P<replica>[A-Za-z0-9][A-Za-z0-9_-]{0,63})\.(?P<index>\d{9})\.jsonl$")
OFFSETS_FILE = "shipped-offsets.json"
LOCK_FILE = "shipper.lock"
READ_CHUNK = 1024 * 1024  # bytes read per batch (doubled for a longer line): 1,000 records are ~0.5 MB


def fsync_directory(directory: Path) -> None:
    """Make a file's creation, rename or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def written_part(data: bytes) -> bytes:
    """The records of a segment's bytes: up to its first NUL (a writer preallocates segments with
    zeros; JSON escapes NUL, so no record holds one)."""
    end = data.find(b"\0")
    return data if end < 0 else data[:end]


def list_segments(directory: Path) -> list[tuple[str, int, str]]:
    """``(replica, index, file name)`` of every segment in ``directory``, oldest first per replica."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            m = SEGMENT_RE.match(name)
            if m:
                found.append((m["replica"], int(m["index"]), name))
    return sorted(found)


class RequestLogShipper:
    """Moves durable request records from one log directory into the store (module docstring)."""

    def __init__(self, directory: Path, db: Database, *, batch: int = 1000) -> None:
        # 1,000 records (with a 1 MiB read) keep a batch's peak near 3 MiB: glibc keeps what a batch
        # freed resident in the shipping thread's arena, so 5,000 (15 MiB) showed as RSS that climbed
        # in steps for minutes under load; shipping stays 10x faster than a busy replica logs.
        self.directory = Path(directory)
        self.db = db
        self.batch = batch
        self.skipped_lines = 0  # unparsable complete lines (should stay 0)
        self.shipped_records = 0
        self._lock_fd: int | None = None
        self._conn: Connection | None = None  # SQLite: kept open between batches (``_begin``)
        self._read_all = True  # read every request's row before applying a batch (``_store``)

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
            self.shipped_records += shipped
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
        """Release the directory lock and the shipper's connection."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
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
                zero = data.find(b"\0")
                if zero >= 0:  # the preallocated, unwritten part: the segment ends here for now
                    data, size = data[:zero], offset + zero
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
            self._store(records)
        if records or new_offsets != offsets:
            self._save_offsets(new_offsets)
        if done:
            for name in done:
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / name).unlink()
                new_offsets.pop(name, None)
            self._save_offsets(new_offsets)
        return len(records), more

    def _store(self, records: list[dict[str, Any]]) -> None:
        """Apply ``records`` in one transaction; again, reading every request's row, if a request
        taken for new had one (``_apply``)."""
        read_all = self._read_all
        self._read_all = True  # until a batch has gone through
        try:
            with self._begin() as conn:
                replayed = apply_records(conn, records, read_all=read_all)
        except IntegrityError:
            if read_all:
                raise
            # A replay (offsets lost in a crash), or another shipper wrote a row with that id first.
            log.info("request log shipper: a batch of %s had requests in the store already; applying it again",
                     self.directory)
            with self._begin() as conn:
                replayed = apply_records(conn, records, read_all=True)
        self._read_all = replayed  # a replay goes on for a while: keep reading until it is over

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A transaction for one batch. On SQLite on the shipper's own connection, kept open: the
        store's SQLite engine opens a connection per transaction (its PRAGMAs, and a WAL checkpoint
        when the last one closes, cost ~2 ms a batch). A connection that failed is not reused."""
        if not self.db.is_sqlite:
            with self.db.transaction() as session:
                yield session.connection()
            return
        if self._conn is None:
            self._conn = self.db.engine.connect()
        try:
            with self.db.begin_on(self._conn) as conn:
                yield conn
        except Exception:
            if self._conn.invalidated or self._conn.closed:
                self._conn = None
            raise
