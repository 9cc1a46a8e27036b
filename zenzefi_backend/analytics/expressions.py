"""SQL expressions analytics needs that PostgreSQL and SQLite spell differently."""
from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class utc_date(FunctionElement):  # noqa: N801 - used like a SQL function
    """The UTC calendar day of a timestamp column."""

    type = sa.Date()
    inherit_cache = True
    name = "utc_date"


@compiles(utc_date, "postgresql")
def _utc_date_postgresql(element, compiler, **kw) -> str:
    return f"CAST(timezone('UTC', {compiler.process(element.clauses, **kw)}) AS DATE)"


@compiles(utc_date, "sqlite")
def _utc_date_sqlite(element, compiler, **kw) -> str:
    # SQLite keeps our timestamps as UTC text ('YYYY-MM-DD HH:MM:SS.ffffff').
    return f"date({compiler.process(element.clauses, **kw)})"


class seconds_between(FunctionElement):  # noqa: N801 - used like a SQL function
    """`end - start` in seconds, for two timestamp columns."""

    type = sa.Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(seconds_between, "postgresql")
def _seconds_between_postgresql(element, compiler, **kw) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


@compiles(seconds_between, "sqlite")
def _seconds_between_sqlite(element, compiler, **kw) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), UTC)


def day_end(day: date) -> datetime:
    """The first instant after `day` (ranges are half-open: start <= t < end)."""
    return day_start(day + timedelta(days=1))


def upsert_for(session_or_dialect) -> type:
    """The dialect's INSERT with ON CONFLICT support (for a session, or a dialect's name)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session_or_dialect if isinstance(session_or_dialect, str) else session_or_dialect.get_bind().dialect.name
    try:
        return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    except KeyError:
        raise RuntimeError(f"no upsert for {dialect}") from None
