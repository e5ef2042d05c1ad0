"""The durable request log (group commit, fail closed) and its shipper (idempotent, exact aggregates)."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import event, func, select

from releasegate.gateway.requestlog import (
    FileRequestLog,
    RequestLogError,
    RequestLogShipper,
    open_segment,
    written_part,
)
from releasegate.gateway.shipper import OFFSETS_FILE
from releasegate.store.db import Database
from releasegate.store.requests import RequestBucket, RequestEvent

HOUR = datetime(2030, 5, 17, 12, tzinfo=UTC).timestamp()


def lines(directory: Path) -> list[dict[str, Any]]:
    """Every complete record in the log directory (a torn last line is not a record)."""
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        data = written_part(path.read_bytes())
        out += [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]
    return out


def start(rid: str, at: float = HOUR + 60, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "at": at, "deployer_id": "dep_blue", "key_id": "key_1", "model": "atlas", "version": "v1",
            "stage": "pilot", "use_case": "support", "endpoint": "chat.completions", "stream": False,
            "decision": "allow", **extra}


def end(rid: str, at: float = HOUR + 61, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "at": at, "status": 200, "latency_ms": 12.5, "prompt_tokens": 10, "completion_tokens": 5,
            "outcome": "allowed", **extra}


async def test_record_is_on_disk_before_record_start_returns(tmp_path: Path) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1")
    try:
        await rlog.record_start(start("req_a"))
        on_disk = lines(tmp_path)
        assert [(r["id"], r["kind"], r["replica"], r["seq"]) for r in on_disk] == [("req_a", "start", "r1", 1)]
        assert rlog.fsyncs == 1
        rlog.record_end(end("req_a"))  # returns at once, durable with the next batch
        await rlog.record_start(start("req_b"))
        assert [(r["id"], r["kind"]) for r in lines(tmp_path)] == [("req_a", "start"), ("req_a", "end"), ("req_b", "start")]
    finally:
        await rlog.close()


async def test_unsynced_mode_writes_to_the_kernel_before_returning(tmp_path: Path) -> None:
    """sync=False still puts the record in the file (survives a killed gateway) but skips fdatasync."""
    rlog = FileRequestLog(tmp_path, replica="r1", sync=False)
    try:
        await rlog.record_start(start("req_a"))
        assert [r["id"] for r in lines(tmp_path)] == ["req_a"]
        assert rlog.fsyncs == 0
    finally:
        await rlog.close()


async def test_sequential_requests_do_not_wait_for_a_batch_to_fill(tmp_path: Path) -> None:
    """An end record riding with the next start must not trigger the group-commit wait."""
    rlog = FileRequestLog(tmp_path, replica="r1", max_delay=0.05, sync=False)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(20):
            await rlog.record_start(start(f"req_{i}"))
            rlog.record_end(end(f"req_{i}"))
        assert loop.time() - t0 < 20 * 0.05 / 2  # far less than one max_delay per request
    finally:
        await rlog.close()


async def test_a_lone_request_is_synced_on_the_loop_once_with_the_previous_end(tmp_path: Path) -> None:
    """Idle fast path: no thread hand-off, and the previous request's end rides with the next start."""
    rlog = FileRequestLog(tmp_path, replica="r1", end_delay=5.0)
    try:
        for i in range(3):
            await rlog.record_start(start(f"req_{i}"))
            assert (f"req_{i}", "start") in [(r["id"], r["kind"]) for r in lines(tmp_path)]  # durable on return
            rlog.record_end(end(f"req_{i}"))
        assert rlog.inline_writes == 3
        assert rlog.fsyncs == 3  # one sync per request, not one for the start and one for the end
        assert [(r["id"], r["kind"]) for r in lines(tmp_path)] == [
            ("req_0", "start"), ("req_0", "end"), ("req_1", "start"), ("req_1", "end"), ("req_2", "start")]
    finally:
        await rlog.close()
    assert [(r["id"], r["kind"]) for r in lines(tmp_path)][-1] == ("req_2", "end")  # close flushes the last end


async def test_an_end_alone_is_written_within_end_delay(tmp_path: Path) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1", end_delay=0.02)
    try:
        await rlog.record_start(start("req_a"))
        rlog.record_end(end("req_a"))
        rlog.record_end(end("req_refused"))  # a refusal's end record: no start
        await asyncio.sleep(0.01)
        assert [r["kind"] for r in lines(tmp_path)] == ["start"]  # still waiting for a start to ride with
        await asyncio.sleep(0.2)
        assert [(r["id"], r["kind"]) for r in lines(tmp_path)] == [
            ("req_a", "start"), ("req_a", "end"), ("req_refused", "end")]
    finally:
        await rlog.close()


async def test_requests_in_flight_use_group_commit_not_the_loop(tmp_path: Path) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1")
    try:
        await rlog.record_start(start("req_open"))  # in flight: no end yet
        await asyncio.gather(*[rlog.record_start(start(f"req_{i}")) for i in range(50)])
        assert rlog.inline_writes == 1  # only the first, when nothing else was in flight
        assert rlog.fsyncs < 20
    finally:
        await rlog.close()


async def test_a_failing_disk_fails_the_fast_path_closed_too(tmp_path: Path) -> None:
    disk_full = True

    def opener(path: Path) -> int:
        return os.open("/dev/full", os.O_WRONLY) if disk_full else open_segment(path)

    rlog = FileRequestLog(tmp_path, replica="r1", opener=opener)
    try:
        rlog.record_end(end("req_old"))
        with pytest.raises(RequestLogError):
            await rlog.record_start(start("req_lost"))
        disk_full = False
        await rlog.record_start(start("req_ok"))
        assert [(r["id"], r["kind"]) for r in lines(tmp_path)] == [("req_old", "end"), ("req_ok", "start")]
    finally:
        await rlog.close()


async def test_group_commit_batches_concurrent_starts(tmp_path: Path) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1")
    n = 2000
    try:
        await asyncio.gather(*[rlog.record_start(start(f"req_{i}")) for i in range(n)])
        assert rlog.records_written == n
        assert rlog.fsyncs <= n // 20, rlog.fsyncs  # group commit, not one fsync per record
        on_disk = lines(tmp_path)
        assert sorted(r["id"] for r in on_disk) == sorted(f"req_{i}" for i in range(n))
        assert sorted(r["seq"] for r in on_disk) == list(range(1, n + 1))
    finally:
        await rlog.close()


async def test_every_caller_waits_for_its_own_batch(tmp_path: Path) -> None:
    """A caller released early would forward a request with no durable record."""
    seen_at_release: dict[str, bool] = {}
    rlog = FileRequestLog(tmp_path, replica="r1", max_batch=7)

    async def one(i: int) -> None:
        await rlog.record_start(start(f"req_{i}"))
        seen_at_release[f"req_{i}"] = f"req_{i}" in {r["id"] for r in lines(tmp_path)}

    try:
        await asyncio.gather(*[one(i) for i in range(50)])
        assert len(seen_at_release) == 50 and all(seen_at_release.values())
        assert rlog.batches >= 50 // 7
    finally:
        await rlog.close()


async def test_write_failure_fails_closed_and_recovers(tmp_path: Path) -> None:
    """A full disk (/dev/full answers ENOSPC) makes record_start raise; a good disk again, and it works."""
    disk_full = True

    def opener(path: Path) -> int:
        if disk_full:
            return os.open("/dev/full", os.O_WRONLY)
        return open_segment(path)

    rlog = FileRequestLog(tmp_path, replica="r1", opener=opener)
    try:
        rlog.record_end(end("req_old"))
        results = await asyncio.gather(*[rlog.record_start(start(f"req_{i}")) for i in range(5)], return_exceptions=True)
        assert all(isinstance(r, RequestLogError) for r in results), results
        assert rlog.write_failures >= 1
        disk_full = False
        await rlog.record_start(start("req_ok"))
        ids = [(r["id"], r["kind"]) for r in lines(tmp_path)]
        assert ("req_ok", "start") in ids and ("req_old", "end") in ids  # the end record was kept and retried
        assert not any(rid.startswith("req_") and rid[4:].isdigit() for rid, _ in ids)
    finally:
        await rlog.close()


async def test_segments_rotate_and_a_restart_never_appends_to_an_old_one(tmp_path: Path) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1", segment_bytes=600)
    for i in range(10):
        await rlog.record_start(start(f"req_{i}"))
    await rlog.close()
    first_run = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert len(first_run) >= 3 and first_run[0] == "r1.000000000.jsonl"
    with (tmp_path / first_run[-1]).open("ab") as fh:
        fh.write(b'{"id": "torn')  # a crash mid-write
    again = FileRequestLog(tmp_path, replica="r1")
    await again.record_start(start("req_after"))
    await again.close()
    newest = sorted(p.name for p in tmp_path.glob("*.jsonl"))[-1]
    assert newest not in first_run
    assert [r["id"] for r in lines(tmp_path) if r["id"] == "req_after"] == ["req_after"]
    with pytest.raises(RequestLogError):
        await again.record_start(start("req_closed"))
    with pytest.raises(ValueError, match="replica name"):
        FileRequestLog(tmp_path, replica="bad/name")


async def test_segments_are_preallocated_with_zeros_and_trimmed_when_sealed(tmp_path: Path) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1", preallocate_step=4096)
    try:
        await rlog.record_start(start("req_0"))
        (segment,) = tmp_path.glob("*.jsonl")
        data = segment.read_bytes()
        # Zero-filled one step ahead, so that each record overwrites zeros (no size change to sync).
        assert len(data) == 4096 and rlog.preallocations == 1
        assert data.rstrip(b"\0") == written_part(data) and data.endswith(b"\0")
        assert [r["id"] for r in lines(tmp_path)] == ["req_0"]
        while rlog._segment_size < 4096:  # past the first step: zeroed one more step ahead
            await rlog.record_start(start(f"req_{rlog.records_written}"))
        assert segment.stat().st_size == 8192 and rlog.preallocations == 2
        written = rlog.records_written
        assert len(lines(tmp_path)) == written
    finally:
        await rlog.close()
    data = segment.read_bytes()
    assert b"\0" not in data and data.endswith(b"\n")  # sealed: only its records
    assert len(data.splitlines()) == written


async def test_page_cache_mode_appends_without_preallocating(tmp_path: Path) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1", sync=False)
    try:
        await rlog.record_start(start("req_0"))
        (segment,) = tmp_path.glob("*.jsonl")
        assert b"\0" not in segment.read_bytes() and rlog.preallocations == 0 and rlog.fsyncs == 0
    finally:
        await rlog.close()


# ---------------------------------------------------------------------------------- shipper


def buckets(db: Database) -> list[dict[str, Any]]:
    with db.read() as s:
        rows = s.scalars(select(RequestBucket).order_by(RequestBucket.bucket_start, RequestBucket.deployer_id)).all()
        return [{c: getattr(r, c) for c in ("bucket_start", "deployer_id", "requests", "allowed", "denied", "errors",
                                            "scope_violations", "prompt_tokens", "completion_tokens", "latency_ms_sum",
                                            "flagged")} for r in rows]


def event_count(db: Database) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(RequestEvent)) or 0)


async def write_traffic(directory: Path) -> None:
    """Ten allowed requests (two errors, three flagged), three refusals (two out of scope), one unfinished:
    25 records of 14 requests."""
    rlog = FileRequestLog(directory, replica="r1")
    for i in range(10):
        await rlog.record_start(start(f"req_{i}"))
        extra: dict[str, Any] = {"outcome": "error", "status": 502} if i < 2 else {}
        if i >= 7:
            extra["flags"] = ["pii"] if i % 2 else {"jailbreak": 0.9, "pii": 0.5}
        rlog.record_end(end(f"req_{i}", prompt_tokens=10 + i, completion_tokens=i, **extra))
    await rlog.record_start(start("req_deny_1", decision="deny", reason_code="scope_violation"))
    rlog.record_end(end("req_deny_1", status=403, outcome="denied", prompt_tokens=0, completion_tokens=0))
    # The gateway's refusal before forwarding: an end record only, in its own words.
    rlog.record_end({"id": "req_deny_2", "at": HOUR + 100, "deployer_id": "dep_blue", "model_name": "atlas",
                     "version": "v1", "stage": "pilot", "use_case": "support", "status": 403,
                     "reason": "scope_violation", "outcome": "denied", "latency_ms": 1.0})
    rlog.record_end({"id": "req_deny_3", "at": HOUR + 3700, "deployer_id": "dep_green", "model_name": "atlas",
                     "version": "v1", "stage": "pilot", "use_case": "support", "status": 429,
                     "reason": "rate_limited", "outcome": "denied", "latency_ms": 1.0})
    await rlog.record_start(start("req_open"))  # still in flight
    await rlog.close()


EXPECTED = [
    {"bucket_start": datetime.fromtimestamp(HOUR, UTC), "deployer_id": "dep_blue", "requests": 13, "allowed": 11,
     "denied": 2, "errors": 2, "scope_violations": 2, "prompt_tokens": sum(10 + i for i in range(10)),
     "completion_tokens": sum(range(10)), "latency_ms_sum": 12.5 * 11 + 1.0, "flagged": {"pii": 3, "jailbreak": 1}},
    {"bucket_start": datetime.fromtimestamp(HOUR + 3600, UTC), "deployer_id": "dep_green", "requests": 1,
     "allowed": 0, "denied": 1, "errors": 0, "scope_violations": 0, "prompt_tokens": 0, "completion_tokens": 0,
     "latency_ms_sum": 1.0, "flagged": {}},
]


async def test_shipper_loads_events_and_exact_aggregates(tmp_path: Path, db: Database) -> None:
    await write_traffic(tmp_path)
    shipper = RequestLogShipper(tmp_path, db)
    try:
        assert await shipper.ship_once() == 25
        assert await shipper.ship_once() == 0
        assert buckets(db) == EXPECTED
        assert event_count(db) == 14
        with db.read() as s:
            err = s.get(RequestEvent, "req_0")
            assert err is not None and err.outcome == "error" and err.status == 502 and err.replica == "r1"
            assert err.started_at == datetime.fromtimestamp(HOUR + 60, UTC)
            assert err.ended_at == datetime.fromtimestamp(HOUR + 61, UTC)
            open_ = s.get(RequestEvent, "req_open")
            assert open_ is not None and open_.ended_at is None and open_.outcome == "allowed"
            refused = s.get(RequestEvent, "req_deny_2")
            assert refused is not None and refused.reason_code == "scope_violation" and refused.model == "atlas"
    finally:
        shipper.close()


async def test_replay_after_a_crash_counts_nothing_twice(tmp_path: Path, db: Database) -> None:
    """The offsets are written after the commit: a crash in between re-ships the batch."""
    await write_traffic(tmp_path)
    shipper = RequestLogShipper(tmp_path, db, batch=4)  # start and end of one request land in different batches
    assert await shipper.ship_once() == 25
    (tmp_path / OFFSETS_FILE).unlink()  # the crash lost every offset
    assert await shipper.ship_once() == 25
    shipper.close()
    assert buckets(db) == EXPECTED
    assert event_count(db) == 14


async def test_end_shipping_after_its_start_completes_the_request(tmp_path: Path, db: Database) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1")
    shipper = RequestLogShipper(tmp_path, db)
    try:
        await rlog.record_start(start("req_x"))
        assert await shipper.ship_once() == 1
        assert buckets(db)[0]["requests"] == 1 and buckets(db)[0]["completion_tokens"] == 0
        rlog.record_end(end("req_x", completion_tokens=42))
        await rlog.record_start(start("req_y"))
        assert await shipper.ship_once() == 2
        row = buckets(db)[0]
        assert (row["requests"], row["allowed"], row["completion_tokens"], row["errors"]) == (2, 2, 42, 0)
        # An end record that repeats its start's "at" ended latency_ms later.
        rlog.record_end(end("req_y", at=HOUR + 60, latency_ms=250.0, outcome="served"))
        await rlog.record_start(start("req_z"))
        assert await shipper.ship_once() == 2
        with db.read() as s:
            y = s.get(RequestEvent, "req_y")
            assert y is not None and y.outcome == "allowed"
            assert y.ended_at == datetime.fromtimestamp(HOUR + 60.25, UTC)
    finally:
        await rlog.close()
        shipper.close()


async def test_shipper_reads_a_crashed_preallocated_segment_up_to_its_zeros(tmp_path: Path, db: Database) -> None:
    """What a crash can leave: records, a torn line, the preallocated zeros (never trimmed) and, after
    a power loss, even a later page that reached the disk while the one before it did not. Nothing
    after the first zero byte was ever synced: no request behind it was forwarded, so none is shipped."""
    rlog = FileRequestLog(tmp_path, replica="r1", preallocate_step=65536)
    for i in range(3):
        await rlog.record_start(start(f"req_{i}"))
    (segment,) = tmp_path.glob("*.jsonl")
    unsynced = orjson.dumps({**start("req_unsynced"), "kind": "start", "replica": "r1", "seq": 9}) + b"\n"
    with segment.open("r+b") as fh:
        fh.seek(rlog._segment_size)
        fh.write(b'{"id": "req_torn", "ki')  # a write cut short ...
        fh.seek(rlog._segment_size + 8192)
        fh.write(unsynced)  # ... and a page of a later write that reached the disk before it
    fd, rlog._fd = rlog._fd, None  # the process died: nothing trims the segment
    assert fd is not None
    os.close(fd)
    rlog._executor.shutdown(wait=True)
    assert segment.stat().st_size == 65536
    shipper = RequestLogShipper(tmp_path, db)
    try:
        assert await shipper.ship_once() == 3  # the newest segment of r1 looks live: kept
        assert await shipper.ship_once() == 0
        restarted = FileRequestLog(tmp_path, replica="r1")  # a new run seals the old segment
        await restarted.record_start(start("req_next"))
        await restarted.close()
        assert await shipper.ship_once() == 1
        assert not segment.exists() and event_count(db) == 4 and shipper.skipped_lines == 0
    finally:
        shipper.close()


async def test_shipper_keeps_one_connection_between_batches(tmp_path: Path, db: Database) -> None:
    """On SQLite (one connection per transaction otherwise) the shipper keeps its own open; a
    connection that broke is replaced. PostgreSQL's pool already keeps connections."""
    connects = []
    event.listen(db.engine, "connect", lambda *_: connects.append(1))
    rlog = FileRequestLog(tmp_path, replica="r1")
    for i in range(7):
        await rlog.record_start(start(f"req_{i}"))
    await rlog.close()
    shipper = RequestLogShipper(tmp_path, db, batch=2)
    try:
        assert await shipper.ship_once() == 7  # four batches
        if db.is_sqlite:
            assert len(connects) == 1
            assert shipper._conn is not None
            shipper._conn.invalidate()  # the connection broke (as a disk error would leave it)
        restarted = FileRequestLog(tmp_path, replica="r1")
        await restarted.record_start(start("req_next"))
        await restarted.close()
        assert await shipper.ship_once() == 1 and event_count(db) == 8
    finally:
        shipper.close()
    assert shipper._conn is None


async def test_shipped_sealed_segments_are_deleted_and_torn_tails_skipped(tmp_path: Path, db: Database) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1", segment_bytes=400)
    for i in range(6):
        await rlog.record_start(start(f"req_{i}"))
    await rlog.close()
    segments = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    with (tmp_path / segments[-1]).open("ab") as fh:
        fh.write(b'{"id": "req_torn", "ki')  # the replica died mid-write ...
    shipper = RequestLogShipper(tmp_path, db)
    try:
        assert await shipper.ship_once() == 6
        # ... and its newest segment may still be written to: kept.
        assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [segments[-1]]
        restarted = FileRequestLog(tmp_path, replica="r1")  # a new run seals it
        await restarted.record_start(start("req_next"))
        await restarted.close()
        assert await shipper.ship_once() == 1
        assert len(list(tmp_path.glob("*.jsonl"))) == 1
        assert event_count(db) == 7 and shipper.skipped_lines == 0
        with pytest.raises(RuntimeError, match="another shipper"):
            RequestLogShipper(tmp_path, db).ship_once_sync()
    finally:
        shipper.close()
