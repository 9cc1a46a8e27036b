"""Writing the daily rollups. Nothing here runs on the warm proxy path.

Proxy usage: the proxy announces every addition to a session row (`proxy.sessions.usage_recorded`) inside the DB
transaction that makes it — the periodic counter flush, which moves each session's counters out of Redis
exactly once (an atomic take; the second of two overlapping flushes finds nothing); a session opened; and,
while Redis is down, each request and response. The same numbers are added here to the user's row of that UTC
day in that same transaction (`INSERT … ON CONFLICT DO UPDATE SET requests = requests + excluded.requests`), so
the rollup and the session rows commit or roll back together: a delta counted once in the rows is counted once
here.

Ledger and sign-ups: once a UTC day is over (plus CLOSE_AFTER, longer than any DB transaction that stamped an
entry before committing it), `close_days` sums its ledger entries by type and reference type and counts its
new users, once: the day's `analytics_closed_days` row is inserted first, and a second worker closing the same
day finds it there and does nothing.
"""
from __future__ import annotations

import logging
import uuid
from datetime import date, datetime, timedelta

import sqlalchemy as sa

from ..accounts.models import User
from ..clock import now
from ..database import db
from ..ledger.models import Transaction
from ..proxy.sessions import usage_recorded
from .expressions import day_end, day_start, upsert_for, utc_date
from .models import ClosedDay, LedgerDay, UsageDay

log = logging.getLogger(__name__)

CLOSE_AFTER = timedelta(minutes=5)
REFERENCE_TYPE = sa.func.coalesce(Transaction.reference_type, "")


def add_usage_in_transaction(user_id: uuid.UUID, day: date, *, requests: int = 0, bytes_in: int = 0,
                             bytes_out: int = 0, sessions: int = 0) -> None:
    """Add to the user's row of `day` (created at the first addition). Joins the caller's transaction."""
    insert = upsert_for(db.session)(UsageDay).values(user_id=user_id, day=day, requests=requests,
                                                     bytes_in=bytes_in, bytes_out=bytes_out, sessions=sessions)
    db.session.execute(insert.on_conflict_do_update(
        index_elements=[UsageDay.user_id, UsageDay.day],
        set_={
            "requests": UsageDay.requests + insert.excluded.requests,
            "bytes_in": UsageDay.bytes_in + insert.excluded.bytes_in,
            "bytes_out": UsageDay.bytes_out + insert.excluded.bytes_out,
            "sessions": UsageDay.sessions + insert.excluded.sessions,
        },
    ))


def _on_usage_recorded(_sender: object, *, user_id: uuid.UUID, moment: datetime, requests: int = 0,
                       bytes_in: int = 0, bytes_out: int = 0, sessions: int = 0) -> None:
    if requests or bytes_in or bytes_out or sessions:
        add_usage_in_transaction(user_id, moment.date(), requests=requests, bytes_in=bytes_in,
                                 bytes_out=bytes_out, sessions=sessions)


def subscribe() -> None:
    """Write the usage rollup wherever the proxy records usage (create_app calls this; connecting twice is a no-op)."""
    usage_recorded.connect(_on_usage_recorded)


def unsubscribe() -> None:
    """Stop writing the usage rollup (the benchmark measures the flush with and without it)."""
    usage_recorded.disconnect(_on_usage_recorded)


def ledger_totals(start: datetime, end: datetime) -> sa.Select:
    """(day, transaction_type, reference_type, entries, amount) of the entries created in [start, end)."""
    day = utc_date(Transaction.created_at)
    return (
        sa.select(day.label("day"), Transaction.transaction_type, REFERENCE_TYPE.label("reference_type"),
                  sa.func.count().label("entries"), sa.func.sum(Transaction.amount).label("amount"))
        .where(Transaction.created_at >= start, Transaction.created_at < end)
        .group_by(day, Transaction.transaction_type, REFERENCE_TYPE)
    )


def new_users_by_day(start: datetime, end: datetime) -> sa.Select:
    """(day, new_users) of the users registered in [start, end)."""
    day = utc_date(User.created_at)
    return (sa.select(day.label("day"), sa.func.count().label("new_users"))
            .where(User.created_at >= start, User.created_at < end).group_by(day))


def last_closable_day(moment: datetime) -> date:
    """The latest day whose every ledger entry has surely been committed."""
    return (moment - CLOSE_AFTER).date() - timedelta(days=1)


def _first_unclosed_day(last: date) -> date:
    latest = db.session.scalar(sa.select(sa.func.max(ClosedDay.day)))
    if latest is not None:
        return latest + timedelta(days=1)
    earliest = [moment for moment in (db.session.scalar(sa.select(sa.func.min(User.created_at))),
                                      db.session.scalar(sa.select(sa.func.min(Transaction.created_at))))
                if moment is not None]
    return min(moment.date() for moment in earliest) if earliest else last


def close_day(day: date) -> bool:
    """Roll one finished day up; False if another worker already did. Commits."""
    start, end = day_start(day), day_end(day)
    new_users = sa.select(sa.func.count()).select_from(User).where(User.created_at >= start, User.created_at < end)
    claimed = db.session.execute(
        upsert_for(db.session)(ClosedDay)
        .values(day=day, new_users=new_users.scalar_subquery(), closed_at=now())
        .on_conflict_do_nothing(index_elements=[ClosedDay.day])
        .returning(ClosedDay.day)
    ).first()
    if claimed is None:
        db.session.rollback()
        return False
    totals = ledger_totals(start, end).subquery()
    db.session.execute(sa.insert(LedgerDay).from_select(
        ["day", "transaction_type", "reference_type", "entries", "amount"],
        sa.select(sa.literal(day, sa.Date), totals.c.transaction_type, totals.c.reference_type, totals.c.entries,
                  totals.c.amount),
    ))
    db.session.commit()
    return True


def close_days() -> int:
    """Close every finished day not closed yet, oldest first (periodic, with the counter flush); how many."""
    last = last_closable_day(now())
    day = _first_unclosed_day(last)
    db.session.rollback()  # end the read transaction before the first claim
    closed = 0
    while day <= last:
        closed += close_day(day)
        day += timedelta(days=1)
    if closed:
        log.info("analytics: closed days", extra={"days": closed, "through": last.isoformat()})
    return closed
