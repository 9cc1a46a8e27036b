"""Daily rollups: what analytics reads instead of the raw rows, so its cost grows with days, not with rows.

- `usage_daily`: one row per user and UTC day with the proxy usage counted that day (written in the same DB
  transaction that adds the usage to the session rows: see rollups.py).
- `ledger_daily` + `analytics_closed_days`: the ledger summed per UTC day, transaction type and reference type,
  and the users registered that day, written once a day is over (a closed day never changes again). Days not
  closed yet (today, and yesterday during the first minutes after midnight) are read live from `transactions`.
"""
from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..accounts.models import User
from ..database import UTCDateTime, db
from ..ledger.models import Transaction

# Wider than a balance: a day's total of every user's entries of one type.
TOTAL = sa.Numeric(18, 2, asdecimal=True)


class UsageDay(db.Model):
    """One user's proxy usage on one UTC day."""

    __tablename__ = "usage_daily"
    __table_args__ = (
        # The global figures scan a range of days; PostgreSQL answers them from the index alone.
        sa.Index("ix_usage_daily_day", "day", postgresql_include=["user_id", "requests", "bytes_in", "bytes_out"]),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), primary_key=True)
    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    requests: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    bytes_in: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    bytes_out: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    sessions: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)


class LedgerDay(db.Model):
    """The ledger entries of one closed UTC day of one transaction type and reference type, counted and summed."""

    __tablename__ = "ledger_daily"

    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    transaction_type: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    reference_type: Mapped[str] = mapped_column(sa.String(32), primary_key=True)  # '' for none
    entries: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    amount: Mapped[Decimal] = mapped_column(TOTAL, nullable=False)


class ClosedDay(db.Model):
    """A UTC day whose ledger rollup is complete, and the users registered that day."""

    __tablename__ = "analytics_closed_days"

    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    new_users: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    closed_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# What the live part (days not closed yet) and the closing of a day read: entries and sign-ups by time.
sa.Index("ix_transactions_created_at", Transaction.created_at)
sa.Index("ix_users_created_at", User.created_at)
