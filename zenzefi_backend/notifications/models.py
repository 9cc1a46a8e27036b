"""The outbox and what the notifications domain delivers from it: e-mails and outgoing webhooks.

Every row here is written in a DB transaction and delivered later by RQ jobs; the database, not Redis,
remembers what is still to send, so an outage of Redis or a worker delays a delivery but never loses it.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import now
from ..database import Timestamps, UTCDateTime, UUIDPrimaryKey, db

EVENT_TYPES = (
    "token.purchased", "token.activated", "token.revoked", "token.expired", "balance.topped_up", "balance.low",
    "referral.bonus_awarded", "session.started", "session.ended",
)
TEST_EVENT = "test.ping"
# Pending rows are picked up when `next_attempt_at` has come; a claimed row's `next_attempt_at` is pushed
# past the attempt's longest duration (a lease), so a worker that dies mid-attempt only delays a retry.
DELIVERY_STATES = ("pending", "succeeded", "failed")


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


class EmailMessage(UUIDPrimaryKey, db.Model):
    """One e-mail to send. The body can carry a token secret (gift, auto-renewal), so it is sealed at rest
    and dropped once sent; `dedupe_key` makes "once per token" and similar rules hold under concurrency."""

    __tablename__ = "email_messages"
    __table_args__ = (sa.Index("ix_email_messages_due", "status", "next_attempt_at"),)

    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="SET NULL"),
                                                      index=True)
    to_address: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    kind: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    subject: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    body_sealed: Mapped[str | None] = mapped_column(sa.Text)
    dedupe_key: Mapped[str | None] = mapped_column(sa.String(160), unique=True)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
    last_error: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEndpoint(UUIDPrimaryKey, Timestamps, db.Model):
    """A user's webhook receiver. The signing secret is sealed at rest (it must be read back to sign)."""

    __tablename__ = "webhook_endpoints"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), nullable=False, index=True)
    url: Mapped[str] = mapped_column(sa.String(2048), nullable=False)
    events: Mapped[list[str]] = mapped_column(sa.JSON, nullable=False, default=list)
    # When each of `events` was subscribed to (ISO 8601): an endpoint gets only events that happened since.
    subscribed_at: Mapped[dict[str, str]] = mapped_column(sa.JSON, nullable=False, default=dict,
                                                          server_default=sa.text("'{}'"))
    secret_sealed: Mapped[str] = mapped_column(sa.Text, nullable=False)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    disabled_reason: Mapped[str | None] = mapped_column(sa.String(64))
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(UUIDPrimaryKey, db.Model):
    """One message to one endpoint, retried with the same `message_id` (the `webhook-id` header)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("endpoint_id", "message_id", name="uq_webhook_deliveries_endpoint_id_message_id"),
        sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        sa.Index("ix_webhook_deliveries_endpoint_id_created_at", "endpoint_id", "created_at"),
    )

    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False)
    message_id: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    event_type: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    response_status: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
