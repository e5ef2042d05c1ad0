"""The compiled policy snapshot: everything a request decision reads, built from the store in one pass.

A snapshot is immutable. The gateway swaps the reference to a new one atomically, so a request sees
either the old policy or the new, never a mix; ``retarget``, ``rollback`` and ``halt`` therefore switch
all traffic of a replica at once. Its ``revision`` is the audit head (every state change is audited),
so "has anything changed?" is one cheap query.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from releasegate.clock import SystemClock
from releasegate.gateway.routing import Backend, build_backend
from releasegate.plan.schema import Limits, Plan
from releasegate.policy.access import (
    DeployerEntry,
    KeyEntry,
    ModelEntry,
    PolicyView,
    ScopeRule,
    VersionEntry,
    stricter,
)
from releasegate.policy.audience import DeployerView, admitted
from releasegate.services import audit
from releasegate.store.db import Database
from releasegate.store.models import (
    AliasTarget,
    ApiKey,
    Deployer,
    ModelRecord,
    PlanRevision,
    Rollout,
    UseCaseGrant,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    view: PolicyView
    backends: Mapping[tuple[str, str], Backend]  # (model, version) -> upstream pool
    compiled_at: datetime
    problems: tuple[str, ...] = ()
    plans: Mapping[str, Plan] = field(default_factory=dict)  # model -> current plan (detectors, use cases)

    @property
    def revision(self) -> int:
        return self.view.revision


def read_revision(db: Database) -> int:
    """The store's change revision (audit head seq)."""
    with db.read() as session:
        return audit.revision(session)


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _version_entry(plan: Plan, version: str, r: Rollout | None, views: list[DeployerView]) -> VersionEntry:
    state = r.state if r is not None else "draft"
    stage_index = r.stage_index if r is not None else None
    stage = plan.stages[stage_index] if stage_index is not None and stage_index < len(plan.stages) else None
    members: frozenset[str] = frozenset()
    limits_by_tier: dict[str | None, Limits] = {}
    if stage is not None:
        members = admitted(stage.audience, views)
        if state == "paused" and r is not None:
            # Paused: current traffic continues, nobody new is admitted.
            paused_at = r.updated_at
            late = {v.id for v in views if v.admitted_at is not None and v.admitted_at > paused_at}
            members = members - late
        limits_by_tier[None] = stage.limits
        for tier_name, tier in plan.tiers.items():
            limits_by_tier[tier_name] = stricter(stage.limits, tier.limits)
    spec = plan.versions[version]
    return VersionEntry(
        model=plan.model, version=version, state=state, stage_index=stage_index,
        stage_name=stage.name if stage else (r.stage_name if r else None),
        reason=r.state_reason if r is not None else None,
        channels=frozenset(stage.channels) if stage else frozenset(), admitted=members,
        limits_by_tier=limits_by_tier,
        upstream_model=(spec.api.upstream_model or version) if spec.api else version,
        has_api=spec.api is not None,
    )


def compile_snapshot(db: Database, *, env: Mapping[str, str] | None = None) -> Snapshot:
    """Read the store once and compile the decision view and upstream pools. Never partially applied."""
    with db.read() as session:
        revision = audit.revision(session)  # first: the data read below is at least this new
        plans = [
            (Plan.model_validate(p.plan_json), p.base_dir)
            for p in session.scalars(
                select(PlanRevision).join(ModelRecord, (ModelRecord.name == PlanRevision.model_name)
                                          & (ModelRecord.current_revision == PlanRevision.revision)))
        ]
        return build_snapshot(
            revision=revision, plans=plans, rollouts=session.scalars(select(Rollout)).all(),
            aliases=session.scalars(select(AliasTarget)).all(), deployers=session.scalars(select(Deployer)).all(),
            keys=session.scalars(select(ApiKey)).all(),
            grants=session.scalars(select(UseCaseGrant).where(UseCaseGrant.revoked_at.is_(None))).all(), env=env,
        )


def build_snapshot(
    *,
    revision: int,
    plans: Iterable[tuple[Plan, str | None]],
    rollouts: Iterable[Rollout],
    aliases: Iterable[AliasTarget],
    deployers: Iterable[Deployer],
    keys: Iterable[ApiKey],
    grants: Iterable[UseCaseGrant],
    env: Mapping[str, str] | None = None,
) -> Snapshot:
    """Compile store rows (attached or not) into a snapshot: the one place policy rows become decision data."""
    env = os.environ if env is None else env
    problems: list[str] = []
    deployer_rows = list(deployers)
    views = [DeployerView(d.id, d.name, d.tier, d.status, d.admitted_at) for d in deployer_rows]
    deployer_entries = {d.id: DeployerEntry(d.id, d.name, d.tier, d.status, d.status_reason) for d in deployer_rows}
    by_version: dict[tuple[str, str], Rollout] = {(r.model_name, r.version): r for r in rollouts}
    alias_rows: dict[str, dict[str, dict[str, int]]] = {}
    for a in aliases:
        alias_rows.setdefault(a.model_name, {})[a.alias] = {str(k): int(v) for k, v in a.targets.items()}
    models: dict[str, ModelEntry] = {}
    backends: dict[tuple[str, str], Backend] = {}
    plan_by_model: dict[str, Plan] = {}
    for plan, base_dir in plans:
        plan_by_model[plan.model] = plan
        model_name = plan.model
        versions = {v: _version_entry(plan, v, by_version.get((model_name, v)), views) for v in plan.versions}
        for v, spec in plan.versions.items():
            if spec.api is not None:
                backend, problem = build_backend(f"{model_name}:{v}", v, spec.api, env=env, base_dir=base_dir)
                backends[(model_name, v)] = backend
                if problem:
                    problems.append(f"{model_name}:{v}: {problem}")
        stored = alias_rows.get(model_name, {})
        alias_targets = {
            alias: tuple((v, int(w)) for v, w in stored.get(alias, targets).items())
            for alias, targets in plan.aliases.items()
        }
        use_cases = {
            name: ScopeRule(name, frozenset(uc.endpoints), uc.features, uc.bounds) for name, uc in plan.use_cases.items()
        }
        models[model_name] = ModelEntry(
            name=model_name, versions=versions, version_order=tuple(plan.versions), aliases=alias_targets,
            default_alias=next(iter(plan.aliases), None), use_cases=use_cases,
        )
    key_entries = {
        k.lookup: KeyEntry(k.id, k.lookup, k.secret_hash, k.deployer_id, k.model_name, k.use_case,
                           _ts(k.expires_at), k.revoked_at is not None, k.revoked_reason)
        for k in keys
    }
    grant_set = frozenset((g.deployer_id, g.model_name, g.use_case) for g in grants if g.revoked_at is None)
    for p in problems:
        log.warning("snapshot %d: %s", revision, p)
    view = PolicyView(revision=revision, keys=key_entries, deployers=deployer_entries, models=models, grants=grant_set,
                      keys_by_hash={entry.secret_hash: entry for entry in key_entries.values()})
    return Snapshot(view=view, backends=backends, compiled_at=SystemClock().now(), problems=tuple(problems),
                    plans=plan_by_model)
