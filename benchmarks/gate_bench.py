"""Gate verdict over ten million requests: aggregates (``request_buckets``) vs scanning ``request_events``.

Builds a store with the example release (acme/atlas-8b), version v1 in stage ``trusted-partners``
for 90 days, and the hourly ``RequestBucket`` rows that ``--requests`` requests (default 10 M)
spread over 90 days x ``--deployers`` deployers x 2 use cases produce (plus, with
``--noise-versions``, as many rows again for v2, so the version filter has something to skip).
Then it times ``services.gates.evaluate_gate`` for the ``limited-public`` gate (time in stage,
traffic, incidents, flag rate, approvals) on SQLite (a file) and on PostgreSQL (a private
schema in ``test``; dropped afterwards), p50 of ``--runs`` runs, each in a fresh session.

With ``--events N`` (PostgreSQL only) it also loads N raw ``request_events`` rows (generated
server-side with ``generate_series``; indexes built after the load) and times the same traffic
numbers computed by scanning them, for contrast. Run::

    python benchmarks/gate_bench.py                      # SQLite + PostgreSQL, aggregates only
    python benchmarks/gate_bench.py --events 10000000    # + 10 M raw events on PostgreSQL
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, insert, select, text

import releasegate.store.all_models  # noqa: F401  (every table, for create_all)
from releasegate.clock import FrozenClock
from releasegate.demo import example_plan_path
from releasegate.plan.loader import load_plan_file
from releasegate.services import gates, incidents, plans, rollouts
from releasegate.services.context import Actor, ServiceContext
from releasegate.services.plans import current_plan
from releasegate.settings import Settings
from releasegate.store.base import Base
from releasegate.store.db import Database
from releasegate.store.models import Rollout
from releasegate.store.requests import RequestBucket

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MODEL = "acme/atlas-8b"
USE_CASES = ("customer-support", "code-assistant")
ADMIN = Actor(name="bench@acme.example", role="admin", email="bench@acme.example")
DAYS = 90
FLAG_RATE = 0.004  # share of requests the moderation detector flags
COLUMNS = ("bucket_start", "model", "version", "stage", "deployer_id", "use_case", "requests", "allowed", "denied",
           "errors", "scope_violations", "prompt_tokens", "completion_tokens", "latency_ms_sum", "flagged")


def bucket_rows(version: str, stage: str, *, requests: int, deployers: int, end: datetime,
                seed: int) -> Iterator[tuple[Any, ...]]:
    """The hourly aggregates ``requests`` requests over DAYS x deployers x use cases produce (sums exact)."""
    rng = random.Random(seed)
    hours = DAYS * 24
    cells = hours * deployers * len(USE_CASES)
    base, extra = divmod(requests, cells)
    start = end.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    i = 0
    for h in range(hours):
        at = start + timedelta(hours=h)
        for d in range(deployers):
            for uc in USE_CASES:
                n = base + (1 if i < extra else 0)
                i += 1
                denied = int(n * 0.02)
                # About n * FLAG_RATE flags per row (below one per row at these sizes: a Bernoulli draw).
                expected = n * FLAG_RATE
                flagged = int(expected) + (1 if rng.random() < expected - int(expected) else 0)
                yield (at, MODEL, version, stage, f"dep_{d:05d}", uc, n, n - denied, denied, n // 200,
                       n // 500, n * 120, n * 240, n * 850.0, {"moderation": flagged} if flagged else {})


def load_buckets(db: Database, rows: Iterator[tuple[Any, ...]]) -> int:
    """Bulk insert: COPY on PostgreSQL, executemany on SQLite. Returns the number of rows."""
    n = 0
    if db.url.startswith("postgresql"):
        import orjson

        raw: Any = db.engine.raw_connection()
        try:
            with raw.cursor() as cur, cur.copy(f"COPY request_buckets ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row((*row[:-1], orjson.dumps(row[-1]).decode()))
                    n += 1
            raw.commit()
        finally:
            raw.close()
        return n
    batch: list[dict[str, Any]] = []
    with db.engine.begin() as conn:
        for row in rows:
            batch.append(dict(zip(COLUMNS, row, strict=True)))
            if len(batch) == 20_000:
                conn.execute(insert(RequestBucket), batch)
                n += len(batch)
                batch.clear()
        if batch:
            conn.execute(insert(RequestBucket), batch)
            n += len(batch)
    return n


def setup_release(db: Database, data_dir: Path, now: datetime) -> ServiceContext:
    """The example plan applied, v1 promoted into trusted-partners DAYS days ago, a few incidents."""
    clock = FrozenClock(now - timedelta(days=DAYS + 5))
    ctx = ServiceContext(db=db, settings=Settings(data_dir=data_dir, database_url=db.url), clock=clock)
    plans.apply(ctx, ADMIN, load_plan_file(example_plan_path()))
    rollouts.transition(ctx, ADMIN, MODEL, "v1", "promote", reason="bench")
    rollouts.transition(ctx, ADMIN, MODEL, "v2", "promote", reason="bench")
    clock.advance(days=5)
    rollouts.transition(ctx, ADMIN, MODEL, "v1", "promote", reason="bench", override_reason="benchmark setup")
    for k in range(30):  # incidents spread over the stage; the gate counts high/critical in the last 30 days
        clock.advance(days=DAYS / 31)
        incidents.report(ctx, ADMIN, MODEL, "v1", severity=("low", "medium", "high")[k % 3], title=f"bench incident {k}")
    ctx.clock = FrozenClock(now)
    return ctx


def load_events(db: Database, n: int, *, deployers: int, now: datetime) -> float:
    """N raw request events for v1 in trusted-partners, generated server-side; seconds taken."""
    t0 = time.perf_counter()
    span = DAYS * 86400
    with db.engine.begin() as conn:
        conn.execute(text("DROP INDEX IF EXISTS ix_request_events_model_version_started"))
        conn.execute(text("DROP INDEX IF EXISTS ix_request_events_deployer_started"))
        conn.execute(text("ALTER TABLE request_events SET UNLOGGED"))
        conn.execute(text(f"""
            INSERT INTO request_events (id, started_at, ended_at, replica, deployer_id, key_id, model, version, stage,
                                        use_case, endpoint, stream, status, outcome, reason_code, latency_ms,
                                        prompt_tokens, completion_tokens, flags)
            SELECT 'req_' || g, :now - make_interval(secs => g % {span}), :now - make_interval(secs => g % {span}),
                   'bench', 'dep_' || lpad((g % {deployers})::text, 5, '0'), 'key_' || (g % {deployers * 2}),
                   :model, 'v1', 'trusted-partners',
                   CASE WHEN g % 2 = 0 THEN 'customer-support' ELSE 'code-assistant' END, 'chat.completions', false,
                   200, 'allowed', NULL, 850.0, 120, 240,
                   CASE WHEN g % 250 = 0 THEN '["moderation"]'::json END
            FROM generate_series(1, :n) AS g"""), {"now": now.replace(tzinfo=None), "model": MODEL, "n": n})
        conn.execute(text("CREATE INDEX ix_request_events_model_version_started ON request_events "
                          "(model, version, started_at)"))
        conn.execute(text("CREATE INDEX ix_request_events_deployer_started ON request_events (deployer_id, started_at)"))
        conn.execute(text("ANALYZE request_events"))
    return time.perf_counter() - t0


def scan_traffic(db: Database, since: datetime) -> tuple[int, int, int]:
    """The gate's traffic numbers (requests, deployers, moderation flags) by scanning request_events."""
    with db.engine.connect() as conn:
        row = conn.execute(text("""
            SELECT count(*), count(DISTINCT deployer_id),
                   count(*) FILTER (WHERE flags IS NOT NULL AND (flags::jsonb) ? 'moderation')
            FROM request_events
            WHERE model = :model AND version = 'v1' AND stage = 'trusted-partners' AND started_at >= :since
              AND deployer_id <> ''"""), {"model": MODEL, "since": since.replace(tzinfo=None)}).one()
    return int(row[0]), int(row[1]), int(row[2])


def p50(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_backend(name: str, url: str, args: argparse.Namespace, now: datetime) -> dict[str, Any]:
    db = Database(url)
    Base.metadata.create_all(db.engine)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = setup_release(db, Path(tmp), now)
        t0 = time.perf_counter()
        rows = load_buckets(db, bucket_rows("v1", "trusted-partners", requests=args.requests, deployers=args.deployers,
                                            end=now, seed=1))
        if args.noise_versions:
            rows += load_buckets(db, bucket_rows("v2", "internal", requests=args.requests, deployers=args.deployers,
                                                 end=now, seed=2))
        load_s = time.perf_counter() - t0
        if db.url.startswith("postgresql"):
            with db.engine.begin() as conn:
                conn.execute(text("ANALYZE request_buckets"))
        with db.read() as s:
            plan = current_plan(s, MODEL)
            stored = int(s.scalar(select(func.sum(RequestBucket.requests)).where(RequestBucket.version == "v1")) or 0)
        target = next(i for i, st in enumerate(plan.stages) if st.name == "limited-public")

        def verdict() -> Any:
            with db.read() as s:
                r = s.scalars(select(Rollout).where(Rollout.model_name == MODEL, Rollout.version == "v1")).one()
                return gates.evaluate_gate(s, plan, r, target, now=now)

        gate_s, v = p50(verdict, args.runs)
        check_s, _ = p50(lambda: gates.check(ctx, ADMIN, MODEL, "v1"), args.runs)
        traffic = next(x for x in v.results if x.kind == "traffic")
        flag = next(x for x in v.results if x.kind == "flag_rate")
        out: dict[str, Any] = {
            "backend": name, "bucket_rows": rows, "requests_in_buckets": stored, "load_s": load_s, "gate_p50_s": gate_s,
            "check_p50_s": check_s, "verdict": {x.kind: x.outcome for x in v.results}, "traffic": traffic.numbers,
            "flagged": flag.numbers.get("flagged"),
        }
        if args.events and db.url.startswith("postgresql"):
            out["events_loaded"] = args.events
            out["events_load_s"] = load_events(db, args.events, deployers=args.deployers, now=now)
            with db.read() as s:
                r = s.scalars(select(Rollout).where(Rollout.model_name == MODEL, Rollout.version == "v1")).one()
                since = r.stage_entered_at
            assert since is not None
            scan_s, numbers = p50(lambda: scan_traffic(db, since), max(3, args.runs // 5))
            out["scan_p50_s"], out["scan_numbers"] = scan_s, numbers
    db.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000_000)
    ap.add_argument("--deployers", type=int, default=50)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--events", type=int, default=0, help="raw request_events to load on PostgreSQL (0: none)")
    ap.add_argument("--noise-versions", action=argparse.BooleanOptionalAction, default=True,
                    help="also load v2's aggregates (the version filter must skip them)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args(argv)
    now = datetime.now(UTC).replace(microsecond=0)
    results = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                results.append(bench_backend("sqlite", f"sqlite:///{tmp}/bench.db", args, now))
            continue
        schema = f"gate_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            results.append(bench_backend("postgresql", f"{PG_URL}?options=-csearch_path%3D{schema}", args, now))
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    print(f"\n{args.requests:,} requests over {DAYS} days x {args.deployers} deployers x {len(USE_CASES)} use cases"
          f"{' (+ as many for v2)' if args.noise_versions else ''}; p50 of {args.runs} runs\n")
    print("| backend | bucket rows | load s | evaluate_gate p50 | gates.check p50 | raw events | scan p50 | scan/gate |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        scan = r.get("scan_p50_s")
        scan_cell = f"{scan * 1000:.0f} ms" if scan else "-"
        ratio_cell = f"{scan / r['gate_p50_s']:.0f}x" if scan else "-"
        print(f"| {r['backend']} | {r['bucket_rows']:,} | {r['load_s']:.1f} | {r['gate_p50_s'] * 1000:.1f} ms | "
              f"{r['check_p50_s'] * 1000:.1f} ms | {r.get('events_loaded', 0):,} | {scan_cell} | {ratio_cell} |")
    for r in results:
        print(f"\n{r['backend']}: verdict {r['verdict']}; traffic {r['traffic']}; flagged {r['flagged']}; "
              f"requests in v1 buckets {r['requests_in_buckets']:,}"
              + (f"; scan found {r['scan_numbers']} (events load {r['events_load_s']:.0f}s)" if "scan_numbers" in r else ""))
    ok = all(r["gate_p50_s"] < 1.0 for r in results)
    print("\nverdict under 1 s on every backend:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
