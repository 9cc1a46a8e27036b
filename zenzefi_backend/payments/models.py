from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import now
from ..database import Money, UTCDateTime, UUIDPrimaryKey, db

PAYMENT_STATUSES = ("pending", "succeeded", "canceled", "expired")
MAX_RETURN_URL_LENGTH = 2048
MAX_PAYMENT_URL_LENGTH = 2048
MAX_EVENT_ID_LENGTH = 255


class Payment(UUIDPrimaryKey, db.Model):
    """A top-up: `pending` until the provider says `succeeded` or `canceled` (webhook or reconciliation),
    or 24 h pass."""

    __tablename__ = "payments"
    __table_args__ = (
        sa.Index("ix_payments_user_id_created_at", "user_id", "created_at"),
        sa.Index("ix_payments_status_expires_at", "status", "expires_at"),
        # What reconciliation walks: the pending payments of one provider, oldest first.
        sa.Index("ix_payments_pending_provider_created_at", "provider", "created_at",
                 postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'")),
        sa.CheckConstraint("amount_znc > 0", name="amount_znc_positive"),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint("status IN ('pending', 'succeeded', 'canceled', 'expired')", name="status_known"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), nullable=False)
    amount_znc: Mapped[Decimal] = mapped_column(Money, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False)
    amount: Mapped[Decimal] = mapped_column(Money, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="pending")
    provider: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    provider_payment_id: Mapped[str] = mapped_column(sa.String(128), nullable=False, unique=True)
    return_url: Mapped[str | None] = mapped_column(sa.String(MAX_RETURN_URL_LENGTH))
    payment_url: Mapped[str | None] = mapped_column(sa.String(MAX_PAYMENT_URL_LENGTH))  # the provider's checkout
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PaymentWebhookEvent(db.Model):
    """Provider event ids already handled: inserted in the crediting transaction, so a replay is seen there."""

    __tablename__ = "payment_webhook_events"

    event_id: Mapped[str] = mapped_column(sa.String(MAX_EVENT_ID_LENGTH), primary_key=True)
    payment_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("payments.id"), nullable=False,
                                                  index=True)
    event_type: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
