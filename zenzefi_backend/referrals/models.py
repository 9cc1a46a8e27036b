from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import now
from ..database import Money, UTCDateTime, UUIDPrimaryKey, db


class ReferralBonus(UUIDPrimaryKey, db.Model):
    """The one bonus a referee's first qualifying purchase earned their referrer, and what was clawed back."""

    __tablename__ = "referral_bonuses"
    __table_args__ = (
        sa.CheckConstraint("referrer_id <> referee_id", name="not_self"),
        sa.CheckConstraint("bonus_amount > 0 AND bonus_amount < purchase_amount", name="bonus_range"),
        sa.CheckConstraint("clawed_back >= 0 AND clawback_shortfall >= 0", name="clawback_non_negative"),
        sa.CheckConstraint("clawed_back + clawback_shortfall <= bonus_amount", name="clawback_within_bonus"),
        sa.CheckConstraint("refunded_amount >= 0 AND refunded_amount <= purchase_amount", name="refunded_range"),
    )

    referrer_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), nullable=False, index=True)
    # At most one bonus per referee, ever: the database says so, whatever the application does.
    referee_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), nullable=False, unique=True)
    purchase_transaction_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("transactions.id"),
                                                               nullable=False, unique=True)
    purchase_amount: Mapped[Decimal] = mapped_column(Money, nullable=False)
    bonus_amount: Mapped[Decimal] = mapped_column(Money, nullable=False)
    # Everything refunded so far for tokens of the qualifying purchase: clawbacks are computed on the running
    # total, so the roundings of many small refunds never add up to less than the whole bonus.
    refunded_amount: Mapped[Decimal] = mapped_column(Money, nullable=False, default=Decimal("0.00"))
    clawed_back: Mapped[Decimal] = mapped_column(Money, nullable=False, default=Decimal("0.00"))
    # Clawbacks that were due but found the referrer's balance short (audited, not taken).
    clawback_shortfall: Mapped[Decimal] = mapped_column(Money, nullable=False, default=Decimal("0.00"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)

    @property
    def clawback_settled(self) -> Decimal:
        """Clawbacks already dealt with: taken from the referrer, or audited as a shortfall."""
        return self.clawed_back + self.clawback_shortfall
