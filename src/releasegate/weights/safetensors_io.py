"""Read the safetensors layout without loading tensors: header, offsets and selected values.

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``) and
then the raw tensor data; ``data_offsets`` are relative to the end of the header.
Everything here validates that layout and raises :class:`releasegate.errors.InvalidInput`
with a sentence saying what is wrong, so a corrupt upload never reaches the numeric code.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from releasegate.errors import InvalidInput

# safetensors itself refuses headers above 100 MB; so do we.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPE_SIZES: Mapping[str, int] = MappingProxyType(
    {
        "BOOL": 1,
        "U8": 1,
        "I8": 1,
        "F8_E4M3": 1,
        "F8_E5M2": 1,
        "U16": 2,
        "I16": 2,
        "F16": 2,
        "BF16": 2,
        "U32": 4,
        "I32": 4,
        "F32": 4,
        "U64": 8,
        "I64": 8,
        "F64": 8,
    }
)

# Float dtypes that can be read as numbers (and, except F64, carry a fingerprint).
FLOAT_DTYPES: frozenset[str] = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry: ``start``/``end`` are absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed, validated header of one safetensors file."""

    header_len: int
    file_size: int
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    def ordered(self) -> list[TensorInfo]:
        """Tensors in file order (by start offset)."""
        return sorted(self.tensors.values(), key=lambda t: (t.start, t.name))


def _bad(path: str, problem: str) -> InvalidInput:
    return InvalidInput(
        f"{path} is not a valid safetensors file: {problem}",
        code="invalid_safetensors",
        details={"path": path},
    )


def parse_header(raw: bytes, *, file_size: int, source: str = "<bytes>") -> SafetensorsHeader:
    """Validate ``raw`` (the first bytes of a file, at least 8 + header length) into a header.

    ``file_size`` is the total size of the file, used to check that every tensor lies
    inside it. Raises InvalidInput naming ``source`` on any inconsistency.
    """
    if file_size < 8 or len(raw) < 8:
        raise _bad(source, f"it is {file_size} bytes long, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n < 2 or n > MAX_HEADER_BYTES:
        raise _bad(source, f"the header length field says {n} bytes (allowed: 2..{MAX_HEADER_BYTES})")
    if 8 + n > file_size:
        raise _bad(source, f"the header length field says {n} bytes but the file has only {file_size - 8} after it (truncated?)")
    if len(raw) < 8 + n:
        raise _bad(source, "the header is incomplete")
    try:
        doc = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(source, f"the header is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _bad(source, "the header is JSON but not an object")

    data_size = file_size - 8 - n
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
            ):
                raise _bad(source, "__metadata__ must map strings to strings")
            metadata = dict(entry)
            continue
        if not isinstance(entry, dict):
            raise _bad(source, f"tensor {name!r} is not an object")
        dtype = entry.get("dtype")
        shape = entry.get("shape")
        offsets = entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise _bad(source, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _bad(source, f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise _bad(source, f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise _bad(source, f"tensor {name!r} has data_offsets {offsets} that go backwards")
        if end > data_size:
            raise _bad(
                source,
                f"tensor {name!r} ends at data offset {end} but the file holds only "
                f"{data_size} data bytes (truncated?)",
            )
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise _bad(
                source,
                f"tensor {name!r} spans {end - begin} bytes but dtype {dtype} and shape "
                f"{shape} need {expected}",
            )
        tensors[name] = TensorInfo(name, dtype, tuple(shape), 8 + n + begin, 8 + n + end)

    previous: TensorInfo | None = None
    for info in sorted(tensors.values(), key=lambda t: t.start):
        if previous is not None and info.start < previous.end and info.start != info.end:
            raise _bad(source, f"tensors {previous.name!r} and {info.name!r} overlap")
        if info.start != info.end:
            previous = info
    return SafetensorsHeader(
        header_len=n,
        file_size=file_size,
        tensors=MappingProxyType(tensors),
        metadata=MappingProxyType(metadata),
    )


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at ``path``."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if 2 <= n <= MAX_HEADER_BYTES and 8 + n <= size:
                    head += f.read(n)
    except IsADirectoryError:
        raise _bad(str(p), "it is a directory") from None
    except FileNotFoundError:
        raise InvalidInput(f"{p} does not exist", code="invalid_safetensors") from None
    return parse_header(head, file_size=size, source=str(p))


def safetensors_files(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` itself if it is a file, else the ``*.safetensors`` files of the directory, sorted."""
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.rglob("*.safetensors") if q.is_file())
        if not files:
            raise InvalidInput(f"{p} holds no .safetensors files", code="invalid_safetensors")
        return files
    if not p.exists():
        raise InvalidInput(f"{p} does not exist", code="invalid_safetensors")
    return [p]


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bit patterns (uint16) to float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 bit patterns (uint16), round-to-nearest-even.

    Non-finite inputs keep their class (NaN stays NaN, inf stays inf).
    """
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    out = rounded.astype(np.uint16)
    nonfinite = (u & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    if nonfinite.any():
        # Truncate instead of rounding so a NaN payload cannot carry into an infinity;
        # set the quiet bit so a NaN whose payload lived in the low half stays a NaN.
        raw = u[nonfinite]
        high = (raw >> np.uint32(16)).astype(np.uint16)
        is_nan = (raw & np.uint32(0x007FFFFF)) != 0
        high[is_nan] |= np.uint16(0x0040)
        out[nonfinite] = high
    return out


def _numpy_dtype(dtype: str) -> np.dtype[np.generic]:
    return {
        "F16": np.dtype("<f2"),
        "BF16": np.dtype("<u2"),
        "F32": np.dtype("<f4"),
        "F64": np.dtype("<f8"),
    }[dtype]


def decode_float(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Numbers (float32, or float64 for F64) from raw elements of a float safetensors dtype."""
    if dtype == "BF16":
        return bf16_to_f32(raw)
    if dtype == "F64":
        return raw.astype(np.float64)
    return raw.astype(np.float32)


class TensorReader:
    """Random access to the float tensors of one safetensors file through a read-only mmap.

    Use as a context manager; values are copied out, so nothing outlives ``close()``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.header = read_header(self.path)
        self._file = self.path.open("rb")
        self._map: mmap.mmap | None = (
            mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            if self.header.file_size > 0
            else None
        )

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self._file.close()

    def _raw(self, info: TensorInfo) -> np.ndarray:
        if info.dtype not in FLOAT_DTYPES:
            raise InvalidInput(
                f"tensor {info.name!r} in {self.path} has dtype {info.dtype}, not a float dtype",
                code="invalid_safetensors",
            )
        assert self._map is not None
        return np.frombuffer(
            self._map, dtype=_numpy_dtype(info.dtype), count=info.numel, offset=info.start
        )

    def values(self, name: str, positions: np.ndarray | None = None) -> np.ndarray:
        """Tensor ``name`` flattened (row-major) as float32/float64, or only at ``positions``."""
        info = self.header.tensors[name]
        raw = self._raw(info)
        picked = raw if positions is None else raw[positions]
        return decode_float(picked, info.dtype)

    def iter_float_tensors(self) -> Iterator[tuple[TensorInfo, np.ndarray]]:
        """Every float tensor with its values reshaped to its shape, in file order."""
        for info in self.header.ordered():
            if info.dtype in FLOAT_DTYPES:
                yield info, self.values(info.name).reshape(info.shape)


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, tuple[str, Sequence[int], bytes]],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write raw tensors ``{name: (dtype, shape, little-endian bytes)}`` as a safetensors file.

    Tensors are laid out in the given order; the header is padded with spaces to a multiple of
    8 bytes, as the reference implementation does. Lets callers write BF16, which numpy lacks.
    """
    doc: dict[str, Any] = {}
    if metadata:
        doc["__metadata__"] = dict(metadata)
    offset = 0
    for name, (dtype, shape, raw) in tensors.items():
        if dtype not in DTYPE_SIZES:
            raise InvalidInput(f"tensor {name!r}: unknown dtype {dtype!r}")
        if len(raw) != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise InvalidInput(f"tensor {name!r}: {len(raw)} bytes do not fit {dtype}{list(shape)}")
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    head = json.dumps(doc, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for _, _, raw in tensors.values():
            f.write(raw)
