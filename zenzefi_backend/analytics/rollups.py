"""Writing the daily rollups. Nothing here runs on the warm proxy path.

Proxy usage: the proxy announces every addition to a session row (`proxy.counters.usage_recorded`) inside the DB
transaction that makes it — the periodic counter flush, which moves a batch of sessions' counters out of Redis
exactly once (an atomic take; the second of two overlapping flushes finds nothing); a session opened; and,
while Redis is down, each request and response. The same numbers are added here to the users' rows of that UTC
day in that same transaction (`INSERT … ON CONFLICT DO UPDATE SET requests = requests + excluded.requests`), so
the rollup and the session rows commit or roll back together: a delta counted once in the rows is counted once
here.

Ledger, sign-ups and everyone's usage: once a UTC day is over (plus CLOSE_AFTER, longer than any DB transaction
that stamped an entry before committing it, and than the flush's lag), `close_days` sums its ledger entries by
type and reference type, counts its new users, daily active users, requests and bytes, once: the day's
`analytics_closed_days` row is inserted first, and a second worker closing the same day finds it there and does
nothing. From then on the day never changes: usage flushed later counts on the day it is flushed.
"""
from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from functools import cache

import sqlalchemy as sa

from ..accounts.models import User
from ..clock import now
from ..database import db
from ..ledger.models import Transaction
from ..proxy.counters import Usage, usage_recorded
from .expressions import day_end, day_start, upsert_for, utc_date
from .models import ClosedDay, LastActive, LedgerDay, UsageDay

log = logging.getLogger(__name__)

CLOSE_AFTER = timedelta(minutes=5)
REFERENCE_TYPE = sa.func.coalesce(Transaction.reference_type, "")


def add_usage_in_transaction(usages: Iterable[Usage]) -> None:
    """Add each usage to its user's row of its UTC day (created at the first addition) and move the user's last
    active day forward, in statements whose rows are in (user, day) order, the same lock order on every worker.
    Usage of a day already closed (a flush delayed past CLOSE_AFTER) counts on today instead: a closed day never
    changes. Joins the caller's transaction."""
    today = now().date()
    usages = list(usages)
    last_closed = None
    past_days = sorted({usage.moment.date() for usage in usages if usage.moment.date() < today})
    if past_days:  # rare (around midnight, or a delayed flush): wait for any closing of these days to finish
        for day in past_days:
            _lock_day(day, exclusive=False)
        last_closed = db.session.scalar(sa.select(sa.func.max(ClosedDay.day)))
    totals: dict[tuple[uuid.UUID, date], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for usage in usages:
        day = usage.moment.date()
        if last_closed is not None and day <= last_closed:
            day = max(today, last_closed + timedelta(days=1))
        total = totals[(usage.user_id, day)]
        for index, count in enumerate((usage.requests, usage.bytes_in, usage.bytes_out, usage.sessions)):
            total[index] += count
    rows = [{"user_id": user_id, "day": day, "requests": requests, "bytes_in": bytes_in, "bytes_out": bytes_out,
             "sessions": sessions}
            for (user_id, day), (requests, bytes_in, bytes_out, sessions) in sorted(totals.items()) if
            requests or bytes_in or bytes_out or sessions]
    if not rows:
        return
    add_usage, move_last_active = _usage_statements(db.session.get_bind().dialect.name)
    db.session.execute(add_usage, rows)
    latest: dict[uuid.UUID, date] = {}
    for row in rows:
        if row["requests"]:
            latest[row["user_id"]] = max(row["day"], latest.get(row["user_id"], row["day"]))
    if latest:
        db.session.execute(move_last_active, [{"user_id": user, "day": day} for user, day in sorted(latest.items())])


@cache
def _usage_statements(dialect: str) -> tuple[sa.Insert, sa.Insert]:
    """The two upserts, built once per dialect and run with many rows each (compiled once, sent as one batch)."""
    insert = upsert_for(dialect)
    usage = insert(UsageDay.__table__)
    usage = usage.on_conflict_do_update(
        index_elements=[UsageDay.user_id, UsageDay.day],
        set_={
            "requests": UsageDay.__table__.c.requests + usage.excluded.requests,
            "bytes_in": UsageDay.__table__.c.bytes_in + usage.excluded.bytes_in,
            "bytes_out": UsageDay.__table__.c.bytes_out + usage.excluded.bytes_out,
            "sessions": UsageDay.__table__.c.sessions + usage.excluded.sessions,
        },
    )
    active = insert(LastActive.__table__)
    active = active.on_conflict_do_update(
        index_elements=[LastActive.user_id], set_={"day": active.excluded.day},
        where=LastActive.__table__.c.day < active.excluded.day,  # written once a day per user, never moved back
    )
    return usage, active


def _on_usage_recorded(_sender: object, *, usages: list[Usage]) -> None:
    add_usage_in_transaction(usages)


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
    earliest = [moment.date() for moment in (db.session.scalar(sa.select(sa.func.min(User.created_at))),
                                             db.session.scalar(sa.select(sa.func.min(Transaction.created_at))))
                if moment is not None]
    earliest += [day for day in [db.session.scalar(sa.select(sa.func.min(UsageDay.day)))] if day is not None]
    return min(earliest) if earliest else last


DAY_LOCKS = 0x5A41  # the namespace of the advisory locks that keep a day's closing apart from writes to it


def _lock_day(day: date, *, exclusive: bool) -> None:
    """Until the transaction ends: shared by writers of usage on `day`, exclusive for closing it (PostgreSQL).
    SQLite needs none: a transaction that has written holds the whole database's write lock until it ends."""
    if db.session.get_bind().dialect.name == "postgresql":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        db.session.execute(sa.select(getattr(sa.func, function)(DAY_LOCKS, day.toordinal())))


def usage_totals() -> sa.Select:
    """(day, dau, requests, bytes) of everyone's usage per day; add a WHERE on UsageDay.day."""
    return (sa.select(UsageDay.day, sa.func.count(sa.case((UsageDay.requests > 0, 1))).label("dau"),
                      sa.func.coalesce(sa.func.sum(UsageDay.requests), 0).label("requests"),
                      sa.func.coalesce(sa.func.sum(UsageDay.bytes_in + UsageDay.bytes_out), 0).label("bytes"))
            .group_by(UsageDay.day))


def close_day(day: date) -> bool:
    """Roll one finished day up; False if another worker already did. Commits.

    The day's row is claimed first; then, with the day locked against writers of its usage (who, once it is
    closed, count on today instead), its usage is summed: nothing can land on the day after that."""
    start, end = day_start(day), day_end(day)
    new_users = sa.select(sa.func.count()).select_from(User).where(User.created_at >= start, User.created_at < end)
    claimed = db.session.execute(
        upsert_for(db.session)(ClosedDay)
        .values(day=day, new_users=new_users.scalar_subquery(), dau=0, requests=0, bytes=0, closed_at=now())
        .on_conflict_do_nothing(index_elements=[ClosedDay.day])
        .returning(ClosedDay.day)
    ).first()
    if claimed is None:
        db.session.rollback()
        return False
    _lock_day(day, exclusive=True)
    usage = db.session.execute(usage_totals().where(UsageDay.day == day)).first()
    if usage is not None:
        db.session.execute(sa.update(ClosedDay).where(ClosedDay.day == day)
                           .values(dau=usage.dau, requests=usage.requests, bytes=usage.bytes))
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
