"""`Idempotency-Key` for money-moving POSTs (SPEC §2), scoped to the user and kept 24 h.

The key is claimed (committed as `in_progress`) before the view runs, so a concurrent request with the
same key gets 409; the finished response (2xx or 4xx) is stored and replayed byte for byte. A 5xx or a
crash before the response is stored releases the claim, so the client can retry. A process that dies
after the business commit but before storing the response leaves the claim `in_progress`: retries get
409 (never a second charge) until the key expires.

Stored responses can carry token secrets (a purchase shows its secret once, and a replay must show the
same body), so they are encrypted at rest with a key derived from SECRET_KEY.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import wraps

import sqlalchemy as sa
from flask import Response, make_response, request
from flask_jwt_extended import current_user
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from .clock import now
from .database import UTCDateTime, UUIDPrimaryKey, db
from .errors import BadRequest, Conflict, ValidationFailed, ZenzefiError, error_response
from .sealing import Unreadable, seal, unseal

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
RETENTION = timedelta(hours=24)


class IdempotencyKey(UUIDPrimaryKey, db.Model):
    __tablename__ = "idempotency_keys"
    __table_args__ = (sa.UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_id_key"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id"), nullable=False)
    key: Mapped[str] = mapped_column(sa.String(MAX_KEY_LENGTH), nullable=False)
    fingerprint: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    state: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="in_progress")
    response_status: Mapped[int | None] = mapped_column(sa.Integer)
    response_body: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now, index=True)


class KeyReusedWithDifferentRequest(ValidationFailed):
    def __init__(self) -> None:
        super().__init__({HEADER: ["Already used with a different request."]},
                         f"This {HEADER} was already used with a different request.")


class KeyInProgress(Conflict):
    message = "A request with this Idempotency-Key is still being processed."


class StoredResponseUnreadable(Conflict):
    message = "The first response to this Idempotency-Key can no longer be read (the server key changed)."


SEAL_PURPOSE = "idempotent responses"


def _seal(body: bytes) -> str:
    return seal(SEAL_PURPOSE, body)


def _open(sealed: str) -> bytes:
    try:
        return unseal(SEAL_PURPOSE, sealed)
    except Unreadable:
        raise StoredResponseUnreadable() from None


def _fingerprint() -> str:
    body = request.get_json(silent=True)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode() if body is not None \
        else request.get_data()
    return hashlib.sha256(request.method.encode() + b" " + request.path.encode() + b"\n" + canonical).hexdigest()


def _find(user_id: uuid.UUID, key: str) -> IdempotencyKey | None:
    return db.session.scalar(
        sa.select(IdempotencyKey).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
    )


def _claim(user_id: uuid.UUID, key: str, fingerprint: str) -> IdempotencyKey | None:
    """None when this request now owns the key; the stored record when it is a replay."""
    for _ in range(3):
        db.session.add(IdempotencyKey(user_id=user_id, key=key, fingerprint=fingerprint, created_at=now()))
        try:
            db.session.commit()
            return None
        except IntegrityError:
            db.session.rollback()
        existing = _find(user_id, key)
        if existing is None:
            continue  # released or purged in between: try to claim again
        if existing.created_at < now() - RETENTION:
            db.session.execute(sa.delete(IdempotencyKey).where(IdempotencyKey.id == existing.id))
            db.session.commit()
            continue
        if existing.fingerprint != fingerprint:
            raise KeyReusedWithDifferentRequest()
        if existing.state != "completed":
            raise KeyInProgress()
        return existing
    raise KeyInProgress()


def _release(user_id: uuid.UUID, key: str) -> None:
    db.session.rollback()
    db.session.execute(sa.delete(IdempotencyKey).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key))
    db.session.commit()


def _complete(user_id: uuid.UUID, key: str, response: Response) -> None:
    db.session.rollback()
    db.session.execute(
        sa.update(IdempotencyKey)
        .where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
        .values(state="completed", response_status=response.status_code,
                response_body=_seal(response.get_data()))
    )
    db.session.commit()


def idempotent(view: Callable) -> Callable:
    """Place between `@blp.arguments` (validation failures are not stored) and `@blp.response`."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not key.strip() or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise BadRequest(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters.")
        user_id = current_user.id
        stored = _claim(user_id, key, _fingerprint())
        if stored is not None:
            replay = Response(_open(stored.response_body), status=stored.response_status, mimetype="application/json")
            replay.headers["Idempotent-Replayed"] = "true"
            return replay
        try:
            response = make_response(view(*args, **kwargs))
        except ZenzefiError as error:
            response = error_response(error.code, error.message, error.headers, **error.extra)
        except BaseException:
            _release(user_id, key)
            raise
        if response.status_code >= 500:
            _release(user_id, key)
        else:
            _complete(user_id, key, response)
        return response

    return wrapper


def purge_expired(moment: datetime | None = None) -> int:
    cutoff = (moment or now()) - RETENTION
    result = db.session.execute(sa.delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    db.session.commit()
    return result.rowcount or 0
