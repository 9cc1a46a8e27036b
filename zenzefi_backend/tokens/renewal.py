"""Auto-renewal (SPEC §3.9): a user's choice, and the hourly job that buys replacement tokens.

Which tokens: activated, not revoked, not renewed yet, never gifted (the giver would pay for, and be mailed, a
replacement of a token someone else uses), with `now < expires_at <= now + 24 h` when the run
starts, of an active user whose auto-renewal is on. Each gets exactly ONE replacement, bought with the
user's current choice (`duration_hours`, `scope`) at the current price, exactly as a purchase would
(`tokens.services.purchase_token_in_transaction`): PURCHASE ledger entry, `token.purchased`, referral bonus,
`balance.low`, audit, metrics. The replacement is `ready` — its clock starts with its first proxied request — and its
secret travels only in the `auto_renewal_done` e-mail, which is therefore sent even to users who opted out
of notifications (it is the purchase's receipt and the only way to get the token).

One DB transaction per token, safe on any number of workers at once:
- PostgreSQL: the token row is taken `FOR UPDATE SKIP LOCKED` (another worker skips it), then the user row
  is locked (`ledger.lock_user`, the lock every money operation and every settings change takes), and the
  choice is read again under that lock — a user who just turned auto-renewal off is not charged;
- everywhere (SQLite has no row locks): `UPDATE … SET renewed_at WHERE renewed_at IS NULL` succeeds for one
  worker only, in the transaction that debits, so a token is renewed and charged once.

Insufficient balance: nothing is debited, auto-renewal is turned off (a conditional UPDATE, so one worker
does it) and `auto_renewal_failed` is queued once (dedupe key: the token and the moment the choice was last
set, so failing again after the user turned it on again is e-mailed again). The token keeps `renewed_at`
NULL — it was not renewed — but is not retried every hour: with auto-renewal off the user's tokens are no
longer candidates. A user who tops up and turns auto-renewal on again before the token expires gets it
renewed by the next run.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..accounts.models import User
from ..audit.services import record
from ..clock import now
from ..database import db
from ..ledger import services as ledger
from ..ledger.models import Transaction
from ..ledger.services import InsufficientBalance
from ..money import format_amount
from ..notifications.email import enqueue_email, queue_email
from .models import AccessToken, AutoRenewal
from .pricing import price_for
from .services import purchase_token_in_transaction

log = logging.getLogger(__name__)

RENEW_WITHIN = timedelta(hours=24)
BATCH_SIZE = 200
DEFAULT_DURATION_HOURS = 24
DEFAULT_SCOPE = "full"

RENEWED, FAILED, SKIPPED = "renewed", "failed", "skipped"


def _choice(row: AutoRenewal | None) -> dict[str, Any]:
    if row is None:
        return {"enabled": False, "duration_hours": DEFAULT_DURATION_HOURS, "scope": DEFAULT_SCOPE}
    return {"enabled": row.enabled, "duration_hours": row.duration_hours, "scope": row.scope}


def _with_cost(choice: dict[str, Any]) -> dict[str, Any]:
    """`cost_per_renewal` is today's price; a renewal is charged the price of the day it runs."""
    return {**choice, "cost_per_renewal": price_for(choice["duration_hours"])}


def settings_of(user: User) -> dict[str, Any]:
    """The user's choice; a user who never set it has the defaults, off."""
    return _with_cost(_choice(db.session.get(AutoRenewal, user.id)))


def update_settings(user: User, enabled: bool, duration_hours: int, scope: str) -> dict[str, Any]:
    """Replace the choice (audited when it changes). Under the user's row lock, so it never interleaves with a
    renewal of this user: a renewal running now either finished before or sees the new choice."""
    ledger.lock_user(user.id)
    row = db.session.get(AutoRenewal, user.id, populate_existing=True)
    before = _choice(row)
    after = {"enabled": enabled, "duration_hours": duration_hours, "scope": scope}
    if before != after:
        if row is None:
            row = AutoRenewal(user_id=user.id)
            db.session.add(row)
        row.enabled, row.duration_hours, row.scope = enabled, duration_hours, scope
        record("auto_renewal.updated", actor_id=user.id, resource_type="auto_renewal", resource_id=user.id,
               details={"before": before, "after": after})
    db.session.commit()
    return _with_cost(after)


def _due(moment: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    return (AccessToken.in_use_at(moment), AccessToken.renewed_at.is_(None), AccessToken.gifted_at.is_(None),
            AccessToken.expires_at <= moment + RENEW_WITHIN)


def _candidates(moment: datetime, after: sa.Row | None) -> list[sa.Row]:
    """The next batch of due tokens, soonest expiry first, past `after` (keyset: each token is seen once)."""
    statement = (
        sa.select(AccessToken.id, AccessToken.expires_at)
        .join(User, User.id == AccessToken.user_id)
        .join(AutoRenewal, AutoRenewal.user_id == AccessToken.user_id)
        .where(*_due(moment), User.is_active.is_(True), AutoRenewal.enabled.is_(True))
        .order_by(AccessToken.expires_at, AccessToken.id)
        .limit(BATCH_SIZE)
    )
    if after is not None:
        statement = statement.where(sa.or_(
            AccessToken.expires_at > after.expires_at,
            sa.and_(AccessToken.expires_at == after.expires_at, AccessToken.id > after.id),
        ))
    return list(db.session.execute(statement))


def _claim(token_id: uuid.UUID, moment: datetime) -> bool:
    """Mark the token renewed unless another worker just did (the only guard where rows can't be locked)."""
    return db.session.execute(
        sa.update(AccessToken)
        .where(AccessToken.id == token_id, AccessToken.renewed_at.is_(None), AccessToken.revoked_at.is_(None))
        .values(renewed_at=moment)
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def _switch_off(user_id: uuid.UUID) -> bool:
    return db.session.execute(
        sa.update(AutoRenewal)
        .where(AutoRenewal.user_id == user_id, AutoRenewal.enabled.is_(True))
        .values(enabled=False, updated_at=now())
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def _fail(user: User, choice: AutoRenewal, token: AccessToken) -> tuple[str, uuid.UUID | None]:
    """Not enough ZNC: no debit, auto-renewal off, the user told once."""
    price = price_for(choice.duration_hours)
    enabled_since = choice.updated_at
    if not _switch_off(user.id):
        db.session.rollback()
        return SKIPPED, None
    record("auto_renewal.failed", actor_id=user.id, resource_type="access_token", resource_id=token.id,
           details={"reason": "insufficient_balance", "required": format_amount(price),
                    "available": format_amount(user.balance), "auto_renewal_enabled": False})
    message = queue_email(
        "auto_renewal_failed", user.email,
        {"username": user.username, "renewed_token_hint": token.token_hint,
         "renewed_expires_at": token.expires_at.isoformat(), "price": format_amount(price),
         "balance": format_amount(user.balance)},
        user_id=user.id, dedupe_key=f"auto_renewal_failed:{token.id}:{enabled_since.isoformat()}",
        opted_in=user.email_notifications,
    )
    email_id = None if message is None else message.id
    db.session.commit()
    return FAILED, email_id


def _renew(token_id: uuid.UUID, moment: datetime) -> tuple[str, uuid.UUID | None]:
    """One token, one transaction; the outcome and the e-mail to hand to a worker after the commit."""
    token = db.session.scalar(
        sa.select(AccessToken).where(AccessToken.id == token_id, *_due(moment))
        .with_for_update(skip_locked=True).execution_options(populate_existing=True)
    )
    if token is None:  # renewed, revoked or being handled by another worker since the candidates were read
        db.session.rollback()
        return SKIPPED, None
    user = ledger.lock_user(token.user_id)
    choice = db.session.get(AutoRenewal, token.user_id, populate_existing=True)
    if not user.is_active or choice is None or not choice.enabled:
        db.session.rollback()
        return SKIPPED, None
    if user.balance < price_for(choice.duration_hours):
        return _fail(user, choice, token)
    if not _claim(token.id, now()):
        db.session.rollback()
        return SKIPPED, None
    try:
        issued = purchase_token_in_transaction(
            user.id, choice.duration_hours, choice.scope, source="auto_renewal",
            description=f"Auto-renewal of access token {token.token_hint}: {choice.duration_hours} h ({choice.scope})")
    except InsufficientBalance:
        db.session.rollback()  # only where rows can't be locked (SQLite): the next run sees the short balance
        return SKIPPED, None
    entry = db.session.get(Transaction, issued.record.purchase_transaction_id)
    record("token.auto_renewed", actor_id=user.id, resource_type="access_token", resource_id=token.id,
           details={"replacement_token_id": str(issued.record.id), "duration_hours": choice.duration_hours,
                    "scope": choice.scope, "paid_znc": format_amount(issued.record.paid_znc),
                    "transaction_id": str(entry.id)})
    message = queue_email(
        "auto_renewal_done", user.email,
        {"username": user.username, "renewed_token_hint": token.token_hint,
         "renewed_expires_at": token.expires_at.isoformat(), "price": format_amount(issued.record.paid_znc),
         "token": issued.secret, "duration_hours": choice.duration_hours, "scope": choice.scope,
         "balance_after": format_amount(entry.balance_after)},
        user_id=user.id, dedupe_key=f"auto_renewal:{token.id}", opted_in=user.email_notifications,
    )
    email_id = None if message is None else message.id
    db.session.commit()
    return RENEWED, email_id


def renew_expiring_tokens(moment: datetime | None = None) -> dict[str, int]:
    """Renew every due token (see the module docstring); counts of renewed, failed and skipped tokens, and of
    tokens that raised (logged, rolled back, left for the next run without holding up the others)."""
    moment = moment or now()
    counts = {RENEWED: 0, FAILED: 0, SKIPPED: 0, "errors": 0}
    after = None
    while True:
        candidates = _candidates(moment, after)
        db.session.rollback()
        for candidate in candidates:
            try:
                outcome, email_id = _renew(candidate.id, moment)
            except Exception:
                db.session.rollback()
                log.exception("auto-renewal of a token failed", extra={"token_id": str(candidate.id)})
                counts["errors"] += 1
                continue
            counts[outcome] += 1
            if email_id is not None:
                enqueue_email(email_id)
        if len(candidates) < BATCH_SIZE:
            return counts
        after = candidates[-1]
