"""The token expiry sweep (SPEC §4, every 5 min): each expired token is processed exactly once.

Processing a token = the `token.expired` outbox event and, after the commit, `events.token_expired` (the proxy
clears its cache entry and device holder and ends its session).
The proxy already refuses an expired token by the clock (the cached `expires_at`), so this sweep is about
telling the owner and tidying up, not about access.

Exactly once, with any number of workers running the sweep at the same moment:
- PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED` hands each token row to one worker; the others skip it;
- everywhere (SQLite has no row locks): the conditional `UPDATE … WHERE expiry_processed_at IS NULL`
  succeeds for one worker only, and the event is written in the same transaction, so a worker that loses
  (or crashes before its commit) writes nothing.
"""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa

from .. import events
from ..clock import now
from ..database import db
from ..notifications.outbox import emit
from .models import AccessToken

BATCH_SIZE = 200


def _pending(moment: datetime) -> sa.Select:
    return (
        sa.select(AccessToken.id)
        .where(AccessToken.expired_at(moment), AccessToken.expiry_processed_at.is_(None))
        .order_by(AccessToken.expires_at)
        .limit(BATCH_SIZE)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders no lock clause
    )


def _claim(token_id: uuid.UUID, moment: datetime) -> sa.Row | None:
    """Mark the token processed if nobody has; the row back only for the one worker that did."""
    return db.session.execute(
        sa.update(AccessToken)
        .where(AccessToken.id == token_id, AccessToken.expiry_processed_at.is_(None),
               AccessToken.revoked_at.is_(None))
        .values(expiry_processed_at=moment)
        .returning(AccessToken.id, AccessToken.user_id, AccessToken.token_hash, AccessToken.activated_at,
                   AccessToken.expires_at, AccessToken.duration_hours)
        .execution_options(synchronize_session=False)
    ).first()


def expire_tokens(moment: datetime | None = None) -> int:
    """Process every activated, unrevoked token past `expires_at` not processed yet; the number processed."""
    moment = moment or now()
    processed = 0
    while True:
        candidates = db.session.scalars(_pending(moment)).all()
        claimed = []
        for token_id in candidates:
            row = _claim(token_id, moment)
            if row is None:
                continue  # another worker got there first (SQLite, where nothing is locked)
            emit("token.expired", row.user_id, token_id=str(row.id),
                 activated_at=row.activated_at.isoformat() if row.activated_at else None,
                 expires_at=row.expires_at.isoformat(), duration_hours=row.duration_hours)
            events.announce(events.token_expired, token_id=row.id, token_hash=row.token_hash)
            claimed.append(row)
        db.session.commit()
        processed += len(claimed)
        if len(candidates) < BATCH_SIZE:
            return processed
