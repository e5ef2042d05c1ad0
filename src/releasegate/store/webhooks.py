"""Outgoing webhooks: subscriptions, and the outbox of deliveries with their attempt log.

Tables only; the logic lives in ``services.webhooks``. A delivery row is written in the same
transaction as the change it announces (the outbox pattern), so an event exists if and only if
its change committed; a separate loop sends it later.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from releasegate.store.base import Base


class Webhook(Base):
    """An HTTP endpoint subscribed to some events.

    ``secret_enc`` is the signing secret encrypted with a key derived from the server secret:
    it must stay usable for signing, so it cannot be hashed; it is never returned after creation.
    """

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret_enc: Mapped[str] = mapped_column(Text)
    events: Mapped[list[Any]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    removed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class WebhookDelivery(Base):
    """One event to send to one webhook: pending until delivered or given up on (failed)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id"), index=True)
    event: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)
