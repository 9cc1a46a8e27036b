from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import Money, Timestamps, UUIDPrimaryKey, db
from ..money import round_down

MAX_TOKEN_COUNT = 1000
MAX_DISCOUNT_PERCENT = 90


class Bundle(UUIDPrimaryKey, Timestamps, db.Model):
    """`token_count` tokens of one duration and scope at a discount; prices are computed by the server."""

    __tablename__ = "bundles"
    __table_args__ = (
        sa.CheckConstraint(f"token_count BETWEEN 1 AND {MAX_TOKEN_COUNT}", name="token_count_range"),
        sa.CheckConstraint(f"discount_percent BETWEEN 0 AND {MAX_DISCOUNT_PERCENT}", name="discount_percent_range"),
        sa.CheckConstraint("total_price >= 0 AND total_price <= base_price", name="total_price_range"),
    )

    name: Mapped[str] = mapped_column(sa.String(100), nullable=False, unique=True)
    description: Mapped[str | None] = mapped_column(sa.String(1000))
    token_count: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    duration_hours: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    scope: Mapped[str] = mapped_column(sa.String(32), nullable=False, default="full")
    discount_percent: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    base_price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    total_price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)

    @property
    def savings(self) -> Decimal:
        return self.base_price - self.total_price

    @property
    def price_per_token(self) -> Decimal:
        """What each token of the bundle is paid at (and refunded from): the total's share, rounded down."""
        return round_down(self.total_price / self.token_count)
