"""Detectors' ``flags`` records: merged into the request's event, each (request, detector) counted once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from releasegate.gateway.requestlog import FileRequestLog, RequestLogShipper
from releasegate.gateway.shipper import OFFSETS_FILE
from releasegate.store.db import Database
from releasegate.store.requests import RequestBucket, RequestEvent

HOUR = datetime(2030, 5, 17, 12, tzinfo=UTC).timestamp()


def start(rid: str) -> dict[str, Any]:
    return {"id": rid, "at": HOUR + 60, "deployer_id": "dep_blue", "model": "atlas", "version": "v1",
            "stage": "pilot", "use_case": "support", "endpoint": "chat.completions", "decision": "allow"}


def end(rid: str, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "at": HOUR + 61, "status": 200, "latency_ms": 5.0, "outcome": "allowed", **extra}


def flagged(db: Database) -> dict[str, int]:
    with db.read() as s:
        rows = s.scalars(select(RequestBucket)).all()
        assert len(rows) == 1
        return dict(rows[0].flagged or {})


def flags_of(db: Database, rid: str) -> Any:
    with db.read() as s:
        ev = s.get(RequestEvent, rid)
        assert ev is not None
        return ev.flags


async def test_flags_after_the_end_are_counted_once_per_request_and_detector(tmp_path: Path, db: Database) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1")
    shipper = RequestLogShipper(tmp_path, db, batch=2)  # start/end/flags of one request in different batches
    try:
        await rlog.record_start(start("req_a"))
        rlog.record_end(end("req_a"))
        pattern = {"category": "input", "score": 1.0, "detail": "(?i)ransomware"}
        rlog.record_flags({"id": "req_a", "flags": {"moderation": pattern},
                           "detector_errors": {"drift": "no answer within 10s"}})
        rlog.record_flags({"id": "req_a", "flags": {"moderation": {"category": "other"}, "pii": {"category": "email"}}})
        # An inline detector's flag rides on the end record of a refused request.
        rlog.record_end({**start("req_b"), **end("req_b", status=403, outcome="denied", reason_code="content_flagged",
                                                 flags={"moderation": pattern})})
        await rlog.close()
        assert await shipper.ship_once() == 5
        assert flagged(db) == {"moderation": 2, "pii": 1}  # the error is not a flag; the repeat is not counted
        assert flags_of(db, "req_a") == {"moderation": pattern, "drift": {"error": "no answer within 10s"},
                                         "pii": {"category": "email"}}
        (tmp_path / OFFSETS_FILE).unlink()  # a crash before the offsets were saved: everything ships again
        assert await shipper.ship_once() == 5
        assert flagged(db) == {"moderation": 2, "pii": 1}
    finally:
        shipper.close()


async def test_flags_shipped_before_the_end_are_counted_with_it(tmp_path: Path, db: Database) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1")
    shipper = RequestLogShipper(tmp_path, db)
    try:
        await rlog.record_start(start("req_c"))
        rlog.record_flags({"id": "req_c", "flags": {"moderation": {"category": "input"}}})
        await rlog.record_start(start("req_d"))  # makes the flags record durable
        assert await shipper.ship_once() == 3
        assert flagged(db) == {}  # not counted until the request's end ships
        rlog.record_end(end("req_c", flags={"pii": {"category": "email"}}))
        await rlog.close()
        assert await shipper.ship_once() == 1
        assert flagged(db) == {"moderation": 1, "pii": 1}
        assert set(flags_of(db, "req_c")) == {"moderation", "pii"}
    finally:
        shipper.close()
