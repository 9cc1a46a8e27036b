"""Proxy sessions in the database: who holds a token, since when, and how much went through.

The partial unique index (one active session per token) makes the device rule atomic in PostgreSQL:
of any number of simultaneous first requests, one insert wins and the rest see its session.

`claim` and `close_idle_sessions` each own their transaction (they commit, and roll back only their own work), as
counters.py's `add_bytes_out` and `flush_counters` do. `end_for_token`, `end_for_user` and `end_session` are
pieces: they join the caller's transaction and never commit (proxy/subscriptions.py and the admin's `end_session`
commit).
"""
from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError

from ..clock import now
from ..database import db
from ..errors import TryAgainLater
from ..notifications.outbox import emit
from ..tokens.models import AccessToken, usable
from .cache import redis_state, release_holder
from .counters import Usage, usage_recorded
from .models import ProxySession

CLAIM_ATTEMPTS = 3


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
