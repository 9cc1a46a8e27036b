"""Daily rollups: what analytics reads instead of the raw rows, so its cost grows with days, not with rows.

- `usage_daily`: one row per user and UTC day with the proxy usage counted that day (written in the same DB
  transaction that adds the usage to the session rows: see rollups.py).
- `usage_last_active`: each user's latest UTC day with a proxied request, so "users active since day X" (MAU,
  active users of a period) is one index range count, not a distinct count over a month of rows.
- `ledger_daily` + `analytics_closed_days`: once a UTC day is over, its ledger entries summed per transaction type
  and reference type, and its sign-ups, daily active users, requests and bytes. A closed day never changes again
  (usage flushed after its day was closed counts on the day it is flushed). Days not closed yet (today, and
  yesterday during the first minutes after midnight) are read live from `transactions`, `users` and
  `usage_daily`.
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
    __table_args__ = (sa.Index("ix_usage_daily_day", "day"),)  # closing a day, and today's global figures

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), primary_key=True)
    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    requests: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    bytes_in: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    bytes_out: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    sessions: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)


class LastActive(db.Model):
    """A user's latest UTC day with at least one proxied request."""

    __tablename__ = "usage_last_active"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), primary_key=True)
    day: Mapped[date] = mapped_column(sa.Date, nullable=False, index=True)


class LedgerDay(db.Model):
    """The ledger entries of one closed UTC day of one transaction type and reference type, counted and summed."""

    __tablename__ = "ledger_daily"

    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    transaction_type: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    reference_type: Mapped[str] = mapped_column(sa.String(32), primary_key=True)  # '' for none
    entries: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    amount: Mapped[Decimal] = mapped_column(TOTAL, nullable=False)


class ClosedDay(db.Model):
    """A UTC day whose rollups are final: its ledger rollup is complete, and its everyone-together figures."""

    __tablename__ = "analytics_closed_days"

    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    new_users: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    dau: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    requests: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    closed_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# What the live part (days not closed yet) and the closing of a day read: entries and sign-ups by time.
sa.Index("ix_transactions_created_at", Transaction.created_at)
sa.Index("ix_users_created_at", User.created_at)
