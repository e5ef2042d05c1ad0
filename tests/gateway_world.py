"""Gateway test helpers: the example release pointed at a mock upstream, stores, replicas, their request logs.

At the top of ``tests/`` (on ``pythonpath``) so every test module can import it by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from releasegate.clock import SystemClock
from releasegate.gateway.service import (
    GatewayConfig,
    GatewayService,
    build_limiter,
    build_request_log,
)
from releasegate.gateway.types import RateLimiter
from releasegate.plan.loader import load_plan_text
from releasegate.services import applications, deployers, keys, plans, rollouts
from releasegate.services.context import Actor, ServiceContext
from releasegate.settings import Settings
from releasegate.store.base import Base
from releasegate.store.db import Database

MODEL = "acme/atlas-8b"
EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "releasegate" / "examples" / "atlas" / "plan.yaml"
RM = Actor(name="rm@acme.example", role="admin", email="rm@acme.example")
REVIEWER = Actor(name="rita@acme.example", role="reviewer", email="rita@acme.example")

# name, use cases, tier, waitlisted
DEPLOYERS: tuple[tuple[str, list[str], str, bool], ...] = (
    ("acme-internal", ["customer-support", "code-assistant"], "internal", False),
    ("bluebank", ["customer-support"], "trusted-partner", False),
    ("shopco", ["customer-support"], "public", True),
)


def plan_text(example: str, upstream: str, *, timeout: str = "1.5s", extra_upstreams: tuple[str, ...] = (),
              limits: str | None = None) -> str:
    """The example plan served by ``upstream`` (base URL with /v1), with a short upstream timeout."""
    urls = ", ".join(f'"{u}"' for u in (*extra_upstreams, upstream))
    text = example.replace('{upstreams: ["http://127.0.0.1:8001/v1"], upstream_model: atlas-8b-v2, '
                           'upstream_key_env: ATLAS_UPSTREAM_KEY}',
                           f"{{upstreams: [{urls}], upstream_model: atlas-8b-v2, upstream_key_env: ATLAS_UPSTREAM_KEY, "
                           f"timeout: {timeout}}}")
    text = text.replace('      upstreams: ["http://127.0.0.1:8001/v1"]\n',
                        f"      upstreams: [{urls}]\n      timeout: {timeout}\n")
    if limits is not None:
        text = re.sub(r"limits: \{rpm: 600, tpm: 2_000_000\}", f"limits: {limits}", text, count=1)
    return text


@dataclass
class World:
    ctx: ServiceContext
    keys: dict[str, str] = field(default_factory=dict)  # "deployer/use_case" -> secret
    key_ids: dict[str, str] = field(default_factory=dict)
    deployer_ids: dict[str, str] = field(default_factory=dict)

    def key(self, name: str) -> str:
        return self.keys[name]


def build_world(ctx: ServiceContext, text: str, *, promote: tuple[str, ...] = ("v1", "v2")) -> World:
    """Apply ``text``, admit the deployers, issue one key per approved use case, promote versions into stage 0."""
    plans.apply(ctx, RM, load_plan_text(text))
    world = World(ctx)
    for name, use_cases, tier, waitlisted in DEPLOYERS:
        d = deployers.create(ctx, REVIEWER, name=name, contact_email=f"dev@{name}.example")
        world.deployer_ids[name] = d["id"]
        a = applications.submit(ctx, Actor(name=f"dev@{name}.example", role="deployer", deployer_id=d["id"]),
                                deployer=d["id"], model=MODEL, use_cases=use_cases)
        applications.approve(ctx, REVIEWER, a["id"], tier=tier, waitlist=waitlisted, reason="test")
        for uc in use_cases:
            k = keys.issue(ctx, REVIEWER, deployer=d["id"], model=MODEL, use_case=uc, name="test")
            world.keys[f"{name}/{uc}"] = k["key"]
            world.key_ids[f"{name}/{uc}"] = k["id"]
    for version in promote:
        rollouts.transition(ctx, RM, MODEL, version, "promote", reason="test")
    return world


def chat(content: str = "hello there", **extra: Any) -> dict[str, Any]:
    """A chat request body for version v1 (named explicitly: the bare model name is a sticky 90/10 split)."""
    return {"model": f"{MODEL}:v1", "messages": [{"role": "user", "content": content}], **extra}


def make_ctx(url: str, data_dir: Path) -> ServiceContext:
    import releasegate.store.all_models  # noqa: F401

    db = Database(url)
    Base.metadata.create_all(db.engine)
    return ServiceContext(db=db, settings=Settings(data_dir=data_dir, database_url=url), clock=SystemClock())


def log_records(service: GatewayService) -> list[dict[str, Any]]:
    """Every record the replica's durable log holds so far (start and end lines), oldest first."""
    import orjson

    from releasegate.gateway.requestlog import written_part

    directory: Path = service.request_log.directory  # type: ignore[attr-defined]
    out: list[dict[str, Any]] = []
    for segment in sorted(directory.glob("*.jsonl")):
        out.extend(orjson.loads(line) for line in written_part(segment.read_bytes()).splitlines() if line.strip())
    return out


def wait_for_records(service: GatewayService, request_id: str, kinds: tuple[str, ...] = ("end",),
                     timeout: float = 5.0) -> list[dict[str, Any]]:
    """The records of ``request_id`` once one of each of ``kinds`` is durable."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in log_records(service) if r.get("id") == request_id]
        if all(any(r["kind"] == k for r in found) for k in kinds) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def make_service(ctx: ServiceContext, tmp: Path, *, limiter: RateLimiter | None = None, notifier: Any = None,
                 settings: Settings | None = None, sources: dict[str, Any] | None = None,
                 **config: Any) -> GatewayService:
    s = settings or ctx.settings
    log_dir = tmp / f"requestlog-{len(list(tmp.glob('requestlog-*')))}"
    return GatewayService(
        db=ctx.db, settings=s, limiter=limiter or build_limiter(s),
        request_log=build_request_log(log_dir, replica="test"), notifier=notifier,
        config=GatewayConfig(**config), **(sources or {}),
    )
