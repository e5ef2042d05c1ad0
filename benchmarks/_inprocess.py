"""The in-process access decision, timed: what every /v1 request of the gateway computes before forwarding."""

from __future__ import annotations

import gc
import time
from typing import Any

import orjson
from _harness import percentile
from _rg_world import GatewayWorld

from releasegate.gateway.scope import request_facts
from releasegate.gateway.snapshot import compile_snapshot
from releasegate.policy.access import Decision, authorize, identify
from releasegate.store.db import Database


def decision_timings(world: GatewayWorld, iterations: int) -> dict[str, Any]:
    """Per-call times (µs) of identify+authorize on a compiled snapshot, and of the same plus parsing the body.

    The key check (sha256 of the presented key, constant-time compare) is part of ``identify``.
    """
    db = Database(world.database_url)
    try:
        snap = compile_snapshot(db, env={"ATLAS_UPSTREAM_KEY": "sk-bench-upstream"})
    finally:
        db.dispose()
    view = snap.view
    raw = orjson.dumps({"model": world.model_v1, "max_tokens": 64,
                        "messages": [{"role": "user", "content": "Hello, how are you today?"}]})
    token = world.key
    now = time.time()

    def decide_only() -> Decision:
        caller = identify(view, token, now)
        assert not isinstance(caller, Decision), caller
        return authorize(caller, facts)

    def with_body() -> Decision:
        caller = identify(view, token, now)
        assert not isinstance(caller, Decision), caller
        return authorize(caller, request_facts("chat.completions", orjson.loads(raw)))

    facts = request_facts("chat.completions", orjson.loads(raw))
    first = decide_only()
    if not first.allowed:
        raise RuntimeError(f"the benchmark request is denied in-process: {first.code} {first.message}")
    out: dict[str, Any] = {"iterations": iterations, "snapshot_revision": snap.revision}
    for label, fn in (("", decide_only), ("with_body_", with_body)):
        for _ in range(min(10_000, iterations)):
            fn()
        times = [0] * iterations
        gc_was = gc.isenabled()
        gc.disable()
        try:
            t_all = time.perf_counter_ns()
            for i in range(iterations):
                t0 = time.perf_counter_ns()
                fn()
                times[i] = time.perf_counter_ns() - t0
            total = time.perf_counter_ns() - t_all
        finally:
            if gc_was:
                gc.enable()
        us = [t / 1000 for t in times]
        out[f"{label}p50_us"] = round(percentile(us, 50), 2)
        out[f"{label}p99_us"] = round(percentile(us, 99), 2)
        out[f"{label}mean_us"] = round(total / iterations / 1000, 2)
    out["decisions_per_second_one_core"] = round(1e6 / out["mean_us"])
    return out
