"""Gateway benchmark: releasegate's gateway against direct, nginx, a bare Python proxy and LiteLLM, in one run.

Run: ``python benchmarks/gateway_bench.py`` (about 20 minutes, 10 of them the memory soak) or
``python benchmarks/gateway_bench.py --quick`` (about 3 minutes). Needs ``nginx`` and ``wrk``
(``apt-get install -y nginx wrk``), Redis on 127.0.0.1:6379 for the shared limiter (or
``--no-redis``), and for the LiteLLM row a separate venv (``python -m venv /opt/litellm-venv &&
/opt/litellm-venv/bin/pip install 'litellm[proxy]'``); without it that row says "not measured".

Every contender forwards to the same nginx upstream returning a fixed chat completion; every
number is measured in this run, side by side, and the ratios are taken between them. Prints one
table and writes it as JSON to ``benchmarks/results/gateway-<timestamp>.json``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _contenders as cs
import _rg_world
from _harness import (
    BENCH_DIR,
    HOST,
    BenchError,
    KeepAliveClient,
    Servers,
    code_version,
    cold_probe,
    descendants,
    fsync_probe,
    http_request,
    loadavg,
    machine_summary,
    median,
    percentile,
    rss_kib,
    run_wrk,
    section,
    slope_per_minute,
    table,
    wrk_script,
)
from _inprocess import decision_timings

SETTLE_SECONDS = 2.0  # idle time before each wrk run of the throughput rounds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run (~3 min): 1 wrk round of 5 s, 500 sequential "
                   "requests, 1-minute soak")
    p.add_argument("--workers", type=int, default=2, help="worker processes of every server (default 2)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 10, quick 5)")
    p.add_argument("--rounds", type=int, help="interleaved wrk rounds per contender (default 3, quick 1)")
    p.add_argument("--requests", type=int, help="sequential requests per contender (default 2000, quick 500)")
    p.add_argument("--soak-minutes", type=float, help="memory soak under load (default 10, quick 1; 0 skips)")
    p.add_argument("--decision-iterations", type=int, default=100_000)
    p.add_argument("--litellm-venv", type=Path, default=Path("/opt/litellm-venv"))
    p.add_argument("--no-litellm", action="store_true", help="do not start LiteLLM (its row says not measured)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis for the shared rate limiter")
    p.add_argument("--no-redis", action="store_true", help="in-process limiter in each worker instead of Redis")
    p.add_argument("--no-tmpfs-row", action="store_true", help="skip the diagnostic gateway row whose request log "
                   "is on tmpfs (/dev/shm), which separates the disk's fsync cost from the gateway's own")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    a = p.parse_args(argv)
    a.duration = a.duration or (5.0 if a.quick else 10.0)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.requests = a.requests or (500 if a.quick else 2000)
    if a.soak_minutes is None:
        a.soak_minutes = 1.0 if a.quick else 10.0
    return a


# ------------------------------------------------------------------------------------------ measurements


def _client(c: cs.Contender, *, stream: bool = False) -> KeepAliveClient:
    return KeepAliveClient(c.port, http_request("POST", c.path, port=c.port, headers=c.headers(),
                                                body=c.body(stream=stream)))


def _once(client: KeepAliveClient, *, first_event: bool = False) -> tuple[int, float, float | None]:
    try:
        return client.once(first_event=first_event)
    except (ConnectionError, OSError):  # the server closed an idle keep-alive connection: reconnect, untimed
        client.close()
        return client.once(first_event=first_event)


def smoke(c: cs.Contender) -> None:
    """One request; raise BenchError unless it is a 200 chat completion."""
    conn = http.client.HTTPConnection(HOST, c.port, timeout=60)
    try:
        conn.request("POST", c.path, body=c.body(), headers=c.headers())
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        raise BenchError(f"{c.name} did not answer: {exc}") from None
    finally:
        conn.close()
    if response.status != 200 or b'"choices"' not in body:
        raise BenchError(f"{c.name} answered {response.status}: {body[:400]!r}")


def sequential(contenders: list[cs.Contender], n: int, *, warmup: int = 200, block: int = 100) -> dict[str, list[float]]:
    """Seconds per request over one keep-alive connection each, interleaved in blocks of ``block``."""
    clients = {c.name: _client(c) for c in contenders}
    out: dict[str, list[float]] = {c.name: [] for c in contenders}
    bad: dict[str, int] = {c.name: 0 for c in contenders}
    try:
        for c in contenders:
            for _ in range(warmup):
                _once(clients[c.name])
        done = 0
        while done < n:
            k = min(block, n - done)
            for c in contenders:
                cl = clients[c.name]
                for _ in range(k):
                    status, seconds, _ = _once(cl)
                    if status != 200:
                        bad[c.name] += 1
                    out[c.name].append(seconds)
            done += k
    finally:
        for cl in clients.values():
            cl.close()
    for name, count in bad.items():
        if count:
            print(f"   warning: {name}: {count} non-200 answers in the sequential run", flush=True)
    return out


def streaming_ttft(contenders: list[cs.Contender], n: int) -> dict[str, list[float]]:
    """Seconds to the first streamed event with text, per contender, interleaved in blocks of 20."""
    clients = {c.name: _client(c, stream=True) for c in contenders}
    out: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for cl in clients.values():
            for _ in range(20):
                _once(cl, first_event=True)
        for _ in range(max(1, n // 20)):
            for name, cl in clients.items():
                for _ in range(20):
                    status, _, ttft = _once(cl, first_event=True)
                    if status == 200 and ttft is not None:
                        out[name].append(ttft)
    finally:
        for cl in clients.values():
            cl.close()
    return out


def throughput(contenders: list[cs.Contender], workdir: Path, *, rounds: int, duration: float) -> dict[str, list[Any]]:
    scripts = {c.name: wrk_script(workdir, f"wrk-{i}", method="POST", headers=c.headers(), body=c.body().decode())
               for i, c in enumerate(contenders)}
    out: dict[str, list[Any]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        # Each round starts one contender later, and each run waits SETTLE_SECONDS first (a server
        # may keep a CPU busy after its load stops): no contender always runs right after the same one.
        for c in contenders[r % len(contenders):] + contenders[: r % len(contenders)]:
            time.sleep(SETTLE_SECONDS)
            res = run_wrk(c.url, scripts[c.name], duration=duration)
            out[c.name].append(res)
            print(f"   round {r + 1}: {c.name:<34} {res.rps:>9.0f} req/s  p50 {res.p50_ms:7.2f} ms  "
                  f"p99 {res.p99_ms:7.2f} ms  errors {res.errors}  (load avg {loadavg()})", flush=True)
    return out


def authz_rps(c: cs.Contender, workdir: Path, duration: float) -> Any:
    headers = {"Authorization": f"Bearer {c.token}", "X-Original-URI": "/v1/chat/completions",
               "X-Original-Method": "POST", "X-Releasegate-Model": c.model}
    script = wrk_script(workdir, "wrk-authz", method="GET", headers=headers, body=None)
    check = KeepAliveClient(c.port, http_request("GET", "/authz/v1/check", port=c.port, headers=headers))
    try:
        status, _, _ = check.once()
    finally:
        check.close()
    if status != 200:
        raise BenchError(f"/authz/v1/check answered {status}")
    return run_wrk(f"http://{HOST}:{c.port}/authz/v1/check", script, duration=duration)


def g1_decision_bench(iterations: int) -> dict[str, Any] | str:
    """benchmarks/decision_bench.py (a busy release's snapshot: 2,000 deployers, 4,000 keys), if it runs."""
    path = BENCH_DIR / "decision_bench.py"
    if not path.exists():
        return "not present"
    out = subprocess.run([sys.executable, str(path), "--iterations", str(iterations), "--json"], capture_output=True,
                         text=True, timeout=900)
    try:
        data: dict[str, Any] = json.loads(out.stdout)
    except json.JSONDecodeError:
        return f"failed: {(out.stderr or out.stdout).strip()[-300:]}"
    print(f"   decision_bench.py ({data.get('keys')} keys, {data.get('deployers')} deployers):", flush=True)
    for name, r in data.get("results", {}).items():
        print(f"     {name:<70} p50 {r['p50_us']:>7.2f} us  p99 {r['p99_us']:>7.2f} us", flush=True)
    return data


def refusals(database_url: str) -> list[dict[str, Any]]:
    """What the gateways refused, by replica and reason, from the request log shipped into the store."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT replica, status, reason_code, count(*) FROM request_events "
                "WHERE status IS NOT NULL AND status != 200 GROUP BY replica, status, reason_code ORDER BY 4 DESC"))
            return [{"replica": r[0], "status": r[1], "reason": r[2], "count": r[3]} for r in rows]
    except Exception as exc:  # a diagnostic only: never fail the benchmark over it
        return [{"error": str(exc)[:200]}]
    finally:
        engine.dispose()


def soak(c: cs.Contender, workdir: Path, minutes: float) -> dict[str, Any]:
    """RSS of the gateway's processes every 10 s while wrk keeps 16 connections busy."""
    seconds = max(10.0, minutes * 60)
    script = wrk_script(workdir, "wrk-soak", method="POST", headers=c.headers(), body=c.body().decode())
    root = c.procs[0].pid
    wrk = subprocess.Popen(["wrk", "-c16", "-t2", f"-d{int(seconds)}s", "--latency", "-s", str(script), c.url],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        while True:
            pids = [root, *descendants(root)]
            rss = {pid: rss_kib(pid) for pid in pids}
            samples.append({"t": round(time.monotonic() - t0, 1),
                            "rss_mib": {str(p): round(v / 1024, 1) for p, v in rss.items() if v is not None}})
            if wrk.poll() is not None or time.monotonic() - t0 >= seconds:
                break
            time.sleep(min(10.0, max(0.1, seconds - (time.monotonic() - t0))))
        output, _ = wrk.communicate(timeout=seconds + 60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
    totals = [(s["t"], sum(s["rss_mib"].values())) for s in samples]
    workers = {p for s in samples for p in s["rss_mib"]} - {str(root)}
    per_worker = {p: [(s["t"], s["rss_mib"][p]) for s in samples if p in s["rss_mib"]] for p in sorted(workers)}
    # Slope over the second half: the first minutes include warm-up (caches, pools, log buffers).
    half = [pt for pt in totals if pt[0] >= totals[-1][0] / 2]
    rps = next((float(line.split()[1]) for line in output.splitlines() if line.startswith("Requests/sec:")), None)
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors += sum(int(x) for x in m.groups())
    return {
        "minutes": round(seconds / 60, 2), "samples": len(samples), "rps_during_soak": rps, "errors_during_soak": errors,
        "total_start_mib": totals[0][1], "total_end_mib": totals[-1][1], "total_max_mib": max(v for _, v in totals),
        "slope_mib_per_min": round(slope_per_minute(totals), 3),
        "slope_second_half_mib_per_min": round(slope_per_minute(half), 3),
        "per_worker": {p: {"start": pts[0][1], "end": pts[-1][1], "max": max(v for _, v in pts),
                           "slope_mib_per_min": round(slope_per_minute(pts), 3)} for p, pts in per_worker.items()},
        "series": samples,
    }


# ------------------------------------------------------------------------------------------ the run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    workdir = Path(tempfile.mkdtemp(prefix="rg-gateway-bench-"))
    cleanup: list[Path] = []
    servers = Servers()
    result: dict[str, Any] = {"benchmark": "gateway", "started_at": started.isoformat(timespec="seconds"),
                              "machine": machine_summary(), "code": code_version(), "settings": {k: str(v) for k, v in vars(args).items()},
                              "notes": []}
    notes: list[str] = result["notes"]
    try:
        with section("starting servers"):
            up_port = cs.start_upstream(servers, workdir, workers=args.workers)
            direct = cs.Contender("direct (nginx upstream)", up_port, "atlas-8b-v1", cs.UPSTREAM_KEY,
                                  note=f"nginx {args.workers} workers, fixed body")
            stream_port = cs.start_stream_upstream(servers, workdir, chunk_delay=0.002, chunks=10)
            world = _rg_world.prepare(workdir / "store", v1_upstream=f"http://{HOST}:{up_port}/v1",
                                      v2_upstream=f"http://{HOST}:{stream_port}/v1")
            redis_url = None if args.no_redis else args.redis_url
            contenders = [direct,
                          cs.start_nginx_proxy(servers, workdir, up_port, workers=args.workers),
                          cs.start_bare_proxy(servers, workdir, up_port, workers=args.workers)]
            litellm: cs.Contender | None = None
            if args.no_litellm:
                result["litellm"] = "not measured (--no-litellm)"
            else:
                try:
                    litellm = cs.start_litellm(servers, workdir, up_port, workers=args.workers, venv=args.litellm_venv)
                    smoke(litellm)
                    contenders.append(litellm)
                except BenchError as exc:
                    result["litellm"] = f"not measured ({str(exc).splitlines()[0][:300]})"
                    litellm = None
            gateway = cs.start_releasegate(servers, workdir, world, workers=args.workers, redis_url=redis_url,
                                           label=f"releasegate, {args.workers} workers")
            contenders.append(gateway)
            cli = cs.start_releasegate(servers, workdir, world, workers=None, redis_url=redis_url, name="releasegate-cli",
                                       label="releasegate gateway (CLI, 1 proc)")
            contenders.append(cli)
            notes.append(f"the row 'releasegate, {args.workers} workers' is `releasegate gateway --workers "
                         f"{args.workers}` (one replica per worker), to match the other contenders' worker count")
            notes.append("store: SQLite; " + ("limiter and change notifications: Redis" if redis_url
                                              else "limiter: in-process per worker, no Redis"))
            shm: cs.Contender | None = None
            if not args.no_tmpfs_row and Path("/dev/shm").is_dir():
                shm_dir = Path(tempfile.mkdtemp(prefix="rg-gateway-bench-", dir="/dev/shm"))
                cleanup.append(shm_dir)
                shm = cs.start_releasegate(servers, workdir, world, workers=args.workers, redis_url=redis_url,
                                           name="releasegate-tmpfs", log_root=shm_dir,
                                           label=f"releasegate, {args.workers}w, log on tmpfs")
                contenders.append(shm)
            result["fsync_disk"] = fsync_probe(workdir)
            print(f"   fdatasync on the request log's disk: {result['fsync_disk']}", flush=True)
            result["cold_probe"] = cold_probe(workdir)
            print(f"   idle penalty (median µs, hot vs after {result['cold_probe']['gap_ms']:g} ms idle): "
                  f"{result['cold_probe']}", flush=True)
            for c in contenders:
                smoke(c)
                print(f"   {c.name:<28} port {c.port:<6} {c.note}", flush=True)
            if litellm is None:
                print(f"   LiteLLM: {result['litellm']}", flush=True)

        with section(f"sequential latency: {args.requests} requests each, one keep-alive connection, interleaved"):
            seq = sequential(contenders, args.requests)
        with section(f"throughput: wrk 16 connections, 2 threads, {args.duration:g}s x {args.rounds} rounds, interleaved"):
            thr = throughput(contenders, workdir, rounds=args.rounds, duration=args.duration)
        with section("streaming: time to first token, direct vs proxies (mock upstream, 10 chunks, 2 ms apart)"):
            sdirect = cs.Contender("direct (mock upstream)", stream_port, "atlas-8b-v2", cs.UPSTREAM_KEY)
            bare = cs.start_bare_proxy(servers, workdir, stream_port, workers=args.workers, name="bare-proxy-stream")
            # The gateway always asks the upstream for a usage chunk; the mock is slower to start such a
            # stream, so "direct + include_usage" is the fair baseline for the gateway rows.
            usage = cs.Contender("direct + include_usage", stream_port, "atlas-8b-v2", cs.UPSTREAM_KEY,
                                 extra={"stream_options": {"include_usage": True}})
            streams = [sdirect, usage,
                       cs.Contender("bare Python ASGI proxy", bare.port, "atlas-8b-v2", cs.UPSTREAM_KEY),
                       cs.Contender(gateway.name, gateway.port, world.model_v2, world.key)]
            if shm is not None:
                streams.append(cs.Contender(shm.name, shm.port, world.model_v2, world.key))
            ttft = streaming_ttft(streams, 300 if args.quick else 1000)
            for name, values in ttft.items():
                print(f"   {name:<34} TTFT p50 {percentile(values, 50) * 1000:7.3f} ms  "
                      f"p99 {percentile(values, 99) * 1000:7.3f} ms  ({len(values)})", flush=True)
        with section(f"in-process access decision: {args.decision_iterations} iterations"):
            decision = decision_timings(world, args.decision_iterations)
            print(f"   this run's store (1 deployer, 1 key), identify+authorize: p50 {decision['p50_us']} us, "
                  f"p99 {decision['p99_us']} us; with body parsing: p50 {decision['with_body_p50_us']} us, "
                  f"p99 {decision['with_body_p99_us']} us", flush=True)
            decision["decision_bench"] = g1_decision_bench(args.decision_iterations)
        with section("decision endpoint /authz/v1/check: `releasegate gateway` (one process), wrk 16 connections"):
            authz = authz_rps(cli, workdir, args.duration)
            print(f"   {authz.rps:.0f} req/s  p50 {authz.p50_ms:.2f} ms  p99 {authz.p99_ms:.2f} ms  errors {authz.errors}")
        mem: dict[str, Any] | None = None
        if args.soak_minutes > 0:
            with section(f"memory soak: {args.soak_minutes:g} min under wrk load, RSS every 10 s"):
                mem = soak(gateway, workdir, args.soak_minutes)
                print(f"   total RSS start {mem['total_start_mib']:.1f} MiB, end {mem['total_end_mib']:.1f}, "
                      f"max {mem['total_max_mib']:.1f}, slope {mem['slope_mib_per_min']:+.2f} MiB/min "
                      f"(second half {mem['slope_second_half_mib_per_min']:+.2f}) at {mem['rps_during_soak']} req/s, "
                      f"{mem['errors_during_soak']} failed requests")
        result["gateway_refusals"] = refusals(world.database_url)
        report(result, contenders, direct, litellm, gateway, seq, thr, ttft, decision, authz, mem)
    finally:
        servers.stop_all()
        for extra in cleanup:
            shutil.rmtree(extra, ignore_errors=True)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gateway-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten: {path}")
    return 0


def report(result: dict[str, Any], contenders: list[cs.Contender], direct: cs.Contender, litellm: cs.Contender | None,
           gateway: cs.Contender, seq: dict[str, list[float]], thr: dict[str, list[Any]], ttft: dict[str, list[float]],
           decision: dict[str, Any], authz: Any, mem: dict[str, Any] | None) -> None:
    rows: list[dict[str, Any]] = []
    med = {name: median([r.rps for r in runs]) for name, runs in thr.items()}

    def ratio(a: str, b: str) -> float:
        # Median of per-round ratios: within a round the two ran minutes apart at most, so the machine's
        # load drifts less between them than between rounds.
        return median([x.rps / y.rps for x, y in zip(thr[a], thr[b], strict=True)])

    nginx_name = next(c.name for c in contenders if c.name.startswith("nginx"))
    d50, d99 = percentile(seq[direct.name], 50) * 1000, percentile(seq[direct.name], 99) * 1000
    for c in contenders:
        runs = thr[c.name]
        s = seq[c.name]
        p50, p99 = percentile(s, 50) * 1000, percentile(s, 99) * 1000
        rows.append({
            "contender": c.name, "rps": med[c.name],
            "x_direct": ratio(c.name, direct.name),
            "x_nginx_proxy": ratio(c.name, nginx_name),
            "x_litellm": ratio(c.name, litellm.name) if litellm else None,
            "load_p50_ms": median([r.p50_ms for r in runs]), "load_p99_ms": median([r.p99_ms for r in runs]),
            "seq_p50_ms": p50, "seq_p99_ms": p99,
            "added_p50_ms": None if c is direct else p50 - d50, "added_p99_ms": None if c is direct else p99 - d99,
            "errors": sum(r.errors for r in runs), "note": c.note,
            "wrk_rounds": [r.as_dict() for r in runs],
        })
    if litellm is None:
        rows.append({"contender": "LiteLLM proxy", "note": result.get("litellm", "not measured")})
    cols = [("contender", "contender"), ("rps", "req/s@16"), ("x_direct", "x direct"), ("x_nginx_proxy", "x nginx-proxy"),
            ("x_litellm", "x LiteLLM"), ("load_p50_ms", "p50 ms@16"), ("load_p99_ms", "p99 ms@16"),
            ("seq_p50_ms", "seq p50 ms"), ("seq_p99_ms", "seq p99 ms"), ("added_p50_ms", "added p50 ms"),
            ("added_p99_ms", "added p99 ms"), ("errors", "errors")]
    print("\n" + "=" * 100)
    print(f"gateway benchmark, {result['started_at']}, {result['machine'].get('cores')} cores "
          f"({result['machine'].get('cpu', '?')}), shared machine: ratios are the numbers to read")
    print(table(rows, cols))
    for r in rows:
        print(f"  {r['contender']}: {r.get('note', '')}")
    t_direct = ttft[direct_stream_name(ttft)]
    t_usage = ttft.get("direct + include_usage", [])
    streams: dict[str, dict[str, Any]] = {}
    for name, values in ttft.items():
        if name.startswith("direct"):
            continue
        st = {"p50_ms": percentile(values, 50) * 1000, "p99_ms": percentile(values, 99) * 1000, "samples": len(values)}
        st["added_p50_ms"] = st["p50_ms"] - percentile(t_direct, 50) * 1000
        st["added_p99_ms"] = st["p99_ms"] - percentile(t_direct, 99) * 1000
        if t_usage:
            st["added_p50_vs_include_usage_ms"] = st["p50_ms"] - percentile(t_usage, 50) * 1000
        streams[name] = st
    stream = {"direct_p50_ms": percentile(t_direct, 50) * 1000, "direct_p99_ms": percentile(t_direct, 99) * 1000,
              "direct_samples": len(t_direct), "through": streams}
    if t_usage:
        stream["direct_include_usage_p50_ms"] = percentile(t_usage, 50) * 1000
        stream["direct_include_usage_p99_ms"] = percentile(t_usage, 99) * 1000
    gw = next(r for r in rows if r["contender"] == gateway.name)
    lite = next((r for r in rows if litellm and r["contender"] == litellm.name), None)
    print("\ntargets")
    checks = [
        ("added latency p50 (sequential)", gw["added_p50_ms"], "<= 1 ms", gw["added_p50_ms"] <= 1.0),
        ("added latency p99 (sequential)", gw["added_p99_ms"], "<= 3 ms", gw["added_p99_ms"] <= 3.0),
        ("throughput vs LiteLLM", gw["x_litellm"], ">= 20x at a lower p99",
         None if lite is None else gw["x_litellm"] >= 20 and gw["load_p99_ms"] < lite["load_p99_ms"]),
        ("streaming TTFT added p50", streams[gateway.name]["added_p50_ms"], "<= 1 ms",
         streams[gateway.name]["added_p50_ms"] <= 1.0),
        ("in-process decision p50 (us)", decision["p50_us"], "<= 10 us", decision["p50_us"] <= 10.0),
        ("decision endpoint req/s, 1 worker", authz.rps, "(reported)", None),
    ]
    if mem is not None:
        slope = mem["slope_second_half_mib_per_min"]
        checks.append(("RSS slope, second half (MiB/min)", slope, "flat: <= 0.5 MiB/min", slope <= 0.5))
    for name, value, target, ok in checks:
        verdict = "n/a" if ok is None else ("met" if ok else "NOT met")
        shown = "-" if value is None else f"{value:,.3f}"
        print(f"  {name:<36} {shown:>12}   target {target:<22} {verdict}")
    print(f"  streaming TTFT direct: p50 {stream['direct_p50_ms']:.3f} ms, p99 {stream['direct_p99_ms']:.3f} ms")
    if t_usage:
        print(f"  streaming TTFT direct + include_usage (what the gateway asks the upstream for): "
              f"p50 {stream['direct_include_usage_p50_ms']:.3f} ms, p99 {stream['direct_include_usage_p99_ms']:.3f} ms")
    for name, st in streams.items():
        print(f"  streaming TTFT {name}: p50 {st['p50_ms']:.3f} ms (added {st['added_p50_ms']:+.3f}), "
              f"p99 {st['p99_ms']:.3f} ms (added {st['added_p99_ms']:+.3f}), {st['samples']} samples"
              + (f"; vs direct + include_usage: {st['added_p50_vs_include_usage_ms']:+.3f} ms at p50"
                 if "added_p50_vs_include_usage_ms" in st else ""))
    for note in result.get("notes", []):
        print(f"  note: {note}")
    for r in rows:
        if r.get("errors"):
            print(f"  WARNING: {r['contender']}: {r['errors']} failed requests under wrk (socket errors or non-2xx); "
                  "its req/s include fast refusals")
    if result.get("gateway_refusals"):
        print("  refusals the releasegate replicas recorded (request log shipped to the store; authz denials included):")
        for r in result["gateway_refusals"][:10]:
            print(f"    {r}")
    if "fsync_disk" in result:
        print(f"  fdatasync on the request log's disk (probe, 300-byte appends): {result['fsync_disk']}")
    if "cold_probe" in result:
        cp = result["cold_probe"]
        print(f"  idle penalty of this machine (probe, medians): fdatasync {cp['fsync_hot_us']:g} us back to back, "
              f"{cp['fsync_after_gap_us']:g} us after {cp['gap_ms']:g} ms idle; a 3-us piece of Python "
              f"{cp['code_hot_us']:g} us hot, {cp['code_after_gap_us']:g} us after {cp['gap_ms']:g} ms idle "
              "(the streaming TTFT measurement sends a request every ~25 ms)")
    print(f"  /authz/v1/check, 1 worker: {authz.rps:,.0f} req/s, p50 {authz.p50_ms:.2f} ms, p99 {authz.p99_ms:.2f} ms, "
          f"errors {authz.errors}")
    result.update({"table": [{k: v for k, v in r.items()} for r in rows], "streaming_ttft": stream,
                   "decision_inprocess": decision, "authz_endpoint_1_worker": authz.as_dict(), "memory_soak": mem,
                   "targets": [{"name": n, "value": v, "target": t, "met": ok} for n, v, t, ok in checks]})


def direct_stream_name(ttft: dict[str, list[float]]) -> str:
    return next(name for name in ttft if name.startswith("direct"))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
