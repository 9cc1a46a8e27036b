"""The figures of the two analytics endpoints, read from the daily rollups (see models.py and rollups.py).

Periods are whole UTC calendar days ending today: `day` is today, `week` the last 7 days and `month` the last
30 days, today included. `start_time` is the first day's 00:00 UTC and `end_time` the next midnight after today
(the window is half-open), so the `daily` series has exactly 1, 7 or 30 entries, zeros included.
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from ..clock import now
from ..database import db
from ..ledger.models import Transaction
from ..money import quantize
from ..proxy.models import ProxySession
from ..tokens.models import AccessToken
from .expressions import day_end, day_start, seconds_between, utc_date
from .models import ClosedDay, LastActive, LedgerDay, UsageDay
from .rollups import ledger_totals, new_users_by_day, usage_totals

PERIOD_DAYS = {"day": 1, "week": 7, "month": 30}
MAU_DAYS = 30
# What a user spent: tokens and bundles, plans, minus refunds.
SPEND_TYPES = ("purchase", "plan", "refund")
ZERO = Decimal("0.00")


@dataclass(frozen=True)
class Window:
    period: str
    first: date
    last: date

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=offset) for offset in range((self.last - self.first).days + 1)]

    @property
    def start_time(self) -> datetime:
        return day_start(self.first)

    @property
    def end_time(self) -> datetime:
        return day_end(self.last)


def window_of(period: str, moment: datetime | None = None) -> Window:
    today = (moment or now()).date()
    return Window(period, today - timedelta(days=PERIOD_DAYS[period] - 1), today)


def _money(value: Decimal | float | int | None) -> Decimal:
    return ZERO if value is None else quantize(Decimal(str(value)))


def user_usage(user_id: uuid.UUID, window: Window) -> dict[str, Any]:
    """One user's figures for the window (GET /analytics/usage)."""
    usage = {row.day: row for row in db.session.execute(
        sa.select(UsageDay.day, UsageDay.requests, UsageDay.bytes_in, UsageDay.bytes_out, UsageDay.sessions)
        .where(UsageDay.user_id == user_id, UsageDay.day >= window.first, UsageDay.day <= window.last)
    )}
    entry_day = utc_date(Transaction.created_at)
    spent = {day: -_money(total) for day, total in db.session.execute(
        sa.select(entry_day, sa.func.sum(Transaction.amount))
        .where(Transaction.user_id == user_id, Transaction.transaction_type.in_(SPEND_TYPES),
               Transaction.created_at >= window.start_time, Transaction.created_at < window.end_time)
        .group_by(entry_day)
    )}
    moment = now()
    usable = sa.or_(AccessToken.status_is("ready", moment), AccessToken.status_is("active", moment))
    active_tokens, active_sessions, average_seconds = db.session.execute(sa.select(
        sa.select(sa.func.count()).select_from(AccessToken)
        .where(AccessToken.user_id == user_id, usable).scalar_subquery(),
        sa.select(sa.func.count()).select_from(ProxySession)
        .where(ProxySession.user_id == user_id, ProxySession.is_active.is_(True)).scalar_subquery(),
        sa.select(sa.func.avg(seconds_between(ProxySession.started_at, ProxySession.last_activity)))
        .where(ProxySession.user_id == user_id, ProxySession.started_at >= window.start_time,
               ProxySession.started_at < window.end_time).scalar_subquery(),
    )).one()

    daily = []
    for day in window.days:
        row = usage.get(day)
        requests, bytes_in, bytes_out, sessions = (row.requests, row.bytes_in, row.bytes_out, row.sessions) if row \
            else (0, 0, 0, 0)
        daily.append({"date": day, "requests": requests, "bytes": bytes_in + bytes_out, "bytes_in": bytes_in,
                      "bytes_out": bytes_out, "sessions": sessions, "spend_znc": spent.get(day, ZERO)})
    return {
        "period": window.period,
        "start_time": window.start_time,
        "end_time": window.end_time,
        "total_requests": sum(entry["requests"] for entry in daily),
        "total_bytes_transferred": sum(entry["bytes"] for entry in daily),
        "total_sessions": sum(entry["sessions"] for entry in daily),
        "active_sessions": active_sessions,
        "active_tokens": active_tokens,
        "avg_session_duration_minutes": round(max(float(average_seconds or 0), 0.0) / 60, 2),
        "spend_znc": sum((entry["spend_znc"] for entry in daily), ZERO),
        "daily": daily,
    }


@dataclass
class LedgerDayFigures:
    """One day's money figures, tallied from the ledger by transaction type and reference type."""

    new_users: int = 0
    token_purchases: int = 0
    bundle_purchases: int = 0
    revenue_znc: Decimal = ZERO
    refunds_znc: Decimal = ZERO
    deposits_znc: Decimal = ZERO
    referral_bonuses_znc: Decimal = ZERO
    referral_clawbacks_znc: Decimal = ZERO

    def add(self, transaction_type: str, reference_type: str, entries: int, amount: Decimal) -> None:
        """The one place that says which ledger entries make which figure (amounts are signed: debits < 0)."""
        if transaction_type == "purchase" and reference_type == "access_token":
            self.token_purchases += entries
        elif transaction_type == "purchase" and reference_type == "bundle":
            self.bundle_purchases += entries
        if transaction_type in ("purchase", "plan"):
            self.revenue_znc -= amount
        elif transaction_type == "refund":
            self.refunds_znc += amount
        elif transaction_type == "deposit":
            self.deposits_znc += amount
        elif transaction_type == "referral_bonus":
            self.referral_bonuses_znc += amount
        elif transaction_type == "referral_clawback":
            self.referral_clawbacks_znc -= amount


MONEY_FIGURES = ("revenue_znc", "refunds_znc", "deposits_znc", "referral_bonuses_znc", "referral_clawbacks_znc")
COUNT_FIGURES = ("new_users", "token_purchases", "bundle_purchases")


@dataclass
class DayFigures:
    """Everyone's figures of one day: usage and sign-ups, and the money tallied from the ledger."""

    dau: int = 0
    requests: int = 0
    bytes: int = 0
    ledger: LedgerDayFigures = field(default_factory=LedgerDayFigures)


def _days_of(window: Window) -> dict[date, DayFigures]:
    """Closed days from their rollups; the others (today, or any day not closed yet) live from the ledger, the
    users and the usage rollup — a day or two of rows."""
    figures: dict[date, DayFigures] = defaultdict(DayFigures)
    closed = db.session.execute(
        sa.select(ClosedDay.day, ClosedDay.new_users, ClosedDay.dau, ClosedDay.requests, ClosedDay.bytes)
        .where(ClosedDay.day >= window.first, ClosedDay.day <= window.last)
    ).all()
    for row in closed:
        figures[row.day] = DayFigures(row.dau, row.requests, row.bytes, LedgerDayFigures(new_users=row.new_users))
    for row in db.session.execute(
        sa.select(LedgerDay.day, LedgerDay.transaction_type, LedgerDay.reference_type, LedgerDay.entries,
                  LedgerDay.amount)
        .where(LedgerDay.day >= window.first, LedgerDay.day <= window.last)
    ):
        figures[row.day].ledger.add(row.transaction_type, row.reference_type, row.entries, _money(row.amount))
    closed_days = {row.day for row in closed}
    open_days = [day for day in window.days if day not in closed_days]
    if not open_days:
        return figures
    live_start = day_start(open_days[0])
    for row in db.session.execute(ledger_totals(live_start, window.end_time)):
        if row.day not in closed_days:
            figures[row.day].ledger.add(row.transaction_type, row.reference_type, row.entries, _money(row.amount))
    for day, new_users in db.session.execute(new_users_by_day(live_start, window.end_time)):
        if day not in closed_days:
            figures[day].ledger.new_users = new_users
    for row in db.session.execute(usage_totals().where(UsageDay.day >= open_days[0], UsageDay.day <= window.last)):
        if row.day not in closed_days:
            figures[row.day].dau, figures[row.day].requests, figures[row.day].bytes = \
                row.dau, int(row.requests), int(row.bytes)
    return figures


def global_figures(window: Window) -> dict[str, Any]:
    """Everyone's figures for the window (GET /analytics/admin/global)."""
    mau_first = window.last - timedelta(days=MAU_DAYS - 1)
    active_users, mau = db.session.execute(
        sa.select(sa.func.count(sa.case((LastActive.day >= window.first, 1))), sa.func.count())
        .where(LastActive.day >= mau_first)
    ).one()
    days = _days_of(window)

    daily = []
    for day in window.days:
        figures = days.get(day) or DayFigures()
        entry: dict[str, Any] = {"date": day, "dau": figures.dau, "requests": figures.requests,
                                 "bytes": figures.bytes}
        entry.update({name: getattr(figures.ledger, name) for name in COUNT_FIGURES + MONEY_FIGURES})
        daily.append(entry)
    totals: dict[str, Any] = {name: sum(entry[name] for entry in daily) for name in COUNT_FIGURES}
    totals.update({name: sum((entry[name] for entry in daily), ZERO) for name in MONEY_FIGURES})
    return {
        "period": window.period,
        "start_time": window.start_time,
        "end_time": window.end_time,
        **totals,
        "active_users": active_users,
        "dau": daily[-1]["dau"],
        "mau": mau,
        "total_proxy_requests": sum(entry["requests"] for entry in daily),
        "total_bytes_transferred": sum(entry["bytes"] for entry in daily),
        "daily": daily,
    }
