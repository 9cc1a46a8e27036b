from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import now
from ..database import UTCDateTime, UUIDPrimaryKey, db

EVENT_TYPES = (
    "token.purchased", "token.activated", "token.revoked", "token.expired", "balance.topped_up", "balance.low",
    "referral.bonus_awarded", "session.started", "session.ended",
)


class OutboxEvent(UUIDPrimaryKey, db.Model):
    """A business event, written in the transaction that caused it; relayed to workers later."""

    __tablename__ = "outbox_events"
    __table_args__ = (sa.Index("ix_outbox_events_pending", "dispatched_at", "created_at"),)

    event_type: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
