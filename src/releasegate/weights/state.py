"""Where a model's weights stand right now: which versions the weights channel opens, under which policy.

Read from the store on every call (plan, rollouts, registered revisions): the weights endpoints
are not the hot path, and a halt or rollback must close downloads at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from releasegate.plan.schema import Plan, Stage, WeightsPolicy
from releasegate.policy.rollout import SERVING_STATES
from releasegate.services.context import STAFF_ROLES, Actor
from releasegate.services.plans import current_revision
from releasegate.store.models import Rollout
from releasegate.store.weights import AccessRequest
from releasegate.weights.registry import RevisionInfo, revisions


@dataclass(frozen=True)
class VersionWeights:
    """One version: its rollout state, its stage (if released) and its registered files (if any)."""

    version: str
    state: str
    stage: Stage | None
    revision: RevisionInfo | None
    state_reason: str | None

    @property
    def in_weights_stage(self) -> bool:
        return self.stage is not None and "weights" in self.stage.channels

    @property
    def open(self) -> bool:
        """Downloads may be served: a weights stage, active or paused, files registered."""
        return self.in_weights_stage and self.state in SERVING_STATES and self.revision is not None

    @property
    def policy(self) -> WeightsPolicy | None:
        return self.stage.weights if self.stage is not None else None

    @property
    def commit(self) -> str | None:
        return self.revision.commit if self.revision is not None else None


@dataclass(frozen=True)
class ModelWeights:
    model: str
    plan: Plan
    versions: dict[str, VersionWeights]  # in plan order

    @property
    def open_versions(self) -> list[VersionWeights]:
        return [v for v in self.versions.values() if v.open]

    @property
    def main(self) -> VersionWeights | None:
        """What ``main`` resolves to: the newest (last in plan order) open version."""
        open_ = self.open_versions
        return open_[-1] if open_ else None

    @property
    def policy(self) -> WeightsPolicy | None:
        """The weights policy licensees deal with: main's, else a halted weights stage's, else the plan's first."""
        if self.main is not None:
            return self.main.policy
        for v in reversed(self.versions.values()):
            if v.in_weights_stage and v.policy is not None:
                return v.policy
        for stage in self.plan.stages:
            if stage.weights is not None:
                return stage.weights
        return None

    def by_commit(self, commit: str) -> VersionWeights | None:
        for v in self.versions.values():
            if v.commit == commit:
                return v
        return None


def load(session: Session, model: str) -> ModelWeights | None:
    """The weights state of ``model``, or None if no plan was ever applied for it."""
    rev = current_revision(session, model)
    if rev is None:
        return None
    plan = Plan.model_validate(rev.plan_json)
    rollouts = {r.version: r for r in session.scalars(select(Rollout).where(Rollout.model_name == model))}
    registered = revisions(session, model)
    versions: dict[str, VersionWeights] = {}
    for name in plan.versions:
        r = rollouts.get(name)
        stage = None
        if r is not None and r.stage_index is not None and r.state != "draft" and r.stage_index < len(plan.stages):
            stage = plan.stages[r.stage_index]
        versions[name] = VersionWeights(name, r.state if r is not None else "draft", stage, registered.get(name),
                                        r.state_reason if r is not None else None)
    return ModelWeights(model=model, plan=plan, versions=versions)


def is_staff(actor: Actor | None) -> bool:
    return actor is not None and actor.role in STAFF_ROLES


def has_request(session: Session, actor: Actor | None, model: str) -> bool:
    if actor is None or actor.principal_id is None:
        return False
    return session.scalar(select(AccessRequest.id).where(
        AccessRequest.principal_id == actor.principal_id, AccessRequest.model_name == model).limit(1)) is not None


def can_see(session: Session, mw: ModelWeights | None, actor: Actor | None) -> bool:
    """May ``actor`` learn that the repository exists? Staff always; others while a version is open,
    or once they have asked for access (so a halt explains itself instead of looking like a 404)."""
    if mw is None:
        return False
    if is_staff(actor) or mw.open_versions:
        return True
    return has_request(session, actor, mw.model)
