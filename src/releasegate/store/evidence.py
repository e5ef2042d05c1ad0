"""Evidence tables: imported evaluation results and red-team findings, incidents, approvals.

Tables only; queries live in ``services.evidence``, ``services.incidents``, ``services.approvals``
and ``services.gates``. Every row names the model and version it is about, so a gate verdict
can cite exactly the rows it relied on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from releasegate.store.base import Base


class EvidenceImport(Base):
    """One imported evidence file, bound to the SHA-256 of its bytes (a file is imported once)."""

    __tablename__ = "evidence_imports"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    source_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    source_format: Mapped[str] = mapped_column(String(40))
    source_name: Mapped[str] = mapped_column(String(500))
    results: Mapped[int] = mapped_column(Integer, default=0)
    findings: Mapped[int] = mapped_column(Integer, default=0)
    warnings: Mapped[list[Any]] = mapped_column(JSON)
    imported_by: Mapped[str] = mapped_column(String(200))
    imported_at: Mapped[datetime]


class EvalResultRecord(Base):
    """One metric value of one evaluation run about one model version."""

    __tablename__ = "eval_results"
    __table_args__ = (Index("ix_eval_results_lookup", "model_name", "version", "suite", "metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    import_id: Mapped[str] = mapped_column(ForeignKey("evidence_imports.id"), index=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"))
    version: Mapped[str] = mapped_column(String(64))
    suite: Mapped[str] = mapped_column(String(200))
    task: Mapped[str | None] = mapped_column(String(200), nullable=True)
    metric: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)
    stderr: Mapped[float | None] = mapped_column(Float, nullable=True)
    samples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    log_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    source_format: Mapped[str] = mapped_column(String(40))
    source_sha256: Mapped[str] = mapped_column(String(64))
    source_name: Mapped[str] = mapped_column(String(500))
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    imported_by: Mapped[str] = mapped_column(String(200))
    imported_at: Mapped[datetime]


class FindingRecord(Base):
    """A red-team finding about one model version, imported or reported, and where it stands."""

    __tablename__ = "findings"
    __table_args__ = (Index("ix_findings_version", "model_name", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"))
    version: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(500))
    severity: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10), default="open")
    description: Mapped[str] = mapped_column(Text, default="")
    reproduction: Mapped[str] = mapped_column(Text, default="")
    import_id: Mapped[str | None] = mapped_column(ForeignKey("evidence_imports.id"), nullable=True)
    reported_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Incident(Base):
    """Something that went wrong in use: reported by a deployer, staff or a detector."""

    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_version", "model_name", "version", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"))
    version: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deployer_id: Mapped[str | None] = mapped_column(ForeignKey("deployers.id"), nullable=True, index=True)
    severity: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10), default="open")
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(10))
    reported_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    triaged_at: Mapped[datetime | None] = mapped_column(nullable=True)
    mitigated_at: Mapped[datetime | None] = mapped_column(nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class PromotionRequest(Base):
    """Who asked for a version to enter a stage; that person cannot approve the promotion."""

    __tablename__ = "promotion_requests"
    __table_args__ = (UniqueConstraint("model_name", "version", "stage"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"))
    version: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str] = mapped_column(String(320))
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime]


class Approval(Base):
    """A named person's approval, under a plan role, of a version entering a stage."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("model_name", "version", "stage", "approver_email"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"))
    version: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(64))
    approver_name: Mapped[str] = mapped_column(String(200))
    approver_email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime]
