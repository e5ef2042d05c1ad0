"""Core tables: models and plan revisions, rollouts and transitions, deployers, keys, principals, audit.

Tables only; queries live in the services. Identifiers are short prefixed strings
(``dep_…``, ``key_…``) so that logs and audit entries are readable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from releasegate.store.base import Base


class ModelRecord(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(160), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    current_revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]


class PlanRevision(Base):
    __tablename__ = "plan_revisions"
    __table_args__ = (UniqueConstraint("model_name", "revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    plan_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(500), default="")
    base_dir: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    forced_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Rollout(Base):
    """Where one model version stands in its release plan."""

    __tablename__ = "rollouts"
    __table_args__ = (UniqueConstraint("model_name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20))
    stage_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stage_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stage_entered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime]


class Transition(Base):
    __tablename__ = "transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    action: Mapped[str] = mapped_column(String(20))
    from_state: Mapped[str] = mapped_column(String(20))
    from_stage: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_state: Mapped[str] = mapped_column(String(20))
    to_stage: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    override_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime]


class AliasTarget(Base):
    """Where an alias points now: {version: weight}. Starts from the plan; ``retarget`` moves it."""

    __tablename__ = "alias_targets"

    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    targets: Mapped[dict[str, Any]] = mapped_column(JSON)
    set_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime]


class Deployer(Base):
    """An organisation building on the model."""

    __tablename__ = "deployers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    tier: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    contact_email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    created_at: Mapped[datetime]
    admitted_at: Mapped[datetime | None] = mapped_column(nullable=True)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("deployer_id", "email"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployer_id: Mapped[str] = mapped_column(ForeignKey("deployers.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(20), default="member")
    created_at: Mapped[datetime]


class Application(Base):
    """A deployer's request to use a model for declared use cases."""

    __tablename__ = "applications"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    deployer_id: Mapped[str] = mapped_column(ForeignKey("deployers.id"), index=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    use_cases: Mapped[list[Any]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default="submitted")
    submitted_by: Mapped[str] = mapped_column(String(200))
    submitted_at: Mapped[datetime]
    reviewer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(nullable=True)
    decision_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    tier: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approved_use_cases: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)


class UseCaseGrant(Base):
    """A deployer approved for one use case of one model."""

    __tablename__ = "use_case_grants"
    __table_args__ = (UniqueConstraint("deployer_id", "model_name", "use_case"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployer_id: Mapped[str] = mapped_column(ForeignKey("deployers.id"), index=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"))
    use_case: Mapped[str] = mapped_column(String(64))
    application_id: Mapped[str | None] = mapped_column(ForeignKey("applications.id"), nullable=True)
    granted_by: Mapped[str] = mapped_column(String(200))
    granted_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ApiKey(Base):
    """A deployer's API key, bound to one model and one approved use case. Only its hash is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    lookup: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    deployer_id: Mapped[str] = mapped_column(ForeignKey("deployers.id"), index=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"))
    use_case: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(120), default="")
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    rotated_from: Mapped[str | None] = mapped_column(String(40), nullable=True)
    rotated_to: Mapped[str | None] = mapped_column(String(40), nullable=True)


class Principal(Base):
    """A person or automation holding an admin-API bearer token, with one role."""

    __tablename__ = "principals"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    deployer_id: Mapped[str | None] = mapped_column(ForeignKey("deployers.id"), nullable=True)
    lookup: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class AuditEntry(Base):
    """One link of the append-only, hash-chained audit trail."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_target", "target"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(80))
    target: Mapped[str] = mapped_column(String(300))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    changes: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
