"""Tracing a leaked copy back to a licensee: collect the evidence, score every candidate.

The reasoning and the tail bound are in the docstring of :mod:`releasegate.weights.fingerprint`
(and docs/fingerprinting.md), which re-exports the names defined here. Its functions are looked
up on that module at call time, so anything that replaces one there is seen here too. The
service-level trace (audit, candidates from the store) is :mod:`releasegate.weights.tracing`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from releasegate.errors import InvalidInput
from releasegate.weights import fingerprint as scheme
from releasegate.weights.fingerprint import FingerprintParams, _sign_bytes
from releasegate.weights.safetensors_io import (
    FLOAT_DTYPES,
    TensorInfo,
    TensorReader,
    read_header,
    safetensors_files,
)


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
                plan = scheme.plan_fingerprint(orig_reader.header, secret, params)
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
    keys = [scheme.licensee_key(secret, c) for c in ids]
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
