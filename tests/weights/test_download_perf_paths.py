"""The fast download paths: one fingerprint cache per app, the pipelined body, the cache copy
written as a side effect (complete, verified, never partial, safe under concurrency)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from releasegate.api.app import create_app
from releasegate.services.context import Actor
from releasegate.testing.server import run_in_thread
from releasegate.weights import fingerprint, hub, signing
from releasegate.weights.fingerprint import (
    FingerprintCache,
    FingerprintParams,
    file_sha256,
    iter_fingerprinted,
)
from releasegate.weights.responses import CountedBody
from releasegate.weights.safetensors_io import write_safetensors
from weights_world import MODEL, World

SECRET = b"perf-paths-secret"
SMALL = FingerprintParams(positions=2048, min_elements=64)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: these tests are about the byte path; the store is covered on both backends elsewhere."""
    return f"sqlite:///{tmp_path / 'releasegate.db'}"


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    """A 24 MiB safetensors file (F32 and F16): many 1 MiB chunks, so a client can leave midway."""
    rng = np.random.default_rng(7)
    path = tmp_path / "big.safetensors"
    write_safetensors(path, {
        "w.f32": ("F32", (2048, 2048), rng.standard_normal((2048, 2048), dtype=np.float32).tobytes()),
        "w.f16": ("F16", (2048, 2048), rng.standard_normal((2048, 2048)).astype(np.float16).tobytes()),
        "b": ("F32", (3,), np.ones(3, dtype=np.float32).tobytes()),  # odd tail: size not a block multiple
    })
    return path


def _fingerprinted(path: Path, licensee: str, secret: bytes, params: FingerprintParams | None = None) -> bytes:
    return b"".join(iter_fingerprinted(path, licensee, secret, params=params))


def _body_app(cache: FingerprintCache, src: Path, licensee: str, reported: list[int], done: threading.Event,
              chunk: int = 1024 * 1024) -> Callable:  # type: ignore[type-arg]
    sha = file_sha256(src)
    size = src.stat().st_size

    def on_done(sent: int) -> None:
        reported.append(sent)
        done.set()

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        pieces, copy = cache.produce(src, licensee, SECRET, source_sha256=sha, chunk_size=chunk)
        assert copy is not None
        await CountedBody(status=200, headers={}, start=0, end=size, on_done=on_done, pieces=pieces,
                          finish=copy.finish)(scope, receive, send)

    return app


@pytest.mark.parametrize("direct_io", [True, False])
def test_first_download_leaves_a_complete_verified_copy(big_file: Path, tmp_path: Path, direct_io: bool) -> None:
    cache = FingerprintCache(tmp_path / "fp", params=SMALL, direct_io=direct_io)
    reported: list[int] = []
    done = threading.Event()
    with run_in_thread(_body_app(cache, big_file, "ana", reported, done), lifespan="off") as url:
        got = httpx.get(url + "/").content
        # The copy is kept before the last byte is sent: it is there as soon as the client has the file.
        cached = cache.get(file_sha256(big_file), "ana", SECRET)
    expected = _fingerprinted(big_file, "ana", SECRET, SMALL)
    assert got == expected and got != big_file.read_bytes()
    assert cached is not None and cached.read_bytes() == expected
    assert done.wait(10) and reported == [len(expected)]
    assert not list((tmp_path / "fp").rglob("*.part"))


def test_a_client_leaving_midway_leaves_no_cache_entry(big_file: Path, tmp_path: Path) -> None:
    cache = FingerprintCache(tmp_path / "fp", params=SMALL)
    reported: list[int] = []
    done = threading.Event()
    with run_in_thread(_body_app(cache, big_file, "bo", reported, done, chunk=256 * 1024), lifespan="off") as url, \
            httpx.stream("GET", url + "/") as r:
        next(r.iter_bytes(64 * 1024))
    assert done.wait(10)
    assert len(reported) == 1 and 0 < reported[0] < big_file.stat().st_size
    assert cache.get(file_sha256(big_file), "bo", SECRET) is None
    for _ in range(100):  # the producer thread finishes (and drops its temporary file) right after on_done
        if not list((tmp_path / "fp").rglob("*.part")):
            break
        threading.Event().wait(0.05)
    assert not list((tmp_path / "fp").rglob("*.part"))


def test_a_failing_cache_write_does_not_fail_the_download(big_file: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(self: object, piece: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fingerprint._DirectWriter, "write", disk_full)
    cache = FingerprintCache(tmp_path / "fp", params=SMALL)
    sha = file_sha256(big_file)
    pieces, copy = cache.produce(big_file, "cy", SECRET, source_sha256=sha, chunk_size=3 * 1024 * 1024 + 7)
    assert copy is not None
    assert b"".join(pieces) == _fingerprinted(big_file, "cy", SECRET, SMALL)
    assert copy.finish(True) is None
    assert cache.get(sha, "cy", SECRET) is None and not list((tmp_path / "fp").rglob("*.part"))


@pytest.mark.parametrize(("start", "end", "chunk"), [(0, 10, 4), (123, 45_678, 1000), (7, 8, 1000), (5, 100_000, 100_000)])
def test_file_ranges_are_exact_across_chunks(tmp_path: Path, start: int, end: int, chunk: int) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(100_000))
    got: list[int] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await CountedBody(status=206, headers={}, start=start, end=end, on_done=got.append, file=blob,
                          chunk_size=chunk)(scope, receive, send)

    with run_in_thread(app, lifespan="off") as url:
        r = httpx.get(url + "/")
    assert r.content == blob.read_bytes()[start:end] and got == [end - start]


# --------------------------------------------------------------------------- through the real endpoints


@pytest.fixture
def server(world: World) -> Iterator[str]:
    with run_in_thread(create_app(ctx=world.ctx)) as url:
        yield url


def _signed(server: str, token: str) -> str:
    r = httpx.get(f"{server}/{MODEL}/resolve/main/model.safetensors", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 302, r.headers
    return server + r.headers["Location"]


def test_one_fingerprint_cache_and_one_plan_per_app(world: World, monkeypatch: pytest.MonkeyPatch,
                                                   granted: Callable[[str, str], tuple[str, Actor]]) -> None:
    made: list[FingerprintCache] = []
    plans: list[object] = []

    class Counted(FingerprintCache):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    real_plan = fingerprint.plan_fingerprint

    def counted_plan(*args: object, **kwargs: object) -> object:
        plans.append(args)
        return real_plan(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hub, "FingerprintCache", Counted)
    monkeypatch.setattr(fingerprint, "plan_fingerprint", counted_plan)
    with run_in_thread(create_app(ctx=world.ctx)) as url:
        for who in ("da", "ed", "fi"):
            token, _ = granted(who, f"{who}@uni.edu")
            link = _signed(url, token)
            assert httpx.get(link, headers={"Range": "bytes=0-99"}).status_code == 206  # a range: produced on its own
            assert httpx.get(link).status_code == 200  # a first download: produced while it streams
            assert httpx.get(link).status_code == 200  # a repeat: produced again, with the same plan
    assert len(made) == 1 and len(plans) == 1


def test_concurrent_downloads_agree_and_leave_no_per_licensee_copy(
        world: World, server: str, granted: Callable[[str, str], tuple[str, Actor]]) -> None:
    """Without nginx in front every download is produced from the shared source: concurrent first
    downloads and a repeat get the same marked bytes, and the disk holds no copy per licensee."""
    token, actor = granted("gu", "gu@uni.edu")
    link = _signed(server, token)
    bodies: list[bytes] = []
    start = threading.Barrier(4)

    def fetch() -> None:
        start.wait()
        r = httpx.get(link, timeout=30)
        assert r.status_code == 200
        bodies.append(r.content)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(bodies) == 4 and len(set(bodies)) == 1
    src = world.plan_dir / "artifacts" / "v1" / "model.safetensors"
    fp_secret = signing.fingerprint_secret(world.ctx.settings.server_secret())
    assert actor.principal_id is not None
    expected = _fingerprinted(src, actor.principal_id, fp_secret)
    assert bodies[0] == expected and expected != src.read_bytes()
    assert httpx.get(link).content == expected  # the repeat: the same copy, produced again
    fingerprints = world.ctx.settings.data_dir / "fingerprints"
    assert not fingerprints.exists() or not [p for p in fingerprints.rglob("*") if p.is_file()]


def test_pieces_are_independent_buffers(big_file: Path) -> None:
    """A consumer may keep every piece (asyncio transports buffer without copying): no piece may
    change after it was handed on, and none can be written to."""
    pieces = list(iter_fingerprinted(big_file, "hana", SECRET, params=SMALL, chunk_size=1024 * 1024 + 3))
    assert len(pieces) > 20
    assert b"".join(pieces) == _fingerprinted(big_file, "hana", SECRET, SMALL)
    assert all(isinstance(p, memoryview) and p.readonly for p in pieces)
    with pytest.raises(TypeError):
        pieces[0][0] = 1
