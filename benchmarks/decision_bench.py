"""In-process access decision latency: p50/p99 in microseconds (target: p50 <= 10 us).

Builds a snapshot like a busy release's (the example plan, 2,000 deployers, 4,000 keys) with the
gateway's own compiler, then times ``policy.access.decide`` per call for typical requests, plus
the body-to-facts step the /v1 path adds. Run::

    python benchmarks/decision_bench.py [--iterations 200000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from releasegate import credentials
from releasegate.demo import example_plan_path
from releasegate.gateway.scope import request_facts
from releasegate.gateway.snapshot import build_snapshot
from releasegate.plan.loader import load_plan_file
from releasegate.policy.access import RequestFacts, decide
from releasegate.store.models import AliasTarget, ApiKey, Deployer, Rollout, UseCaseGrant

BODY = orjson.dumps({"model": "acme/atlas-8b", "max_tokens": 256, "temperature": 0.7,
                     "messages": [{"role": "system", "content": "You are a support agent."},
                                  {"role": "user", "content": "Where is my order #1234? It was due yesterday."}]})


def build(n_deployers: int = 2000) -> tuple[Any, dict[str, str]]:
    plan = load_plan_file(example_plan_path()).plan
    now = datetime.now(UTC)
    tiers = ["internal", "trusted-partner", "public"]
    deployers, keys, grants, tokens = [], [], [], {}
    for i in range(n_deployers):
        tier = tiers[i % 3]
        d = Deployer(id=f"dep_{i:06d}", name=f"org-{i}", tier=tier, status="active",
                     admitted_at=now - timedelta(days=30), created_at=now)
        deployers.append(d)
        for uc in ("customer-support", "code-assistant"):
            grants.append(UseCaseGrant(deployer_id=d.id, model_name=plan.model, use_case=uc, granted_by="b", granted_at=now))
            cred = credentials.generate("rgk")
            keys.append(ApiKey(id=f"key_{i}_{uc}", lookup=cred.lookup, secret_hash=cred.secret_hash, deployer_id=d.id,
                               model_name=plan.model, use_case=uc, created_at=now, created_by="b"))
            tokens[f"{tier}/{uc}/{i}"] = cred.value
    rollouts = [Rollout(model_name=plan.model, version=v, state="active", stage_index=1, stage_name=plan.stages[1].name,
                        updated_at=now) for v in plan.versions]
    aliases = [AliasTarget(model_name=plan.model, alias=a, targets=t, set_by="plan", reason="", at=now)
               for a, t in plan.aliases.items()]
    snap = build_snapshot(revision=1, plans=[(plan, None)], rollouts=rollouts, aliases=aliases, deployers=deployers,
                          keys=keys, grants=grants, env={})
    return snap, tokens


def timed(fn: Any, iterations: int) -> dict[str, float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(1000):
        fn()
    gc.disable()
    try:
        for _ in range(iterations):
            t = clock()
            fn()
            samples.append(clock() - t)
    finally:
        gc.enable()
    samples.sort()
    us = [s / 1000 for s in samples]
    return {"p50_us": round(us[len(us) // 2], 2), "p99_us": round(us[int(len(us) * 0.99)], 2),
            "mean_us": round(statistics.fmean(us), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    snap, tokens = build()
    view, now = snap.view, time.time()
    token = tokens["internal/customer-support/0"]
    outsider = tokens["public/customer-support/2"]
    alias = RequestFacts(endpoint="chat.completions", model="acme/atlas-8b", max_tokens=256, temperature=0.7, input_chars=70)
    explicit = RequestFacts(endpoint="chat.completions", model="acme/atlas-8b:v1", max_tokens=256, input_chars=70)
    over = RequestFacts(endpoint="chat.completions", model="acme/atlas-8b:v1", max_tokens=4096, input_chars=70)
    assert decide(view, token, alias, now).allowed and not decide(view, token, over, now).allowed
    assert decide(view, outsider, explicit, now).code == "not_in_audience"
    results = {
        "decide: allow via alias (key check, audience, weighted pick, scope)": timed(lambda: decide(view, token, alias, now), args.iterations),
        "decide: allow explicit version": timed(lambda: decide(view, token, explicit, now), args.iterations),
        "decide: deny scope_violation": timed(lambda: decide(view, token, over, now), args.iterations),
        "decide: deny not_in_audience": timed(lambda: decide(view, outsider, explicit, now), args.iterations),
        "decide: deny invalid_api_key": timed(lambda: decide(view, "rgk_bogus", explicit, now), args.iterations),
        "body -> facts (orjson + scope.request_facts)": timed(lambda: request_facts("chat.completions", orjson.loads(BODY)), args.iterations),
    }
    if args.json:
        print(json.dumps({"keys": len(view.keys), "deployers": len(view.deployers), "results": results}, indent=2))
        return
    print(f"snapshot: {len(view.keys)} keys, {len(view.deployers)} deployers; {args.iterations} iterations each")
    for name, r in results.items():
        print(f"  {name:<68} p50 {r['p50_us']:>6.2f} us   p99 {r['p99_us']:>6.2f} us   mean {r['mean_us']:>6.2f} us")


if __name__ == "__main__":
    main()
