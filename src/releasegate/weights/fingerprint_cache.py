"""The on-disk cache of fingerprinted copies, and the copy written while a download streams.

The marking scheme itself is in :mod:`releasegate.weights.fingerprint`, which re-exports the
names defined here. Its functions are looked up on that module at call time, so anything that
replaces one there (tests do, with ``monkeypatch``) is seen here too.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import logging
import mmap
import os
import queue
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

from releasegate.errors import InvalidInput
from releasegate.weights import fingerprint as scheme
from releasegate.weights.fingerprint import (
    DEFAULT_CHUNK_SIZE,
    FingerprintParams,
    FingerprintPlan,
    _check_range,
    _secret_bytes,
)
from releasegate.weights.safetensors_io import read_header

log = logging.getLogger("releasegate.weights")


class FingerprintCache:
    """Fingerprinted copies on disk, keyed by (source sha256, licensee, secret, scheme).

    Files appear atomically (temp file + rename), so a reader sees a whole copy or none, and
    two concurrent first downloads of the same copy are harmless (same bytes, last rename
    wins). File names carry no licensee id in clear.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        params: FingerprintParams | None = None,
        plans_kept: int = 16,
        direct_io: bool = True,
    ) -> None:
        self.root = Path(root)
        self.params = params or FingerprintParams()
        # Copies are written with O_DIRECT (see _DirectWriter): per-licensee copies are written
        # once and read rarely, so they should neither cost page-cache CPU nor evict hot files.
        self.direct_io = direct_io
        # Recent plans by (source sha256, secret digest): building one costs ~0.1 s, which
        # otherwise dominates the first download of a file of a few hundred MB.
        self._plans: OrderedDict[tuple[str, bytes], FingerprintPlan] = OrderedDict()
        self._plans_kept = plans_kept
        # Servers call plan_for from many worker threads; one lock also builds each plan once.
        self._plans_lock = threading.Lock()

    def plan_for(self, src: str | os.PathLike[str], source_sha256: str, secret: bytes | str) -> FingerprintPlan:
        """The plan of ``src`` (whose sha256 the caller vouches for), reused across calls. Thread-safe."""
        key = (source_sha256, hashlib.sha256(_secret_bytes(secret)).digest())
        with self._plans_lock:
            plan = self._plans.get(key)
            if plan is None:
                plan = scheme.plan_fingerprint(read_header(src), secret, self.params)
                self._plans[key] = plan
                while len(self._plans) > self._plans_kept:
                    self._plans.popitem(last=False)
            self._plans.move_to_end(key)
            return plan

    def path_for(self, source_sha256: str, licensee_id: str, secret: bytes | str) -> Path:
        """Where the copy for this source, licensee and secret lives (whether or not it exists)."""
        if len(source_sha256) != 64 or not all(c in "0123456789abcdef" for c in source_sha256):
            raise InvalidInput(f"source_sha256 must be 64 lowercase hex digits, got {source_sha256!r}")
        who = hmac.new(
            scheme.licensee_key(secret, licensee_id), self.params.scheme_id.encode(), hashlib.sha256
        ).hexdigest()[:32]
        return self.root / source_sha256[:2] / f"{source_sha256}-{who}.safetensors"

    def get(self, source_sha256: str, licensee_id: str, secret: bytes | str) -> Path | None:
        """The cached copy, or None if it has not been produced yet."""
        p = self.path_for(source_sha256, licensee_id, secret)
        return p if p.is_file() else None

    def ensure(
        self,
        src: str | os.PathLike[str],
        licensee_id: str,
        secret: bytes | str,
        *,
        source_sha256: str | None = None,
    ) -> Path:
        """The cached copy, produced first if missing. Pass ``source_sha256`` when known."""
        sha = source_sha256 or scheme.file_sha256(src)
        target = self.path_for(sha, licensee_id, secret)
        if not target.is_file():
            scheme.write_fingerprinted(src, target, licensee_id, secret, params=self.params)
        return target

    def stream(
        self,
        src: str | os.PathLike[str],
        licensee_id: str,
        secret: bytes | str,
        *,
        source_sha256: str,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes | memoryview]:
        """Bytes ``[start, end)`` of the copy: from the cache if present, else produced.

        A whole-file request on a cache miss also writes the copy to the cache as it streams
        (kept only if the stream ran to the end); a partial range is produced on its own.
        """
        target = self.path_for(source_sha256, licensee_id, secret)
        if target.is_file():
            stop = _check_range(target.stat().st_size, start, end)
            return _read_range(target, start, stop, chunk_size)
        pieces, copy = self.produce(
            src, licensee_id, secret, source_sha256=source_sha256, start=start, end=end, chunk_size=chunk_size
        )
        return pieces if copy is None else _committed_at_end(pieces, copy)

    def produce(
        self,
        src: str | os.PathLike[str],
        licensee_id: str,
        secret: bytes | str,
        *,
        source_sha256: str,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        cache_copy: bool = True,
    ) -> tuple[Iterator[memoryview], CacheCopy | None]:
        """Produce bytes ``[start, end)`` of the copy (cache not consulted), with the plan reused.

        For a whole-file range (and ``cache_copy``) the pieces are also written to a temporary
        cache file as a side effect, and the :class:`CacheCopy` is returned: the caller decides,
        once the response has ended, whether the copy goes into the cache (``finish(True)``:
        every byte was sent) or not (``finish(False)``). For a partial range, or without
        ``cache_copy``, the second item is None.
        """
        plan = self.plan_for(src, source_sha256, secret)
        pieces = scheme.iter_fingerprinted(
            src, licensee_id, secret, start=start, end=end, chunk_size=chunk_size, plan=plan
        )
        size = plan.header.file_size
        if cache_copy and start == 0 and (end is None or end == size):
            copy = CacheCopy(self.path_for(source_sha256, licensee_id, secret), size, direct_io=self.direct_io)
            return copy.tee(pieces), copy
        return pieces, None


def _read_range(path: Path, start: int, stop: int, chunk_size: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        pos = start
        while pos < stop:
            piece = f.read(min(chunk_size, stop - pos))
            if not piece:
                raise InvalidInput(f"{path} was truncated while being read")
            pos += len(piece)
            yield piece


class _DirectWriter:
    """Sequential writes to a new file with ``O_DIRECT`` where the file system allows it.

    Profiled: writing the cache copy through the page cache cost more CPU than producing the
    fingerprinted bytes (page allocation, dirty throttling; 0.1 to 1 s of CPU per 537 MB,
    highly variable on a shared machine) and made the closing fsync flush it all.
    ``O_DIRECT`` hands page-aligned 4 MiB blocks straight to the device (about 0.1 s of CPU
    for the same file, fsync then syncs metadata only). The copy is therefore not in the
    page cache until first read. Falls back to ordinary writes if ``O_DIRECT`` is refused.
    """

    BLOCK = 4 * 1024 * 1024  # a multiple of every logical block size; offsets stay aligned

    def __init__(self, fd: int, *, direct: bool = True) -> None:
        self.fd = fd
        self._stage: mmap.mmap | None = None
        self._filled = 0
        flag = getattr(os, "O_DIRECT", 0)
        if flag and direct:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | flag)
                self._stage = mmap.mmap(-1, self.BLOCK)  # anonymous maps are page-aligned
            except OSError:
                self._stage = None

    def write(self, piece: bytes | memoryview) -> None:
        if self._stage is None:
            _write_fully(self.fd, memoryview(piece))
            return
        view = memoryview(piece)
        while view:
            n = min(len(view), self.BLOCK - self._filled)
            self._stage[self._filled : self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == self.BLOCK:
                self._flush(self.BLOCK)

    def _flush(self, length: int) -> None:
        assert self._stage is not None
        block = memoryview(self._stage)[:length]
        try:
            written = os.write(self.fd, block)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # The file system took the flag but not the write: carry on without O_DIRECT.
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            written = 0
        if written != length:
            _write_fully(self.fd, block[written:])
        block.release()
        self._filled = 0

    def close(self, size: int) -> None:
        """Write what is staged (padded to a block, then cut back to ``size``)."""
        if self._stage is None:
            return
        tail = self._filled
        if tail:
            padded = -(-tail // 4096) * 4096
            self._stage[tail:padded] = bytes(padded - tail)
            self._flush(padded)
            os.ftruncate(self.fd, size)
        self._stage.close()
        self._stage = None


def _write_fully(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


class CacheCopy:
    """A fingerprinted copy written to the cache while it is produced, committed only when whole.

    ``tee(pieces)`` passes the pieces on unchanged and queues each for a writer thread of its
    own, so writing the copy (the largest cost of a first download, profiled) overlaps with
    producing and sending instead of adding to them. At most ``queued`` pieces wait: a disk
    slower than the download slows the producer down instead of filling memory. After the
    last piece the writer fsyncs **once** and ``tee`` waits for it. ``finish(True)`` renames
    the file into place if every expected byte was written and synced; otherwise (or with
    ``finish(False)``) it is deleted. A failed cache write never fails the stream: the copy
    is just not kept. Concurrent copies of the same target are harmless: each has its own
    temporary file and the rename is atomic (same bytes, last one wins).
    """

    def __init__(self, target: Path, size: int, *, queued: int = 4, direct_io: bool = True) -> None:
        self.target = target
        self.size = size
        self.direct_io = direct_io
        self.written = 0
        self.sealed = False
        self._fd: int | None = None
        self._tmp: Path | None = None
        self._finished = False
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=queued)
        self._writer: threading.Thread | None = None
        self._failed = False
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            self._fd, self._tmp = fd, Path(tmp)
        except OSError as exc:
            log.warning("fingerprint cache: cannot create a copy next to %s: %s", target, exc)

    def tee(self, pieces: Iterable[memoryview]) -> Iterator[memoryview]:
        if self._fd is None:
            yield from pieces
            return
        self._writer = threading.Thread(target=self._write_all, name="rg-fp-cache-writer", daemon=True)
        self._writer.start()
        ended = False
        try:
            for piece in pieces:
                yield piece
                if not self._failed:  # else the writer gave up: keep streaming, cache nothing
                    self._put(piece)
            self._put(None)  # the end: the writer fsyncs
            ended = True
        finally:
            self._stop_writer(send_end=not ended)

    def _put(self, item: memoryview | None) -> None:
        writer = self._writer
        while writer is not None:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not writer.is_alive():  # cannot happen short of a crash; never hang the download on it
                    self._failed = True
                    return

    def _write_all(self) -> None:
        """Writer thread: write every queued piece, then fsync once; on an error, drain and give up."""
        out = _DirectWriter(self._fd, direct=self.direct_io) if self._fd is not None else None
        try:
            while (piece := self._queue.get()) is not None:
                if self._failed or out is None:
                    continue  # keep taking pieces so the producer never blocks on a dead writer
                try:
                    out.write(piece)
                    self.written += len(piece)
                except OSError as exc:
                    log.warning("fingerprint cache: writing %s failed, the copy is not kept: %s", self._tmp, exc)
                    self._failed = True
            if self._failed or out is None or self.written != self.size:
                return
            out.close(self.size)
            os.fsync(out.fd)  # the one fsync, after the last byte; never per piece
            self.sealed = True
        except OSError as exc:
            log.warning("fingerprint cache: finishing %s failed, the copy is not kept: %s", self._tmp, exc)
            self._failed = True

    def _stop_writer(self, *, send_end: bool = True) -> None:
        """Wait for the writer (after telling it to stop, if the pieces did not run out) and close the file."""
        writer = self._writer
        if writer is not None:
            if send_end:
                self._put(None)
            writer.join()
            self._writer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def finish(self, complete: bool) -> Path | None:
        """Keep the copy if ``complete`` and it is whole and synced; else drop it. Idempotent."""
        if self._finished:
            return self.target if self.sealed and complete else None
        self._finished = True
        self._stop_writer()
        tmp, self._tmp = self._tmp, None
        if tmp is None:
            return None
        try:
            if complete and self.sealed and tmp.stat().st_size == self.size:
                os.replace(tmp, self.target)
                return self.target
        except OSError as exc:  # the download itself is fine; it just is not cached
            log.warning("fingerprint cache: keeping %s failed: %s", self.target, exc)
        tmp.unlink(missing_ok=True)
        return None


def _committed_at_end(pieces: Iterator[memoryview], copy: CacheCopy) -> Iterator[memoryview]:
    """The pieces; the copy is kept if they all ran, dropped if the consumer stopped early."""
    complete = False
    try:
        yield from pieces
        complete = True
    finally:
        copy.finish(complete)
