"""Column types and model mixins shared by every domain."""
from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .clock import ensure_utc, now
from .extensions import db


class UTCDateTime(sa.types.TypeDecorator):
    """`timestamptz` on PostgreSQL; always hands back aware UTC datetimes (SQLite forgets the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return ensure_utc(value)

    def process_result_value(self, value: datetime | None, dialect):
        return None if value is None else ensure_utc(value)


class Money(sa.types.TypeDecorator):
    """Numeric(12,2) that always yields Decimal with two places, on every backend."""

    impl = sa.Numeric(12, 2, asdecimal=True)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect):
        if value is None:
            return None
        return Decimal(value).quantize(Decimal("0.01"))

    def process_result_value(self, value, dialect):
        return None if value is None else Decimal(str(value)).quantize(Decimal("0.01"))


class UUIDPrimaryKey:
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now, onupdate=now)


__all__ = ["UTCDateTime", "Money", "UUIDPrimaryKey", "Timestamps", "db"]
