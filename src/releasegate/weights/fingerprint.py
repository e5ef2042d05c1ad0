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

import hashlib
import hmac
import importlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from releasegate.errors import InvalidInput
from releasegate.weights.safetensors_io import (
    FLOAT_DTYPES,
    SafetensorsHeader,
    TensorInfo,
    bf16_to_f32,
    f32_to_bf16,
    read_header,
)

if TYPE_CHECKING:
    from releasegate.weights.fingerprint_cache import CacheCopy as CacheCopy
    from releasegate.weights.fingerprint_cache import FingerprintCache as FingerprintCache
    from releasegate.weights.fingerprint_trace import TraceResult as TraceResult
    from releasegate.weights.fingerprint_trace import score_candidates as score_candidates
    from releasegate.weights.fingerprint_trace import trace as trace

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
) -> Iterator[memoryview]:
    """Yield bytes ``[start, end)`` of ``licensee_id``'s fingerprinted copy of ``path``.

    Each piece is a read-only view of a buffer of its own (never reused), so a consumer may
    keep it. Memory stays within a few ``chunk_size`` buffers. The output of any range equals
    the same slice of the whole output, and the total size equals the source size.
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
) -> Iterator[memoryview]:
    with path.open("rb", buffering=0) as f:
        if os.fstat(f.fileno()).st_size != size:
            raise InvalidInput(f"{path} changed size while being fingerprinted")
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
            # A fresh buffer per piece, marked in place and handed on as a view: one copy per byte,
            # as for a plain file (``pread``). Consumers may keep a piece (asyncio transports buffer
            # without copying), and nothing here writes to a buffer once its piece is yielded.
            # ``np.empty`` does not zero-fill, and malloc reuses the freed piece's memory.
            buf = np.empty(hi - lo, dtype=np.uint8)
            if os.preadv(f.fileno(), [memoryview(buf)], lo) != len(buf):
                raise InvalidInput(f"{path} was truncated while being fingerprinted")
            marker.apply(buf, lo)
            yield memoryview(buf).toreadonly()[pos - lo : q - lo]
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


# --------------------------------------------------------------------------- re-exports

# The cache and the tracer live in their own modules (fingerprint_cache, fingerprint_trace) and
# import this one, so their names are re-exported lazily (PEP 562) rather than by an import at
# the end of this module: either side can then be imported first without a circular import.
_MOVED = MappingProxyType(
    {
        **dict.fromkeys(
            (
                "FingerprintCache",
                "CacheCopy",
                "_read_range",
                "_DirectWriter",
                "_write_fully",
                "_committed_at_end",
            ),
            "releasegate.weights.fingerprint_cache",
        ),
        **dict.fromkeys(
            (
                "TraceResult",
                "score_candidates",
                "trace",
                "_Evidence",
                "_index_suspect",
                "_mapped_positions",
                "_collect_evidence",
                "_weigh_tensors",
                "_alignment",
                "_weights",
                "_bit_sums",
            ),
            "releasegate.weights.fingerprint_trace",
        ),
    }
)


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
