"""Builds the world of ``access.yaml`` as store rows and compiles it with the gateway's own snapshot compiler."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from releasegate import credentials
from releasegate.gateway.snapshot import Snapshot, build_snapshot
from releasegate.plan.loader import load_plan_text
from releasegate.policy.access import RequestFacts
from releasegate.store.models import AliasTarget, ApiKey, Deployer, Rollout, UseCaseGrant

VECTORS = Path(__file__).resolve().parent / "access.yaml"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class VectorWorld:
    snapshot: Snapshot
    tokens: dict[str, str]  # key name -> secret
    unknown_token: str
    vectors: list[dict[str, Any]]

    def token(self, vector: dict[str, Any]) -> str | None:
        if "raw" in vector:
            return self.unknown_token if vector["raw"] == "unknown" else str(vector["raw"])
        return None if vector.get("key") == "none" else self.tokens[vector["key"]]


def facts(request: dict[str, Any], *, body_seen: bool = True) -> RequestFacts:
    r = dict(request)
    return RequestFacts(
        endpoint=r.pop("endpoint", "chat.completions"), model=r.pop("model", None), body_seen=body_seen,
        **(r if body_seen else {}),
    )


def load(upstream: str = "http://127.0.0.1:9/v1", *, now: datetime | None = None) -> VectorWorld:
    """The vectors and their world, compiled at ``now`` (default: the wall clock, as the gateway runs)."""
    doc = yaml.safe_load(VECTORS.read_text())
    w = doc["world"]
    now = now or datetime.now(UTC)
    plan = load_plan_text(w["plan"].replace("UPSTREAM", upstream)).plan
    paused_at = now - timedelta(hours=1)
    deployers = []
    for d in w["deployers"]:
        admitted_at = now - (timedelta(minutes=30) if d.get("admitted_after_pause") else timedelta(days=10))
        deployers.append(Deployer(id=d["id"], name=d["name"], tier=d["tier"], status=d["status"],
                                  status_reason=d.get("status_reason"), admitted_at=admitted_at, created_at=T0))
    names = [s.name for s in plan.stages]
    rollouts = []
    for version, r in w["rollouts"].items():
        stage = r.get("stage")
        rollouts.append(Rollout(model_name=plan.model, version=version, state=r["state"],
                                stage_index=names.index(stage) if stage else None, stage_name=stage,
                                state_reason=r.get("reason"), updated_at=paused_at))
    grants = [UseCaseGrant(deployer_id=d, model_name=plan.model, use_case=u, granted_by="t", granted_at=T0)
              for d, u in w["grants"]]
    keys, tokens = [], {}
    for name, k in w["keys"].items():
        cred = credentials.generate("rgk")
        tokens[name] = cred.value
        expires = now + timedelta(seconds=k["expires_in"]) if "expires_in" in k else None
        keys.append(ApiKey(id=f"key_{name}", lookup=cred.lookup, secret_hash=cred.secret_hash, deployer_id=k["deployer"],
                           model_name=plan.model, use_case=k["use_case"], created_at=T0, created_by="t",
                           expires_at=expires, revoked_at=T0 if k.get("revoked") else None,
                           revoked_reason=k.get("revoked_reason")))
    aliases = [AliasTarget(model_name=plan.model, alias=a, targets=t, set_by="plan", reason="plan", at=T0)
               for a, t in plan.aliases.items()]
    snapshot = build_snapshot(revision=1, plans=[(plan, None)], rollouts=rollouts, aliases=aliases,
                              deployers=deployers, keys=keys, grants=grants, env={})
    return VectorWorld(snapshot, tokens, credentials.generate("rgk").value, doc["vectors"])
