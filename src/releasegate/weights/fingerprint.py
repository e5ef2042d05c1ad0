"""Per-licensee weight fingerprints: embed while streaming, trace a leaked copy back.

Scheme ``rg-fp-v1`` (see docs/fingerprinting.md for the reasoning and measured limits):

* Positions. From the header and the server secret alone, each float tensor with at least
  two dimensions and ``min_elements`` elements gets a keyed, sorted set of element indices;
  about ``positions`` of them per file, spread in proportion to tensor size. Every licensee
  is marked at the same positions, so tracing is a correlation test.
* Signs. Each licensee has a key ``HMAC-SHA256(secret, "licensee" || id)``; the sign
  ``s = ±1`` of the ``j``-th marked element of tensor ``name`` is bit ``j`` of
  ``SHAKE256(key || name)``. The whole per-licensee sequence is a few hundred kilobytes.
* Mark. A marked element ``w`` becomes ``w * (1 + alpha * s)`` computed in float32 and
  rounded back to the file's dtype (F16, BF16 via uint16 bits, F32; F64 in float64).
  Everything else, header included, is copied byte for byte, so the output has the same
  size and any byte range of it can be produced on its own.
* Trace. For each marked element the tracer compares the suspect value ``v`` with the
  original ``w``: per tensor it removes a least-squares gain (``r = v - g w``), then scores
  every candidate with ``z = sum(s w r) / sqrt(sum((w r)^2))``. For a wrong candidate, or
  for weights that never carried a mark, the signs are independent of ``w r``, so by
  Hoeffding's inequality ``P(z > t) <= exp(-t^2 / 2)`` whatever was done to the file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import logging
import math
import mmap
import os
import queue
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from releasegate.errors import InvalidInput
from releasegate.weights.safetensors_io import (
    FLOAT_DTYPES,
    SafetensorsHeader,
    TensorInfo,
    TensorReader,
    bf16_to_f32,
    f32_to_bf16,
    read_header,
    safetensors_files,
)

log = logging.getLogger("releasegate.weights")

SCHEME = "rg-fp-v1"
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
# Wide enough that a chunk boundary never splits an element we have to rewrite.
_EDGE = 8
_READ_AHEAD = 16 * 1024 * 1024


@dataclass(frozen=True)
class FingerprintParams:
    """Knobs of the scheme. Changing any of them changes the bytes, so they are in the cache key.

    ``alpha``: relative change of each marked element (0.02 = 2 %).
    ``positions``: target number of marked elements per file.
    ``min_elements``: smaller tensors (and 1-D tensors: biases, norms) are never marked.
    ``max_fraction``: at most this share of any tensor's elements is marked.
    """

    alpha: float = 0.02
    positions: int = 1 << 18
    min_elements: int = 4096
    max_fraction: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 0.5:
            raise InvalidInput(f"alpha must be in (0, 0.5), got {self.alpha}")
        if self.positions < 1:
            raise InvalidInput(f"positions must be positive, got {self.positions}")
        if not 0.0 < self.max_fraction <= 1.0:
            raise InvalidInput(f"max_fraction must be in (0, 1], got {self.max_fraction}")

    @property
    def scheme_id(self) -> str:
        """A string naming the scheme and every parameter, for cache keys and audit records."""
        return (
            f"{SCHEME}:a={self.alpha!r}:k={self.positions}:m={self.min_elements}"
            f":f={self.max_fraction!r}"
        )


@dataclass(frozen=True)
class MarkedTensor:
    """The marked element indices (flat, row-major, sorted, unique) of one tensor."""

    info: TensorInfo
    positions: np.ndarray

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(frozen=True)
class FingerprintPlan:
    """Where the mark goes in one file; depends on the header and the secret, not the licensee."""

    header: SafetensorsHeader
    params: FingerprintParams
    tensors: tuple[MarkedTensor, ...]

    @property
    def total_positions(self) -> int:
        return sum(len(t.positions) for t in self.tensors)


@dataclass(frozen=True)
class TraceResult:
    """The verdict on a suspect copy.

    ``licensee`` is named only if its z-score reaches ``threshold``; ``confidence`` is then
    ``1 - false_attribution_bound`` (0.0 when nobody is named). ``score`` and ``runner_up``
    are the best and second-best z-scores; ``matches`` lists every candidate at or above the
    threshold, best first (more than one suggests copies were mixed).
    """

    licensee: str | None
    confidence: float
    score: float
    runner_up: float
    runner_up_licensee: str | None
    threshold: float
    false_attribution_bound: float
    candidates: int
    positions_used: int
    positions_planned: int
    matches: tuple[str, ...] = ()
    missing_tensors: tuple[str, ...] = ()
    unusable_tensors: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- keys


def _secret_bytes(secret: bytes | str) -> bytes:
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise InvalidInput("the fingerprint secret must not be empty")
    return raw


def _positions_key(secret: bytes | str) -> bytes:
    return hmac.new(_secret_bytes(secret), f"{SCHEME}/positions".encode(), hashlib.sha256).digest()


def licensee_key(secret: bytes | str, licensee_id: str) -> bytes:
    """The per-licensee key ``HMAC-SHA256(secret, scheme/licensee/<id>)``."""
    if not isinstance(licensee_id, str) or not licensee_id:
        raise InvalidInput("licensee id must be a non-empty string")
    msg = f"{SCHEME}/licensee/".encode() + licensee_id.encode("utf-8")
    return hmac.new(_secret_bytes(secret), msg, hashlib.sha256).digest()


def _sign_bytes(key: bytes, name: str, count: int) -> bytes:
    """Packed sign bits (little bit order) of the first ``count`` marked elements of ``name``."""
    return hashlib.shake_256(key + b"\x00" + name.encode("utf-8")).digest((count + 7) // 8)


def licensee_signs(key: bytes, name: str, count: int) -> np.ndarray:
    """The ±1 signs (int8) a licensee key gives the marked elements of tensor ``name``."""
    bits = np.unpackbits(
        np.frombuffer(_sign_bytes(key, name, count), dtype=np.uint8), count=count, bitorder="little"
    )
    return bits.astype(np.int8) * 2 - 1


# --------------------------------------------------------------------------- plan


def _eligible(info: TensorInfo, params: FingerprintParams) -> bool:
    return (
        info.dtype in FLOAT_DTYPES
        and len(info.shape) >= 2
        and info.numel >= max(params.min_elements, 1)
    )


def _tensor_positions(key: bytes, info: TensorInfo, count: int) -> np.ndarray:
    """``count`` distinct keyed indices in ``[0, numel)``, sorted; a pure function of its inputs."""
    tag = f"{info.name}\x00{info.numel}".encode()
    chosen = np.empty(0, dtype=np.int64)
    round_ = 0
    while len(chosen) < count:
        # Each round draws exactly the number still missing, so the union never overshoots.
        need = count - len(chosen)
        stream = hashlib.shake_256(key + b"\x00" + tag + b"\x00" + str(round_).encode()).digest(8 * need)
        drawn = (np.frombuffer(stream, dtype="<u8") % np.uint64(info.numel)).astype(np.int64)
        chosen = np.union1d(chosen, drawn)
        round_ += 1
    return chosen


def plan_fingerprint(
    header: SafetensorsHeader,
    secret: bytes | str,
    params: FingerprintParams | None = None,
) -> FingerprintPlan:
    """Choose the marked tensors and element positions of a file, keyed by the secret only.

    The result is the same for every licensee and depends only on tensor names, dtypes,
    shapes, ``params`` and ``secret``, so it can be recomputed at trace time from the original.
    """
    params = params or FingerprintParams()
    key = _positions_key(secret)
    eligible = [t for t in header.ordered() if _eligible(t, params)]
    total = sum(t.numel for t in eligible)
    marked: list[MarkedTensor] = []
    for info in eligible:
        cap = max(1, int(params.max_fraction * info.numel))
        share = round(params.positions * info.numel / total)
        count = min(cap, max(64, share))
        marked.append(MarkedTensor(info, _tensor_positions(key, info, count)))
    return FingerprintPlan(header=header, params=params, tensors=tuple(marked))


# --------------------------------------------------------------------------- embed


_NUMPY_DTYPE = MappingProxyType(
    {"F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
)


def _perturb(raw: np.ndarray, signs: np.ndarray, dtype: str, alpha: float) -> np.ndarray:
    """Marked raw elements: value * (1 + alpha * sign), rounded back to ``dtype``."""
    if dtype == "F64":
        factor = 1.0 + alpha * signs.astype(np.float64)
        return raw * factor
    factor = np.float32(1.0) + np.float32(alpha) * signs.astype(np.float32)
    if dtype == "F32":
        return raw * factor
    if dtype == "F16":
        with np.errstate(over="ignore"):
            return (raw.astype(np.float32) * factor).astype(np.float16)
    return f32_to_bf16(bf16_to_f32(raw) * factor)


class _Marker:
    """Applies one licensee's mark to any window of the file's bytes."""

    def __init__(self, plan: FingerprintPlan, key: bytes) -> None:
        self.plan = plan
        self.alpha = plan.params.alpha
        self.tensors = plan.tensors
        self.starts = np.array([t.info.start for t in plan.tensors], dtype=np.int64)
        self.ends = np.array([t.info.end for t in plan.tensors], dtype=np.int64)
        self.signs = [licensee_signs(key, t.name, len(t.positions)) for t in plan.tensors]

    def apply(self, buf: np.ndarray, lo: int) -> None:
        """Rewrite in place every marked element lying wholly inside ``buf`` (file offset ``lo``)."""
        hi = lo + len(buf)
        first = int(np.searchsorted(self.ends, lo, side="right"))
        last = int(np.searchsorted(self.starts, hi, side="left"))
        for k in range(first, last):
            mt = self.tensors[k]
            info = mt.info
            size = info.itemsize
            i0 = max(0, -(-(lo - info.start) // size))
            i1 = min(info.numel, (hi - info.start) // size)
            if i1 <= i0:
                continue
            ja, jb = np.searchsorted(mt.positions, (i0, i1))
            if ja == jb:
                continue
            window = np.frombuffer(
                buf, dtype=_NUMPY_DTYPE[info.dtype], count=i1 - i0, offset=info.start + i0 * size - lo
            )
            local = mt.positions[ja:jb] - i0
            window[local] = _perturb(window[local], self.signs[k][ja:jb], info.dtype, self.alpha)


def _check_range(size: int, start: int, end: int | None) -> int:
    stop = size if end is None else end
    if not 0 <= start <= stop <= size:
        raise InvalidInput(
            f"byte range [{start}, {stop}) is outside the file of {size} bytes",
            code="range_not_satisfiable",
        )
    return stop


def iter_fingerprinted(
    path: str | os.PathLike[str],
    licensee_id: str,
    secret: bytes | str,
    *,
    start: int = 0,
    end: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    params: FingerprintParams | None = None,
    plan: FingerprintPlan | None = None,
) -> Iterator[bytes]:
    """Yield bytes ``[start, end)`` of ``licensee_id``'s fingerprinted copy of ``path``.

    Memory stays within a few ``chunk_size`` buffers. The output of any range equals the
    same slice of the whole output, and the total size equals the source size.
    """
    if chunk_size < 1:
        raise InvalidInput(f"chunk_size must be positive, got {chunk_size}")
    header = plan.header if plan is not None else read_header(path)
    plan = plan or plan_fingerprint(header, secret, params)
    stop = _check_range(header.file_size, start, end)
    marker = _Marker(plan, licensee_key(secret, licensee_id))
    return _stream(Path(path), marker, header.file_size, start, stop, chunk_size)


def _stream(
    path: Path, marker: _Marker, size: int, start: int, stop: int, chunk_size: int
) -> Iterator[bytes]:
    with path.open("rb", buffering=0) as f:
        if os.fstat(f.fileno()).st_size != size:
            raise InvalidInput(f"{path} changed size while being fingerprinted")
        # One read buffer for the whole stream: every yielded piece is a copy (``tobytes``), so
        # consumers that keep a piece (asyncio transports buffer without copying) never see it
        # change. A fresh buffer per chunk cost a page-faulting allocation each time (profiled).
        scratch = np.empty(min(stop - start, chunk_size) + 2 * _EDGE, dtype=np.uint8)
        advise = hasattr(os, "posix_fadvise")
        pos = ahead = start
        while pos < stop:
            q = min(stop, pos + chunk_size)
            lo = max(0, pos - _EDGE)
            hi = min(size, q + _EDGE)
            if advise and ahead < min(stop, q + _READ_AHEAD):
                # Request the source ahead of the reader: from disk (not cached) ~3x faster, measured.
                os.posix_fadvise(f.fileno(), ahead, _READ_AHEAD, os.POSIX_FADV_WILLNEED)
                ahead += _READ_AHEAD
            buf = scratch[: hi - lo]
            if os.preadv(f.fileno(), [memoryview(buf)], lo) != len(buf):
                raise InvalidInput(f"{path} was truncated while being fingerprinted")
            marker.apply(buf, lo)
            yield buf[pos - lo : q - lo].tobytes()
            pos = q


def write_fingerprinted(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    licensee_id: str,
    secret: bytes | str,
    *,
    params: FingerprintParams | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Write ``licensee_id``'s copy of ``src`` to ``dst`` atomically; return the byte count.

    ``dst`` either does not change or holds the complete copy (temp file, fsync, rename).
    """
    target = Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in iter_fingerprinted(
                src, licensee_id, secret, params=params, chunk_size=chunk_size
            ):
                out.write(piece)
                written += len(piece)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return written


def file_sha256(path: str | os.PathLike[str], *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while piece := f.read(chunk_size):
            digest.update(piece)
    return digest.hexdigest()


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
                plan = plan_fingerprint(read_header(src), secret, self.params)
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
            licensee_key(secret, licensee_id), self.params.scheme_id.encode(), hashlib.sha256
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
        sha = source_sha256 or file_sha256(src)
        target = self.path_for(sha, licensee_id, secret)
        if not target.is_file():
            write_fingerprinted(src, target, licensee_id, secret, params=self.params)
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
    ) -> Iterator[bytes]:
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
    ) -> tuple[Iterator[bytes], CacheCopy | None]:
        """Produce bytes ``[start, end)`` of the copy (cache not consulted), with the plan reused.

        For a whole-file range the pieces are also written to a temporary cache file as a side
        effect, and the :class:`CacheCopy` is returned: the caller decides, once the response
        has ended, whether the copy goes into the cache (``finish(True)``: every byte was
        sent) or not (``finish(False)``). For a partial range the second item is None.
        """
        plan = self.plan_for(src, source_sha256, secret)
        pieces = iter_fingerprinted(
            src, licensee_id, secret, start=start, end=end, chunk_size=chunk_size, plan=plan
        )
        size = plan.header.file_size
        if start == 0 and (end is None or end == size):
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

    def write(self, piece: bytes) -> None:
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
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queued)
        self._writer: threading.Thread | None = None
        self._failed = False
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            self._fd, self._tmp = fd, Path(tmp)
        except OSError as exc:
            log.warning("fingerprint cache: cannot create a copy next to %s: %s", target, exc)

    def tee(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
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

    def _put(self, item: bytes | None) -> None:
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


def _committed_at_end(pieces: Iterator[bytes], copy: CacheCopy) -> Iterator[bytes]:
    """The pieces; the copy is kept if they all ran, dropped if the consumer stopped early."""
    complete = False
    try:
        yield from pieces
        complete = True
    finally:
        copy.finish(complete)


# --------------------------------------------------------------------------- trace


@dataclass(frozen=True)
class _Evidence:
    """Per marked tensor: which marked elements were usable and their weights ``w r``."""

    name: str
    count: int  # len(plan positions): the sign stream length
    used: np.ndarray  # indices into the plan positions that were usable
    weights: np.ndarray  # float32, w * r at those positions (rescaled by _weigh_tensors)
    signal: float  # sum of w^2 over the used positions


def _index_suspect(paths: Sequence[Path]) -> dict[str, tuple[Path, TensorInfo]]:
    found: dict[str, tuple[Path, TensorInfo]] = {}
    for p in paths:
        for name, info in read_header(p).tensors.items():
            found.setdefault(name, (p, info))
    return found


def _mapped_positions(
    orig: TensorInfo, sus: TensorInfo, positions: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Candidate ways to find the marked elements in a suspect tensor of another shape.

    Returns (kept indices into ``positions``, suspect flat indices) pairs to try.
    """
    everything = np.arange(len(positions))
    options: list[tuple[np.ndarray, np.ndarray]] = []
    if sus.numel == orig.numel:
        options.append((everything, positions))
    if len(orig.shape) == 2 and sus.shape == orig.shape[::-1]:
        rows, cols = np.divmod(positions, orig.shape[1])
        options.append((everything, cols * orig.shape[0] + rows))
    if (
        not options
        and len(sus.shape) == len(orig.shape)
        and sus.shape[1:] == orig.shape[1:]
        and sus.shape[0] > 0
    ):
        # Rows added or removed (a resized vocabulary): the shared leading rows line up.
        row = math.prod(orig.shape[1:])
        keep = np.flatnonzero(positions < min(orig.shape[0], sus.shape[0]) * row)
        options.append((keep, positions[keep]))
    return options


def _collect_evidence(
    original: Path | str | os.PathLike[str],
    suspect: Path | str | os.PathLike[str],
    secret: bytes | str,
    params: FingerprintParams,
) -> tuple[list[_Evidence], int, list[str], list[str]]:
    suspect_index = _index_suspect(safetensors_files(suspect))
    evidence: list[_Evidence] = []
    planned = 0
    missing: list[str] = []
    unusable: list[str] = []
    open_readers: dict[Path, TensorReader] = {}
    try:
        for orig_path in safetensors_files(original):
            with TensorReader(orig_path) as orig_reader:
                plan = plan_fingerprint(orig_reader.header, secret, params)
                for mt in plan.tensors:
                    planned += len(mt.positions)
                    hit = suspect_index.get(mt.name)
                    if hit is None:
                        missing.append(mt.name)
                        continue
                    sus_path, sus_info = hit
                    options = (
                        _mapped_positions(mt.info, sus_info, mt.positions)
                        if sus_info.dtype in FLOAT_DTYPES
                        else []
                    )
                    if not options or len(options[0][0]) == 0:
                        unusable.append(mt.name)
                        continue
                    if sus_path not in open_readers:
                        open_readers[sus_path] = TensorReader(sus_path)
                    w_all = orig_reader.values(mt.name, mt.positions).astype(np.float64)
                    best: tuple[float, np.ndarray, np.ndarray, float] | None = None
                    for kept, sus_positions in options:
                        v = open_readers[sus_path].values(mt.name, sus_positions).astype(np.float64)
                        w = w_all[kept]
                        fit = _alignment(w, v)
                        if best is None or fit > best[0]:
                            best = (fit, kept, _weights(w, v), float(w @ w))
                    assert best is not None
                    evidence.append(
                        _Evidence(mt.name, len(mt.positions), best[1], best[2], best[3])
                    )
    finally:
        for reader in open_readers.values():
            reader.close()
    return _weigh_tensors(evidence), planned, missing, unusable


def _weigh_tensors(evidence: list[_Evidence]) -> list[_Evidence]:
    """Scale each tensor's terms by how much signal it can carry, relative to its residual.

    A tensor's weights ``c = w r`` are scaled to unit norm and then by ``sum(w^2) / |c|``,
    the z-score that tensor would reach if it carried a mark (up to the constant alpha).
    Tensors drowned in unrelated change (re-trained, permuted) thereby count for little.
    The factors depend only on the suspect and the original, never on a candidate's signs,
    so the combined score keeps the exp(-t^2/2) tail bound.
    """
    factors: list[float] = []
    for e in evidence:
        c = e.weights.astype(np.float64)
        q = float(c @ c)
        factors.append(e.signal / q if q > 0 else 0.0)
    top = max(factors, default=0.0)
    if top <= 0.0:
        return [replace(e, weights=np.zeros_like(e.weights)) for e in evidence]
    return [
        replace(e, weights=(e.weights.astype(np.float64) * (f / top)).astype(np.float32))
        for e, f in zip(evidence, factors, strict=True)
    ]


def _alignment(w: np.ndarray, v: np.ndarray) -> float:
    """Correlation of original and suspect values; picks the right layout of a reshaped tensor."""
    ok = np.isfinite(v) & np.isfinite(w)
    if ok.sum() < 2:
        return -math.inf
    a, b = w[ok] - w[ok].mean(), v[ok] - v[ok].mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else 0.0


def _weights(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``w * (v - g w)`` with the least-squares gain ``g`` removed; non-finite terms become 0."""
    ok = np.isfinite(v) & np.isfinite(w)
    ww = float(w[ok] @ w[ok])
    gain = float(w[ok] @ v[ok]) / ww if ww > 0 else 1.0
    r = np.where(ok, v - gain * w, 0.0)
    out = np.where(ok, w * r, 0.0)
    return out.astype(np.float32)


def _bit_sums(packed: np.ndarray, used: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For each row of packed sign bits, the sum of ``weights`` where the bit at ``used`` is 1."""
    n = packed.shape[0]
    total = np.zeros(n, dtype=np.float64)
    block = 8192
    for a in range(0, len(used), block):
        idx = used[a : a + block]
        lo_byte, hi_byte = int(idx[0]) // 8, int(idx[-1]) // 8 + 1
        bits = np.unpackbits(packed[:, lo_byte:hi_byte], axis=1, bitorder="little")
        cols = bits[:, idx - lo_byte * 8].astype(np.float32)
        total += cols @ weights[a : a + block]
    return total


def score_candidates(
    evidence: Sequence[_Evidence], keys: Sequence[bytes], *, batch: int = 256
) -> np.ndarray:
    """z-scores of each candidate key against the collected evidence (0 where there is none)."""
    q = sum(float(np.dot(e.weights.astype(np.float64), e.weights)) for e in evidence)
    scores = np.zeros(len(keys), dtype=np.float64)
    if q <= 0.0:
        return scores
    t = sum(float(e.weights.sum(dtype=np.float64)) for e in evidence)
    for b0 in range(0, len(keys), batch):
        group = keys[b0 : b0 + batch]
        s = np.zeros(len(group), dtype=np.float64)
        for e in evidence:
            if len(e.used) == 0:
                continue
            packed = np.frombuffer(
                b"".join(_sign_bytes(k, e.name, e.count) for k in group), dtype=np.uint8
            ).reshape(len(group), -1)
            s += _bit_sums(packed, e.used, e.weights)
        scores[b0 : b0 + batch] = (2.0 * s - t) / math.sqrt(q)
    return scores


def trace(
    suspect_path: str | os.PathLike[str],
    original_path: str | os.PathLike[str],
    candidates: Iterable[str],
    secret: bytes | str,
    *,
    threshold: float = 8.0,
    params: FingerprintParams | None = None,
) -> TraceResult:
    """Name the candidate whose fingerprint ``suspect_path`` carries, or nobody.

    Both paths may be one safetensors file or a directory of them; tensors are matched by
    name, in any dtype; missing or reshaped tensors reduce the evidence instead of failing.
    A wrong candidate reaches ``threshold`` with probability at most ``exp(-threshold^2/2)``.
    """
    params = params or FingerprintParams()
    ids = list(dict.fromkeys(candidates))
    if not ids:
        raise InvalidInput("trace needs at least one candidate licensee id")
    evidence, planned, missing, unusable = _collect_evidence(
        original_path, suspect_path, secret, params
    )
    keys = [licensee_key(secret, c) for c in ids]
    z = score_candidates(evidence, keys)
    order = np.argsort(-z, kind="stable")
    top = int(order[0])
    second = int(order[1]) if len(ids) > 1 else None
    score = float(z[top])
    runner_up = float(z[second]) if second is not None else 0.0
    bound = min(1.0, len(ids) * math.exp(-0.5 * max(score, 0.0) ** 2))
    named = score >= threshold
    matches = tuple(ids[int(i)] for i in order if z[int(i)] >= threshold)
    used = sum(len(e.used) for e in evidence)
    return TraceResult(
        licensee=ids[top] if named else None,
        confidence=(1.0 - bound) if named else 0.0,
        score=score,
        runner_up=runner_up,
        runner_up_licensee=ids[second] if second is not None else None,
        threshold=threshold,
        false_attribution_bound=bound,
        candidates=len(ids),
        positions_used=used,
        positions_planned=planned,
        matches=matches,
        missing_tensors=tuple(missing),
        unusable_tensors=tuple(unusable),
        details=MappingProxyType(
            {
                "scheme": params.scheme_id,
                "top": [(ids[int(i)], float(z[int(i)])) for i in order[:5]],
                "coverage": used / planned if planned else 0.0,
            }
        ),
    )
