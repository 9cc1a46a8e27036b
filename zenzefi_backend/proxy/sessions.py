"""Proxy sessions in the database: who holds a token, since when, and how much went through.

The partial unique index (one active session per token) makes the device rule atomic in PostgreSQL:
of any number of simultaneous first requests, one insert wins and the rest see its session.

`claim`, `add_bytes_out`, `flush_counters` and `close_idle_sessions` each own their transaction (they commit, and
roll back only their own work). `end_for_token`, `end_for_user` and `end_session` are pieces: they join the
caller's transaction and never commit (proxy/subscriptions.py and the admin's `end_session` commit).
"""
from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from typing import NamedTuple

import sqlalchemy as sa
from blinker import Namespace
from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError

from ..clock import now
from ..database import UTCDateTime, db
from ..errors import TryAgainLater
from ..notifications.outbox import emit
from ..tokens.models import AccessToken, usable
from .models import ProxySession
from .state import DIRTY_SESSIONS, SESSION_KEY, redis_state, release_holder

CLAIM_ATTEMPTS = 3
FLUSH_BATCH = 100  # sessions whose counters one flush transaction moves


class Usage(NamedTuple):
    """What was just added to a session row: by whom, when, how much."""

    user_id: uuid.UUID
    moment: datetime
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    sessions: int = 0


# Sent with `usages=[Usage, …]` inside the DB transaction that adds them to session rows (a session opened, the
# counter flush, the no-Redis path); receivers write in that same transaction, so what they derive (analytics'
# daily rollup) commits or rolls back with the rows.
usage_recorded = Namespace().signal("proxy.usage-recorded")


def wait_seconds(remaining_seconds: float, idle_seconds: int) -> int:
    """What Retry-After says while another device holds the token: whole seconds, rounded up, 1 … idle."""
    return min(idle_seconds, max(1, math.ceil(remaining_seconds)))


class DeviceInUse(TryAgainLater):
    code = 409
    message = "This token is in use on another device. Try again when that device has been idle."

    def __init__(self, retry_after_seconds: float, *, idle_seconds: int | None = None):
        idle = current_app.config["SESSION_IDLE_SECONDS"] if idle_seconds is None else idle_seconds
        super().__init__(wait_seconds(retry_after_seconds, idle))


def idle_timeout() -> timedelta:
    return timedelta(seconds=current_app.config["SESSION_IDLE_SECONDS"])


def _held_for(active: ProxySession | None, device_id: str, moment: datetime) -> timedelta | None:
    """How much longer the active session keeps `device_id` out; None if the device may use the token now."""
    if active is None or active.device_id == device_id:
        return None
    remaining = idle_timeout() - max(moment - active.last_activity, timedelta(0))
    return remaining if remaining > timedelta(0) else None


def held_by_another_device(token_id: uuid.UUID, device_id: str) -> timedelta | None:
    """What `claim` would decide for this device now, read only: nothing is locked, opened or closed."""
    active = db.session.scalar(
        sa.select(ProxySession).where(ProxySession.token_id == token_id, ProxySession.is_active.is_(True)))
    return _held_for(active, device_id, now())


def _active_session(token_id: uuid.UUID) -> ProxySession | None:
    return db.session.scalar(
        sa.select(ProxySession).where(ProxySession.token_id == token_id, ProxySession.is_active.is_(True))
        .with_for_update().execution_options(populate_existing=True)
    )


def _close(session: ProxySession, moment: datetime, reason: str) -> None:
    session.is_active = False
    session.ended_at = moment
    emit("session.ended", session.user_id, session_id=str(session.id), token_id=str(session.token_id),
         device_id=session.device_id, reason=reason, request_count=session.request_count,
         bytes_in=session.bytes_in, bytes_out=session.bytes_out)


def claim(token_id: uuid.UUID, user_id: uuid.UUID, device_id: str, ip_address: str | None,
          user_agent: str | None, *, count_request: bool = False, bytes_in: int = 0) -> uuid.UUID:
    """The session this device may use the token in, opening one if needed; DeviceInUse if another device
    holds it and has not been idle for SESSION_IDLE_SECONDS. With `count_request` (the no-Redis path) the
    request is counted here too."""
    idle = idle_timeout()
    for _ in range(CLAIM_ATTEMPTS):
        active = _active_session(token_id)
        moment = now()  # after the row lock: the winner of a race may have just written last_activity
        if active is not None and active.device_id == device_id:
            if count_request:
                active.last_activity = moment
                active.request_count += 1
                active.bytes_in += bytes_in
                active.ip_address = ip_address
                usage_recorded.send(None, usages=[Usage(user_id, moment, requests=1, bytes_in=bytes_in)])
            db.session.commit()
            return active.id
        if active is not None:
            held = _held_for(active, device_id, moment)
            if held is not None:
                db.session.rollback()
                raise DeviceInUse(held.total_seconds())
            _close(active, moment, "idle")
            db.session.flush()
        session = ProxySession(
            id=uuid.uuid4(), token_id=token_id, user_id=user_id, device_id=device_id, ip_address=ip_address,
            user_agent=(user_agent or "")[:512] or None, started_at=moment, last_activity=moment,
            request_count=1 if count_request else 0, bytes_in=bytes_in if count_request else 0, bytes_out=0,
            is_active=True,
        )
        db.session.add(session)
        try:
            db.session.flush()
        except IntegrityError:
            db.session.rollback()  # another request opened the session first: look again
            continue
        emit("session.started", user_id, session_id=str(session.id), token_id=str(token_id), device_id=device_id,
             ip_address=ip_address)
        usage_recorded.send(None, usages=[Usage(user_id, moment, requests=session.request_count,
                                                bytes_in=session.bytes_in, sessions=1)])
        db.session.commit()
        return session.id
    raise DeviceInUse(idle.total_seconds())


def add_bytes_out(session_id: uuid.UUID, count: int) -> None:
    """The no-Redis path: count the response bytes straight into the session row."""
    user_id = db.session.scalar(sa.update(ProxySession).where(ProxySession.id == session_id)
                                .values(bytes_out=ProxySession.bytes_out + count).returning(ProxySession.user_id)
                                .execution_options(synchronize_session=False))
    if user_id is not None:
        usage_recorded.send(None, usages=[Usage(user_id, now(), bytes_out=count)])
    db.session.commit()


def end_for_token(token_id: uuid.UUID, reason: str) -> None:
    """Close the token's active session (revoke, expiry). Joins the caller's transaction."""
    active = _active_session(token_id)
    if active is not None:
        _close(active, now(), reason)


def end_for_user(user_id: uuid.UUID, reason: str) -> None:
    """Close every active session of a user (deactivation). Joins the caller's transaction."""
    moment = now()
    for session in db.session.scalars(sa.select(ProxySession).where(ProxySession.user_id == user_id,
                                                                    ProxySession.is_active.is_(True))
                                      .with_for_update()):
        _close(session, moment, reason)
        release_holder(session.token_id)


def end_session(session_id: uuid.UUID, reason: str) -> ProxySession | None:
    session = db.session.get(ProxySession, session_id)
    if session is not None and session.is_active:
        _close(session, now(), reason)
    return session


def flush_counters() -> int:
    """Move the request and byte counters from Redis into the session rows, FLUSH_BATCH sessions per DB
    transaction. Safe on several workers: each batch of counters is taken out of Redis atomically, so it is
    added exactly once (and given back to Redis if the database refuses it)."""
    client = redis_state.client
    flushed = 0
    while True:
        session_ids = sorted(raw.decode() for raw in client.spop(DIRTY_SESSIONS, FLUSH_BATCH) or [])
        if not session_ids:
            return flushed
        pipe = client.pipeline(transaction=True)
        for session_id in session_ids:
            pipe.hgetall(SESSION_KEY + session_id)
            pipe.delete(SESSION_KEY + session_id)
        replies = pipe.execute()
        taken = {session_id: {key.decode(): int(value) for key, value in counters.items()}
                 for session_id, counters in zip(session_ids, replies[::2], strict=True) if counters}
        if not taken:
            continue
        try:
            _add_counters(taken)
        except Exception:
            _give_back(taken)
            raise
        flushed += len(taken)


_SESSIONS = ProxySession.__table__
# One statement for the whole batch (executemany): counters added, last_activity only ever moved forward.
_ADD_COUNTERS = (
    sa.update(_SESSIONS).where(_SESSIONS.c.id == sa.bindparam("session_id"))
    .values(request_count=_SESSIONS.c.request_count + sa.bindparam("add_requests"),
            bytes_in=_SESSIONS.c.bytes_in + sa.bindparam("add_bytes_in"),
            bytes_out=_SESSIONS.c.bytes_out + sa.bindparam("add_bytes_out"),
            last_activity=sa.case((_SESSIONS.c.last_activity < sa.bindparam("seen", type_=UTCDateTime),
                                   sa.bindparam("seen", type_=UTCDateTime)), else_=_SESSIONS.c.last_activity))
)


def _add_counters(taken: dict[str, dict[str, int]]) -> None:
    """One transaction: the rows in session-id order (the same lock order on every worker), then the usage."""
    moment = now()
    rows = []
    for session_id, values in taken.items():
        seen = values.get("last_activity")
        rows.append({"session_id": uuid.UUID(session_id), "add_requests": values.get("requests", 0),
                     "add_bytes_in": values.get("bytes_in", 0), "add_bytes_out": values.get("bytes_out", 0),
                     "seen": datetime.fromtimestamp(seen / 1000, moment.tzinfo) if seen else None})
    db.session.execute(_ADD_COUNTERS, rows)
    owners = dict(db.session.execute(sa.select(ProxySession.id, ProxySession.user_id)
                                     .where(ProxySession.id.in_([row["session_id"] for row in rows]))).all())
    # Counted on the day of the last request of the batch (responses' bytes alone: the day of the flush).
    usage_recorded.send(None, usages=[
        Usage(owners[row["session_id"]], row["seen"] or moment, row["add_requests"], row["add_bytes_in"],
              row["add_bytes_out"])
        for row in rows if row["session_id"] in owners
    ])
    db.session.commit()


def _give_back(taken: dict[str, dict[str, int]]) -> None:
    """The database refused the counters: put them back for the next flush."""
    db.session.rollback()
    pipe = redis_state.client.pipeline(transaction=True)
    for session_id, values in taken.items():
        for field, value in values.items():
            if field == "last_activity":
                pipe.hset(SESSION_KEY + session_id, field, value)
            else:
                pipe.hincrby(SESSION_KEY + session_id, field, value)
        pipe.sadd(DIRTY_SESSIONS, session_id)
    pipe.execute()


def close_idle_sessions() -> int:
    """Close sessions nobody used for SESSION_IDLE_SECONDS, and those of revoked or expired tokens."""
    moment = now()
    cutoff = moment - idle_timeout()
    candidates = db.session.execute(
        sa.select(ProxySession.id, ProxySession.token_id, AccessToken.revoked_at, AccessToken.expires_at,
                  ProxySession.last_activity)
        .join(AccessToken, AccessToken.id == ProxySession.token_id)
        .where(ProxySession.is_active.is_(True))
    ).all()
    closed = 0
    for session_id, token_id, revoked_at, expires_at, last_activity in candidates:
        gone = not usable(revoked_at is not None, expires_at, moment)
        if not gone:
            if last_activity > cutoff:
                continue
            try:
                if redis_state.holder_exists(token_id):
                    continue  # still in use; its counters reach the row at the next flush
            except RedisError:
                pass  # without Redis the database's last_activity is the whole truth
        session = db.session.scalar(
            sa.select(ProxySession).where(ProxySession.id == session_id, ProxySession.is_active.is_(True))
            .with_for_update(skip_locked=True)
        )
        if session is None:
            db.session.rollback()
            continue
        _close(session, moment, "revoked" if revoked_at else "expired" if gone else "idle")
        db.session.commit()
        closed += 1
    return closed
