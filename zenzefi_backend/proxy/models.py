from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import now
from ..database import UTCDateTime, UUIDPrimaryKey, db


class ProxySession(UUIDPrimaryKey, db.Model):
    """One device's use of one token, from its first request until it goes idle, is revoked or ended."""

    __tablename__ = "proxy_sessions"
    __table_args__ = (
        # At most one device holds a token: the database decides when Redis cannot.
        sa.Index("uq_proxy_sessions_active_token", "token_id", unique=True,
                 postgresql_where=sa.text("is_active"), sqlite_where=sa.text("is_active")),
        sa.Index("ix_proxy_sessions_user_id_started_at", "user_id", "started_at"),
    )

    token_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("access_tokens.id"), nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), nullable=False)
    device_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    ip_address: Mapped[str | None] = mapped_column(sa.String(64))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
    last_activity: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    request_count: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    bytes_in: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    bytes_out: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
