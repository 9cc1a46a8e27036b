"""Access tokens and their status: each meaning of "status" is defined once, here, for Python and SQL alike.

A token is `ready` (bought, never activated), `active` (activated, its clock running), `expired` (activated, its
clock run out) or `revoked`. Two questions that sound alike are answered by separate names:
- `usable_at(moment)`: it can still be used — not revoked and not past its expiry; a token never activated is
  usable (its first proxied request activates it). What the user's "active only" list, the admin's
  `active_token_count`, the proxy's admission and its session sweep mean.
- `in_use_at(moment)`: its status is `active` — activated, not revoked, not expired; what the `active_tokens`
  gauge counts.
The Lua ADMIT script (proxy/admission.py) is the only other copy of `usable_at`; tests/proxy/test_status_parity.py
holds the two equal over every state.
"""
from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.hybrid import hybrid_method
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import now
from ..database import Money, UTCDateTime, UUIDPrimaryKey, db

SCOPES = ("full", "certificates_only")
SOURCES = ("purchase", "bundle", "auto_renewal")
EXPIRY_PENDING = "expires_at IS NOT NULL AND expiry_processed_at IS NULL AND revoked_at IS NULL"
GIFTED = "gifted_at IS NOT NULL"
STATUSES = ("ready", "active", "expired", "revoked")


def past_expiry(expires_at: datetime | None, moment: datetime) -> bool:
    """The clock has run out (a token not activated yet has no expiry)."""
    return expires_at is not None and expires_at <= moment


def usable(revoked: bool, expires_at: datetime | None, moment: datetime) -> bool:
    """`AccessToken.usable_at` for a token known by these facts (the proxy's cached copy)."""
    return not revoked and not past_expiry(expires_at, moment)


def status_of(revoked: bool, activated: bool, expires_at: datetime | None, moment: datetime) -> str:
    if revoked:
        return "revoked"
    if not activated:
        return "ready"
    return "expired" if past_expiry(expires_at, moment) else "active"


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

    @hybrid_method
    def status_at(self, moment: datetime) -> str:
        return status_of(self.revoked_at is not None, self.activated_at is not None, self.expires_at, moment)

    @status_at.inplace.expression
    @classmethod
    def _status_at_expression(cls, moment: datetime) -> sa.ColumnElement[str]:
        return sa.case(
            (cls.revoked_at.is_not(None), "revoked"),
            (cls.activated_at.is_(None), "ready"),
            (cls._past_expiry(moment), "expired"),
            else_="active",
        )

    @hybrid_method
    def usable_at(self, moment: datetime) -> bool:
        return usable(self.revoked_at is not None, self.expires_at, moment)

    @usable_at.inplace.expression
    @classmethod
    def _usable_at_expression(cls, moment: datetime) -> sa.ColumnElement[bool]:
        return sa.and_(cls.revoked_at.is_(None), cls._before_expiry(moment))

    @hybrid_method
    def in_use_at(self, moment: datetime) -> bool:
        return self.status_at(moment) == "active"

    @in_use_at.inplace.expression
    @classmethod
    def _in_use_at_expression(cls, moment: datetime) -> sa.ColumnElement[bool]:
        return sa.and_(cls.usable_at(moment), cls.activated_at.is_not(None))

    @hybrid_method
    def expired_at(self, moment: datetime) -> bool:
        return self.status_at(moment) == "expired"

    @expired_at.inplace.expression
    @classmethod
    def _expired_at_expression(cls, moment: datetime) -> sa.ColumnElement[bool]:
        return sa.and_(cls.revoked_at.is_(None), cls.activated_at.is_not(None), cls._past_expiry(moment))

    @classmethod
    def _past_expiry(cls, moment: datetime) -> sa.ColumnElement[bool]:
        return sa.and_(cls.expires_at.is_not(None), cls.expires_at <= moment)

    @classmethod
    def _before_expiry(cls, moment: datetime) -> sa.ColumnElement[bool]:
        """`not _past_expiry`, written as the plain conditions an index can serve."""
        return sa.or_(cls.expires_at.is_(None), cls.expires_at > moment)

    @classmethod
    def status_is(cls, status: str, moment: datetime) -> sa.ColumnElement[bool]:
        """SQL: `status_at(moment) == status`, each status as the plain conditions an index can serve."""
        return {
            "revoked": cls.revoked_at.is_not(None),
            "ready": sa.and_(cls.revoked_at.is_(None), cls.activated_at.is_(None)),
            "active": cls.in_use_at(moment),
            "expired": cls.expired_at(moment),
        }[status]

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
