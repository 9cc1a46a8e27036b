from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import now
from ..database import Money, UTCDateTime, UUIDPrimaryKey, db

TRANSACTION_TYPES = ("deposit", "purchase", "refund", "referral_bonus", "referral_clawback", "adjustment", "plan")


class Transaction(UUIDPrimaryKey, db.Model):
    """One row per balance change, written in the same DB transaction as the change."""

    __tablename__ = "transactions"
    __table_args__ = (
        sa.Index("ix_transactions_user_id_created_at", "user_id", "created_at"),
        sa.CheckConstraint("amount <> 0", name="amount_not_zero"),
        sa.CheckConstraint("balance_after >= 0", name="balance_after_non_negative"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), nullable=False)
    amount: Mapped[Decimal] = mapped_column(Money, nullable=False)
    balance_after: Mapped[Decimal] = mapped_column(Money, nullable=False)
    transaction_type: Mapped[str] = mapped_column(sa.String(32), nullable=False, index=True)
    description: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    reference_type: Mapped[str | None] = mapped_column(sa.String(32))
    reference_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
