from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import now
from ..database import Money, UTCDateTime, UUIDPrimaryKey, db

SCOPES = ("full", "certificates_only")
SOURCES = ("purchase", "bundle", "auto_renewal")
EXPIRY_PENDING = "expires_at IS NOT NULL AND expiry_processed_at IS NULL AND revoked_at IS NULL"
GIFTED = "gifted_at IS NOT NULL"


def hash_secret(secret: str) -> str:
    """What `AccessToken.token_hash` holds for a secret (the purchase, a gift, the proxy's lookup)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class AccessToken(UUIDPrimaryKey, db.Model):
    """A purchased token. Only the SHA-256 of its secret is stored."""

    __tablename__ = "access_tokens"
    __table_args__ = (
        sa.Index("ix_access_tokens_user_id_created_at", "user_id", "created_at"),
        sa.CheckConstraint("paid_znc >= 0", name="paid_non_negative"),
        # What the expiry sweep looks for: activated, unrevoked tokens it has not processed yet (stays small).
        sa.Index("ix_access_tokens_expiry_pending", "expires_at",
                 postgresql_where=sa.text(EXPIRY_PENDING), sqlite_where=sa.text(EXPIRY_PENDING)),
        # The daily gift limit counts a user's recent gifts (only gifted rows are indexed).
        sa.Index("ix_access_tokens_user_id_gifted_at", "user_id", "gifted_at",
                 postgresql_where=sa.text(GIFTED), sqlite_where=sa.text(GIFTED)),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), nullable=False)
    token_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    token_hint: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    duration_hours: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    scope: Mapped[str] = mapped_column(sa.String(32), nullable=False, default="full")
    paid_znc: Mapped[Decimal] = mapped_column(Money, nullable=False)
    source: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="purchase")
    bundle_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, sa.ForeignKey("bundles.id"))
    # The PURCHASE ledger entry that paid for this token (shared by every token of one bundle purchase).
    purchase_transaction_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, sa.ForeignKey("transactions.id"),
                                                                      index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set once by the expiry sweep (event, session end, cache) — never by anything else.
    expiry_processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set once when the "expires within 24 h" e-mail was queued, and when auto-renewal bought a replacement.
    expiry_reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    renewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set once by a gift (SPEC §3.9): the secret was rotated and e-mailed there; the owner stays the giver.
    gifted_to_email: Mapped[str | None] = mapped_column(sa.String(255))
    gifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The SHA-256 of the secret the gift replaced: the proxy sweep tombstones it again while the gift is recent, so
    # a Redis blip at gift time cannot leave it cached as valid (as revoked_at does for a revoke).
    retired_token_hash: Mapped[str | None] = mapped_column(sa.String(64))

    def status_at(self, moment: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.activated_at is None:
            return "ready"
        if self.expires_at is not None and self.expires_at <= moment:
            return "expired"
        return "active"

    @property
    def status(self) -> str:
        return self.status_at(now())


class AutoRenewal(db.Model):
    """A user's auto-renewal choice (SPEC §3.9): one row per user who ever set it."""

    __tablename__ = "auto_renewals"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    duration_hours: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=24)
    scope: Mapped[str] = mapped_column(sa.String(32), nullable=False, default="full")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now, onupdate=now)
