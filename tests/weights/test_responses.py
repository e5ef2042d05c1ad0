"""Byte ranges, header-safe errors, and the counted stream (including a client that goes away)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import pytest

from releasegate.testing.server import run_in_thread
from releasegate.weights.responses import CountedBody, RangeNotSatisfiable, hf_error, parse_range


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 100, None),
    ("bytes=0-9", 100, (0, 10)),
    ("bytes=90-", 100, (90, 100)),
    ("bytes=90-500", 100, (90, 100)),
    ("bytes=-10", 100, (90, 100)),
    ("bytes=-500", 100, (0, 100)),
    ("bytes=0-1,5-6", 100, None),   # several ranges: ignored, whole file
    ("items=0-1", 100, None),        # other units: ignored
    ("bytes=-", 100, None),
    ("garbage", 100, None),
])
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=5-2", 100), ("bytes=-0", 100), ("bytes=0-", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_error_headers_are_one_ascii_line() -> None:
    r = hf_error(403, "GatedRepo", "terms_not_accepted", "Accept the terms\n(version 2) — now", commit="a" * 40)
    assert r.headers["X-Error-Message"] == "Accept the terms (version 2) ? now"
    assert r.headers["X-Error-Code"] == "GatedRepo" and r.headers["X-Repo-Commit"] == "a" * 40


def test_a_client_that_goes_away_is_recorded_as_incomplete(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(64 * 1024 * 1024))
    reported: list[int] = []
    done = threading.Event()

    def on_done(sent: int) -> None:
        reported.append(sent)
        done.set()

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        body = CountedBody(status=200, headers={}, start=0, end=blob.stat().st_size, on_done=on_done, file=blob)
        await body(scope, receive, send)

    with run_in_thread(app, lifespan="off") as url, httpx.stream("GET", url + "/") as r:
        next(r.iter_bytes(1024 * 1024))
    assert done.wait(10)
    assert len(reported) == 1 and 0 < reported[0] < blob.stat().st_size
    reported.clear()
    done.clear()
    with run_in_thread(app, lifespan="off") as url:
        whole = httpx.get(url + "/")
        assert whole.content == blob.read_bytes()
        assert done.wait(10)
    assert reported == [blob.stat().st_size]


def test_ranges_of_an_iterator_source_stop_at_the_end(tmp_path: Path) -> None:
    pieces = iter([b"abc", b"def", b"gh"])
    got: list[int] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await CountedBody(status=206, headers={"Content-Range": "bytes 0-7/8"}, start=0, end=8,
                          on_done=got.append, pieces=pieces)(scope, receive, send)

    with run_in_thread(app, lifespan="off") as url:
        r = httpx.get(url + "/")
    assert r.status_code == 206 and r.content == b"abcdefgh" and got == [8]
