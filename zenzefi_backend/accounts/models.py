from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import now
from ..database import Money, Timestamps, UTCDateTime, UUIDPrimaryKey, db

FREE = "free"
PLANS = (FREE, "premium", "enterprise")


class User(UUIDPrimaryKey, Timestamps, db.Model):
    __tablename__ = "users"
    __table_args__ = (
        sa.CheckConstraint("balance >= 0", name="balance_non_negative"),
        sa.Index("uq_users_username_lower", sa.func.lower(sa.text("username")), unique=True),
    )

    email: Mapped[str] = mapped_column(sa.String(255), nullable=False, unique=True)
    username: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    password_hash: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    full_name: Mapped[str | None] = mapped_column(sa.String(255))
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    is_superuser: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    plan: Mapped[str] = mapped_column(sa.String(20), nullable=False, default="free")
    plan_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    referral_code: Mapped[str] = mapped_column(sa.String(12), nullable=False, unique=True)
    referred_by_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), index=True)
    balance: Mapped[Decimal] = mapped_column(Money, nullable=False, default=Decimal("0.00"))
    email_notifications: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    # When the last "balance below 10 ZNC" e-mail was queued (at most one per 24 h).
    low_balance_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Bumped by a password change: every JWT carrying an older generation stops working.
    jwt_generation: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)

    def plan_at(self, moment: datetime) -> str:
        """The plan that applies at `moment`: a paid plan past its expiry is already free."""
        expires = self.plan_expires_at
        if self.plan != FREE and expires is not None and expires <= moment:
            return FREE
        return self.plan

    @property
    def effective_plan(self) -> str:
        """The plan that applies now."""
        return self.plan_at(now())


class RevokedJwt(db.Model):
    """JWTs revoked before their expiry (logout). Kept in the database so a restart forgets nothing."""

    __tablename__ = "revoked_jwts"

    jti: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
