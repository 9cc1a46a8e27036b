"""Column types and model mixins shared by every domain, and what runs after a commit."""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy import event
from sqlalchemy.orm import Mapped, Session, SessionTransaction, mapped_column

from .clock import ensure_utc, now
from .errors import database_unreachable
from .extensions import db
from .money import quantize


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
        return quantize(Decimal(value))

    def process_result_value(self, value, dialect):
        return None if value is None else quantize(Decimal(str(value)))


class UUIDPrimaryKey:
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now, onupdate=now)


_AFTER_COMMIT = "zenzefi_after_commit"
_WHEN_COMMITTED = "zenzefi_when_committed"  # registered during the transaction
_COMMITTED = "zenzefi_committed"  # its transaction committed; run when `commit()` returns

log = logging.getLogger(__name__)


def after_commit(action: Callable[[], None], *, once_as: str | None = None) -> None:
    """Run `action` once the session's current transaction commits (at once when none is open); a rollback, or
    a session closed without a commit, drops it. Actions registered `once_as` the same name run once per
    transaction. They run inside the commit, outside any transaction, so they must not use the session (see
    `when_committed` for work that does)."""
    session = db.session()
    if not session.in_transaction():
        action()
        return
    session.info.setdefault(_AFTER_COMMIT, {})[once_as or action] = action


def when_committed(action: Callable[[], None]) -> None:
    """Run `action` when the `commit()` of the session's current transaction has returned (at once when none is
    open); a rollback drops it. Unlike `after_commit` it may use the session: its work is a new transaction,
    which it commits itself. A failing action is logged and its own work rolled back; the committed change and
    the other actions stand (`events.announce` sends domain events this way)."""
    session = db.session()
    if not session.in_transaction():
        _run_guarded(session, action)
        return
    session.info.setdefault(_WHEN_COMMITTED, []).append(action)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for action in session.info.pop(_AFTER_COMMIT, {}).values():
        action()
    if _WHEN_COMMITTED in session.info:
        session.info.setdefault(_COMMITTED, []).extend(session.info.pop(_WHEN_COMMITTED))


@event.listens_for(Session, "after_transaction_end")
def _drop_after_rollback(session: Session, transaction: SessionTransaction) -> None:
    # After a commit the actions are already gone (after_commit runs first); what is left was rolled back.
    if transaction.parent is None:
        session.info.pop(_AFTER_COMMIT, None)
        session.info.pop(_WHEN_COMMITTED, None)


def _run_guarded(session: Session, action: Callable[[], None]) -> None:
    try:
        action()
    except Exception:
        log.exception("an action after a commit failed; the committed change stands")
        try:
            session.rollback()
        except Exception:
            log.warning("cannot roll back after a failed action", exc_info=True)


class CommitHookSession(FlaskSession):
    """`db.session`'s class: once a commit has returned, the `when_committed` actions of that transaction run."""

    def commit(self) -> None:
        super().commit()
        for action in self.info.pop(_COMMITTED, ()):  # taken first: an action's own commit runs its own actions
            _run_guarded(self, action)


# The factory is built by `extensions.db`; its session class is set here, next to the hook it serves.
db.session.session_factory.class_ = CommitHookSession


__all__ = ["UTCDateTime", "Money", "UUIDPrimaryKey", "Timestamps", "db", "after_commit", "when_committed"]


PURGE_BATCH = 5000


def purge_in_batches(model: type, *conditions: sa.ColumnElement[bool]) -> int:
    """Delete the rows of `model` matching `conditions` in short batches (no long lock on a big table); the
    number deleted. Safe on several workers at once: on PostgreSQL each batch skips rows another worker is
    deleting; everywhere a row is deleted once, and a worker stops when it finds nothing left to delete."""
    purged = 0
    while True:
        batch = (
            sa.select(model.id).where(*conditions).limit(PURGE_BATCH)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders no lock clause
        )
        deleted = db.session.execute(
            sa.delete(model).where(model.id.in_(batch)).execution_options(synchronize_session=False)
        ).rowcount or 0
        db.session.commit()
        if deleted == 0:
            return purged
        purged += deleted


def release_session_on_teardown(app: Flask) -> None:
    """Call right after `db.init_app(app)`: Flask runs teardowns in reverse order, so this one ends the session
    before Flask-SQLAlchemy's `session.remove()` (which then finds none). That end-of-request ROLLBACK fails when
    the server dropped the connection after the request's last query (PostgreSQL restarting: 57P01); raised from
    a teardown, the error escapes every error handler and the worker answers 500 instead of the response already
    made. A connection the server dropped holds nothing uncommitted, so that failure is logged and the session
    discarded (its connection invalidated, never pooled again); any other failure still raises."""

    @app.teardown_appcontext
    def _release_session(_error: BaseException | None) -> None:
        try:
            db.session.remove()
        except Exception as error:
            if not database_unreachable(error):
                raise
            log.warning("database connection lost before the end-of-request rollback; session discarded",
                        extra={"error_type": type(getattr(error, "orig", None) or error).__name__})
            db.session.registry().invalidate()
            db.session.registry.clear()
