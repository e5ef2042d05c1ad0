"""Request events (one row per gateway request) and the hourly aggregates gates read.

Written only by ``gateway.requestlog.RequestLogShipper``. Gates and dashboards query
``RequestBucket`` (a gate over ten million requests reads a few hundred rows), and go to
``RequestEvent`` only to show individual requests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from releasegate.store.base import Base


class RequestEvent(Base):
    """One request through a gateway replica, merged from its ``start`` and ``end`` records.

    ``started_at`` is null only while the start record has not shipped yet (never for long).
    """

    __tablename__ = "request_events"
    __table_args__ = (
        Index("ix_request_events_model_version_started", "model", "version", "started_at"),
        Index("ix_request_events_deployer_started", "deployer_id", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    replica: Mapped[str] = mapped_column(String(64), default="")
    deployer_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    model: Mapped[str | None] = mapped_column(String(160), nullable=True)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    use_case: Mapped[str | None] = mapped_column(String(64), nullable=True)
    endpoint: Mapped[str | None] = mapped_column(String(200), nullable=True)
    stream: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)  # allowed | denied | error
    reason_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    flags: Mapped[Any | None] = mapped_column(JSON, nullable=True)


class RequestBucket(Base):
    """Requests of one hour for one (model, version, stage, deployer, use case); "" = unknown.

    Each request is counted once, in the hour it started: ``requests``, ``allowed``,
    ``denied`` and ``scope_violations`` from its start record; ``errors``, tokens, latency
    and ``flagged`` ({detector: requests flagged}) from its end record.
    """

    __tablename__ = "request_buckets"

    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(160), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), primary_key=True)
    deployer_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    use_case: Mapped[str] = mapped_column(String(64), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    allowed: Mapped[int] = mapped_column(BigInteger, default=0)
    denied: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    scope_violations: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms_sum: Mapped[float] = mapped_column(Float, default=0.0)
    flagged: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
