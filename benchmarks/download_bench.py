"""Weights download benchmark: releasegate's Hugging Face-compatible endpoint against nginx serving the same file.

Run: ``python benchmarks/download_bench.py`` (about 2 minutes; ``--size-mb 128 --rounds 2`` for a
short run). Needs ``nginx`` and ``curl`` (``apt-get install -y nginx curl``).

It writes a synthetic safetensors file (F32 and F16 matrices, ``safetensors.numpy.save_file``),
registers it twice in a fresh releasegate store — as ``model.safetensors`` (fingerprinted per
licensee by the plan) and as ``model.bin`` (same bytes, never fingerprinted) — opens the weights
stage, admits licensees (auto-approved request + accepted terms), runs ``releasegate serve`` on
loopback, and serves the same file from nginx (sendfile). Then, interleaved round by round, curl
downloads to /dev/null:

* nginx: the static file;
* plain: ``model.bin`` through resolve -> 302 -> signed URL;
* fingerprinted, first download: ``model.safetensors`` for a licensee who never downloaded it
  (the copy is produced while it streams);
* fingerprinted, repeat: the same licensee again (produced again from the source with the
  cached plan; no per-licensee copy is kept without nginx in front).

Prints MB/s (10^6 bytes per second) and ratios to nginx; writes JSON to
``benchmarks/results/download-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BENCH_DIR,
    HOST,
    BenchError,
    Servers,
    code_version,
    free_port,
    loadavg,
    machine_summary,
    median,
    require_tool,
    section,
    start,
    start_nginx,
    table,
    wait_http,
)

MODEL = "acme/atlas-8b"
PLAN = """
model: acme/atlas-8b
versions:
  v1: {weights: {path: artifacts/v1}}
use_cases: {chat: {description: Chat with customers.}}
tiers: {internal: {}}
terms:
  atlas-license: {file: terms/license.md}
stages:
  - {name: internal, channels: [api], audience: {tiers: [internal]}}
  - name: open-weights
    channels: [api, weights]
    audience: {everyone: true}
    weights:
      terms: atlas-license
      form:
        - {name: organisation, type: text, required: true}
        - {name: country, type: country, required: true}
      vetting:
        auto_approve: {email_domains: [".edu"]}
        otherwise: manual
      grant_days: 30
      fingerprint: true
"""
TERMS = "# Atlas license\n\nResearch and commercial use; no redistribution of the weights.\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=512, help="size of the synthetic safetensors file (MiB, default 512)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p.parse_args(argv)


def write_model(path: Path, size_mb: int) -> dict[str, Any]:
    """Half the bytes in F32, half in F16 matrices of 2048 columns; returns a summary."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1234)
    cols = 2048
    half = size_mb * 1024 * 1024 // 2
    rows32 = max(1, half // (cols * 4) // 8)
    rows16 = max(1, half // (cols * 2) // 8)
    tensors: dict[str, Any] = {}
    for i in range(8):
        tensors[f"model.layers.{i}.mlp.weight"] = (rng.standard_normal((rows32, cols), dtype=np.float32) * 0.02)
        tensors[f"model.layers.{i}.attn.weight"] = (rng.standard_normal((rows16, cols), dtype=np.float32) * 0.02
                                                    ).astype(np.float16)
    tensors["model.norm.bias"] = np.zeros(cols, dtype=np.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return {"bytes": path.stat().st_size, "tensors": len(tensors), "dtypes": ["F32", "F16"]}


def prepare_store(data_dir: Path, plan_dir: Path, licensees: int) -> dict[str, Any]:
    """Apply the plan, register v1, publish terms, open the weights stage, admit ``licensees`` licensees."""
    from releasegate.api.app import build_context
    from releasegate.plan.loader import load_plan_file
    from releasegate.services import plans, principals, rollouts
    from releasegate.services.context import Actor
    from releasegate.settings import Settings
    from releasegate.store.migrate import ensure_schema
    from releasegate.weights import access, registry, terms

    admin = Actor(name="bench-admin", role="admin", email="admin@bench.example")
    import releasegate.store.all_models  # noqa: F401
    from releasegate.store.base import Base

    ctx = build_context(Settings(data_dir=data_dir))
    # The migrations first (what `releasegate serve` checks for), then any table they do not have yet.
    ensure_schema(ctx.db.engine)
    Base.metadata.create_all(ctx.db.engine)
    try:
        plans.apply(ctx, admin, load_plan_file(plan_dir / "plan.yaml"))
        reg = registry.register(ctx, admin, MODEL, "v1")
        terms.publish(ctx, admin, MODEL)
        rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="benchmark: internal")
        rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="benchmark: open the weights")
        tokens: list[str] = []
        for i in range(licensees):
            t = principals.create(ctx, admin, name=f"bench-licensee-{i}", role="licensee", email=f"l{i}@uni.edu")
            with ctx.db.read() as session:
                actor = principals.authenticate(session, t["token"])
            r = access.submit(ctx, actor, MODEL, fields={"organisation": "Uni", "country": "US"},
                              declared_use="download benchmark")
            if r["status"] != "approved":
                raise BenchError(f"licensee request was not auto-approved: {r}")
            terms.accept(ctx, actor, MODEL)
            tokens.append(t["token"])
        return {"commit": reg["commit"], "tokens": tokens}
    finally:
        ctx.db.dispose()


def curl(url: str, *, token: str | None = None) -> dict[str, Any]:
    """Download ``url`` to /dev/null following redirects; bytes, seconds, MB/s as curl measured them."""
    argv = ["curl", "-sS", "-L", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", url]
    if token:
        argv[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise BenchError(f"curl {url} failed: {out.stderr.strip()}")
    code, size, seconds = out.stdout.split()
    if code != "200":
        raise BenchError(f"curl {url} answered {code}")
    return {"bytes": int(size), "seconds": float(seconds), "mb_s": int(size) / float(seconds) / 1e6}


def sha256_of_download(url: str, token: str) -> str:
    """sha256 of what a licensee receives (to check fingerprinting really happened)."""
    proc = subprocess.Popen(["curl", "-sS", "-L", "-H", f"Authorization: Bearer {token}", url], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    h = hashlib.sha256()
    while chunk := proc.stdout.read(1 << 20):
        h.update(chunk)
    proc.wait()
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_tool("curl", "install it with `apt-get install -y curl`")
    started = dt.datetime.now(dt.UTC)
    workdir = Path(tempfile.mkdtemp(prefix="rg-download-bench-"))
    servers = Servers()
    result: dict[str, Any] = {"benchmark": "download", "started_at": started.isoformat(timespec="seconds"),
                              "machine": machine_summary(), "code": code_version(), "settings": {k: str(v) for k, v in vars(args).items()}}
    try:
        with section(f"writing a {args.size_mb} MiB safetensors file and preparing the store"):
            plan_dir = workdir / "plan"
            weights = plan_dir / "artifacts" / "v1"
            weights.mkdir(parents=True)
            (plan_dir / "terms").mkdir()
            (plan_dir / "plan.yaml").write_text(PLAN)
            (plan_dir / "terms" / "license.md").write_text(TERMS)
            result["file"] = write_model(weights / "model.safetensors", args.size_mb)
            os.link(weights / "model.safetensors", weights / "model.bin")  # same bytes, never fingerprinted
            data_dir = workdir / "data"
            store = prepare_store(data_dir, plan_dir, licensees=args.rounds + 1)
            print(f"   {result['file']['bytes'] / 1e6:.1f} MB, commit {store['commit']}", flush=True)
        with section("starting nginx (static, sendfile) and `releasegate serve`"):
            nginx_port = free_port()
            block = f"""
    server {{
        listen {HOST}:{nginx_port};
        location /files/ {{ alias {weights}/; }}
    }}"""
            servers.add(start_nginx("nginx-static", workdir, block, workers=1, probe_port=nginx_port))
            rg_port = free_port()
            rg = servers.add(start("releasegate-serve", ["releasegate", "--data-dir", str(data_dir), "serve", "--host",
                                                         HOST, "--port", str(rg_port), "--log-level", "warning"],
                                   workdir=workdir, env={"RELEASEGATE_PUBLIC_URL": f"http://{HOST}:{rg_port}"}))
            wait_http(rg, rg_port, path="/healthz", timeout=90)
        nginx_url = f"http://{HOST}:{nginx_port}/files/model.safetensors"
        base = f"http://{HOST}:{rg_port}/{MODEL}/resolve/main"
        tokens = store["tokens"]
        with section("checks: plain bytes equal the file, fingerprinted bytes differ"):
            source = hashlib.sha256((weights / "model.safetensors").read_bytes()).hexdigest()
            plain_sha = sha256_of_download(f"{base}/model.bin", tokens[-1])
            fp_sha = sha256_of_download(f"{base}/model.safetensors", tokens[-1])
            fp_again = sha256_of_download(f"{base}/model.safetensors", tokens[-1])  # the same licensee again: must equal the first
            result["checks"] = {"source_sha256": source, "plain_equals_source": plain_sha == source,
                                "fingerprinted_differs": fp_sha != source, "repeat_equals_first": fp_again == fp_sha}
            if not all(v for k, v in result["checks"].items() if k != "source_sha256"):
                raise BenchError(f"the downloads are not what they should be: {result['checks']}")
            print(f"   {result['checks']}", flush=True)
            for name, url, tok in (("nginx", nginx_url, None), ("plain", f"{base}/model.bin", tokens[-1])):
                curl(url, token=tok)  # warm the page cache and the connection path
                print(f"   warm-up {name} done", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("nginx", "plain", "fp_first", "fp_repeat")}
        with section(f"downloads: {args.rounds} interleaved rounds"):
            for r in range(args.rounds):
                tok = tokens[r]
                for kind, url, t in (("nginx", nginx_url, None), ("plain", f"{base}/model.bin", tok),
                                     ("fp_first", f"{base}/model.safetensors", tok),
                                     ("fp_repeat", f"{base}/model.safetensors", tok)):
                    res = curl(url, token=t)
                    if res["bytes"] != result["file"]["bytes"]:
                        raise BenchError(f"{kind}: got {res['bytes']} bytes, expected {result['file']['bytes']}")
                    runs[kind].append(res)
                    print(f"   round {r + 1}: {kind:<10} {res['mb_s']:8.1f} MB/s  ({res['seconds']:.2f}s, load avg "
                          f"{loadavg()})", flush=True)
        report(result, runs)
    finally:
        servers.stop_all()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"download-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten: {path}")
    return 0


LABELS = {
    "nginx": "nginx static file (sendfile)",
    "plain": "releasegate, plain (model.bin)",
    "fp_first": "releasegate, fingerprinted, first download",
    "fp_repeat": "releasegate, fingerprinted, repeat download",
}
TARGETS = {"plain": (0.9, ">= 0.9x nginx"), "fp_first": (0.5, ">= 0.5x nginx"), "fp_repeat": (None, "as fast as plain")}


def report(result: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> None:
    med = {k: median([r["mb_s"] for r in v]) for k, v in runs.items()}

    def ratio(a: str, b: str) -> float:
        # Median of per-round ratios: the two downloads of a round ran seconds apart.
        return median([x["mb_s"] / y["mb_s"] for x, y in zip(runs[a], runs[b], strict=True)])

    rows = []
    for kind, values in runs.items():
        target = TARGETS.get(kind)
        x_nginx = ratio(kind, "nginx")
        met: bool | None = None
        if target and target[0] is not None:
            met = x_nginx >= target[0]
        elif kind == "fp_repeat":
            met = ratio(kind, "plain") >= 0.9  # "as fast as plain", within this machine's noise
        rows.append({"download": LABELS[kind], "mb_s": med[kind], "min_mb_s": min(r["mb_s"] for r in values),
                     "max_mb_s": max(r["mb_s"] for r in values), "x_nginx": x_nginx,
                     "x_plain": ratio(kind, "plain"), "target": target[1] if target else "",
                     "met": "-" if met is None else ("met" if met else "NOT met"), "runs": values})
    print("\n" + "=" * 100)
    print(f"download benchmark, {result['started_at']}, {result['file']['bytes'] / 1e6:.0f} MB safetensors file, "
          f"{result['machine'].get('cores')} cores, shared machine: ratios are the numbers to read")
    print(table(rows, [("download", "download"), ("mb_s", "MB/s (median)"), ("min_mb_s", "min"), ("max_mb_s", "max"),
                       ("x_nginx", "x nginx"), ("x_plain", "x plain"), ("target", "target"), ("met", "")]))
    print("  ratios are medians of per-round ratios; repeat 'as fast as plain' is counted as met at >= 0.9x plain")
    result["table"] = rows


if __name__ == "__main__":
    sys.exit(main())
