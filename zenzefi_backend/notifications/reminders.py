"""The hourly "your token expires within 24 h" e-mail (SPEC §3.10): once per token, on any number of workers.

Once per token: the e-mail is queued in the transaction that sets `expiry_reminded_at` with a conditional
UPDATE (only one worker's succeeds), and its dedupe key is the token. Tokens of users with auto-renewal on
get no reminder: the renewal e-mail tells them what happened instead. Gifted tokens get none either: the
giver no longer uses them, and we do not know the recipient as a user.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa

from ..accounts.models import User
from ..clock import now
from ..database import db
from ..tokens.models import AccessToken, AutoRenewal
from .email import enqueue_email, queue_email

REMIND_WITHIN = timedelta(hours=24)
BATCH_SIZE = 200


def _candidates(moment: datetime) -> sa.Select:
    renewing = sa.select(AutoRenewal.user_id).where(AutoRenewal.enabled.is_(True))
    return (
        sa.select(AccessToken, User)
        .join(User, User.id == AccessToken.user_id)
        .where(AccessToken.in_use_at(moment), AccessToken.expires_at <= moment + REMIND_WITHIN,
               AccessToken.expiry_reminded_at.is_(None), AccessToken.gifted_at.is_(None), User.is_active.is_(True),
               AccessToken.user_id.not_in(renewing))
        .order_by(AccessToken.expires_at)
        .limit(BATCH_SIZE)
        .with_for_update(of=AccessToken, skip_locked=True)  # PostgreSQL; SQLite renders no lock clause
    )


def _claim(token_id: uuid.UUID, moment: datetime) -> bool:
    return db.session.execute(
        sa.update(AccessToken)
        .where(AccessToken.id == token_id, AccessToken.expiry_reminded_at.is_(None))
        .values(expiry_reminded_at=moment)
        .returning(AccessToken.id)
        .execution_options(synchronize_session=False)
    ).first() is not None


def remind_expiring_tokens(moment: datetime | None = None) -> int:
    """Queue the reminder for every token expiring within 24 h not reminded yet; the number of tokens handled."""
    moment = moment or now()
    handled = 0
    while True:
        rows = db.session.execute(_candidates(moment)).all()
        queued = []
        for token, user in rows:
            if not _claim(token.id, moment):
                continue  # another worker got there first (SQLite, where nothing is locked)
            handled += 1
            message = queue_email(
                "token_expiring", user.email,
                {"username": user.username, "token_hint": token.token_hint, "scope": token.scope,
                 "duration_hours": token.duration_hours, "expires_at": token.expires_at.isoformat()},
                user_id=user.id, dedupe_key=f"token_expiring:{token.id}", opted_in=user.email_notifications,
            )
            if message is not None:
                queued.append(message.id)
        db.session.commit()
        for email_id in queued:
            enqueue_email(email_id)
        if len(rows) < BATCH_SIZE:
            return handled
