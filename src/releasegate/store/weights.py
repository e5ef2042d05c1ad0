"""Weights tables: registered artifacts, terms versions and acceptances, access requests, downloads.

Tables only; the rules live in ``releasegate.weights``. A licensee is a ``Principal`` with role
``licensee``; its id is the licensee id the fingerprint and signed URLs are bound to.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from releasegate.store.base import Base


class WeightsRevision(Base):
    """The registered file set of one model version, seen by Hugging Face clients as one commit."""

    __tablename__ = "weights_revisions"

    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    commit: Mapped[str] = mapped_column(String(40), index=True)
    file_count: Mapped[int] = mapped_column(Integer)
    total_size: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(1000), default="")
    registered_at: Mapped[datetime]
    registered_by: Mapped[str] = mapped_column(String(200))


class WeightsArtifact(Base):
    """One file of a registered version: where the store keeps it, its size and hashes."""

    __tablename__ = "weights_artifacts"
    __table_args__ = (UniqueConstraint("model_name", "version", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    git_oid: Mapped[str] = mapped_column(String(40))
    lfs: Mapped[bool] = mapped_column(Boolean, default=False)
    store_key: Mapped[str] = mapped_column(String(200))


class TermsVersion(Base):
    """One published version of a terms document; a new content hash is a new version."""

    __tablename__ = "weights_terms"
    __table_args__ = (UniqueConstraint("model_name", "terms_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    terms_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime]
    published_by: Mapped[str] = mapped_column(String(200))


class TermsAcceptance(Base):
    """A licensee accepted one terms version: who, which version and hash, when, from where."""

    __tablename__ = "weights_acceptances"
    __table_args__ = (Index("ix_weights_acceptances_who", "principal_id", "model_name", "terms_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"))
    terms_id: Mapped[str] = mapped_column(String(64))
    terms_version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    accepted_at: Mapped[datetime]
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(300), nullable=True)


class AccessRequest(Base):
    """A licensee's request for a model's weights; once approved it is the grant (until it expires)."""

    __tablename__ = "weights_requests"
    __table_args__ = (UniqueConstraint("principal_id", "model_name", "number"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per licensee and model: the latest one decides
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    declared_use: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))  # pending | approved | rejected | revoked
    vetting: Mapped[dict[str, Any]] = mapped_column(JSON)
    submitted_at: Mapped[datetime]
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(nullable=True)
    decision_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class WeightsDownload(Base):
    """One GET of one file by one licensee (a resumed range is its own row)."""

    __tablename__ = "weights_downloads"
    __table_args__ = (Index("ix_weights_downloads_version", "model_name", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"))
    version: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500))
    source_sha256: Mapped[str] = mapped_column(String(64))
    fingerprinted: Mapped[bool] = mapped_column(Boolean)
    terms_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    terms_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    range_start: Mapped[int] = mapped_column(BigInteger)
    range_end: Mapped[int] = mapped_column(BigInteger)  # exclusive
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
