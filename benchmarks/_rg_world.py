"""The release the gateway benchmark serves: the bundled example plan pointed at the benchmark's upstreams.

v1 is served by the fixed-body nginx upstream, v2 by the streaming mock upstream; both are promoted
into the first stage; one internal deployer is admitted and holds one key for ``customer-support``.
The stage keeps a rate limit (so the limiter runs on every request) set far above what the machine
can send, so it never refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from releasegate.clock import SystemClock
from releasegate.plan.loader import load_plan_text
from releasegate.services import applications, deployers, keys, plans, rollouts
from releasegate.services.context import Actor, ServiceContext
from releasegate.settings import Settings
from releasegate.store.base import Base
from releasegate.store.db import Database
from releasegate.store.migrate import ensure_schema

EXAMPLE_PLAN = Path(__file__).resolve().parents[1] / "src" / "releasegate" / "examples" / "atlas" / "plan.yaml"
MODEL = "acme/atlas-8b"
RM = Actor(name="bench-rm@acme.example", role="admin", email="bench-rm@acme.example")
REVIEWER = Actor(name="bench-reviewer@acme.example", role="reviewer", email="bench-reviewer@acme.example")
# Limits on, but never binding at the rates this machine can produce.
BENCH_LIMITS = "{rpm: 600_000_000, tpm: 600_000_000_000}"


@dataclass(frozen=True)
class GatewayWorld:
    database_url: str
    data_dir: Path
    key: str
    model_v1: str
    model_v2: str


def bench_plan_text(v1_upstream: str, v2_upstream: str) -> str:
    """The example plan with v1 -> ``v1_upstream`` and v2 -> ``v2_upstream`` (base URLs ending in /v1)."""
    text = EXAMPLE_PLAN.read_text()
    text = text.replace('      upstreams: ["http://127.0.0.1:8001/v1"]\n', f'      upstreams: ["{v1_upstream}"]\n')
    text = text.replace('{upstreams: ["http://127.0.0.1:8001/v1"], upstream_model: atlas-8b-v2, '
                        'upstream_key_env: ATLAS_UPSTREAM_KEY}',
                        f'{{upstreams: ["{v2_upstream}"], upstream_model: atlas-8b-v2, upstream_key_env: ATLAS_UPSTREAM_KEY}}')
    text, n = re.subn(r"limits: \{rpm: 600, tpm: 2_000_000\}", f"limits: {BENCH_LIMITS}", text, count=1)
    if n != 1 or v1_upstream not in text or v2_upstream not in text:
        raise RuntimeError(f"the example plan at {EXAMPLE_PLAN} changed shape; update benchmarks/_rg_world.py")
    return text


def prepare(directory: Path, *, v1_upstream: str, v2_upstream: str) -> GatewayWorld:
    """A fresh SQLite store in ``directory`` with the release above; returns how to reach it."""
    import releasegate.store.all_models  # noqa: F401

    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / 'releasegate.db'}"
    db = Database(url)
    # The migrations first (what `releasegate gateway` checks for), then any table they do not have yet.
    ensure_schema(db.engine)
    Base.metadata.create_all(db.engine)
    data_dir = directory / "data"
    ctx = ServiceContext(db=db, settings=Settings(data_dir=data_dir, database_url=url), clock=SystemClock())
    try:
        plans.apply(ctx, RM, load_plan_text(bench_plan_text(v1_upstream, v2_upstream)))
        d = deployers.create(ctx, REVIEWER, name="bench-internal", contact_email="ml@bench.example")
        a = applications.submit(ctx, Actor(name="ml@bench.example", role="deployer", deployer_id=d["id"]),
                                deployer=d["id"], model=MODEL, use_cases=["customer-support"])
        applications.approve(ctx, REVIEWER, a["id"], tier="internal", reason="benchmark")
        k = keys.issue(ctx, REVIEWER, deployer=d["id"], model=MODEL, use_case="customer-support", name="bench")
        for version in ("v1", "v2"):
            rollouts.transition(ctx, RM, MODEL, version, "promote", reason="benchmark")
    finally:
        db.dispose()
    return GatewayWorld(url, data_dir, k["key"], f"{MODEL}:v1", f"{MODEL}:v2")
