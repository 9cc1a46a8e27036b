"""Gifting a token (SPEC §3.9): its secret is rotated and the new one e-mailed to the recipient.

Only a token its owner never used can be gifted (`ready`: not activated, not revoked, not gifted before). In one
DB transaction: the token row, then the owner's row (`ledger.lock_user`, the lock every money operation and
auto-renewal take, in the same token → user order) are locked; the daily limit is counted under that lock, so
it is exact however many gifts run at once; a conditional UPDATE (which also guards where rows can't be locked,
SQLite) rotates the secret (keeping the old one's hash as `retired_token_hash`) and marks the token gifted; the
`gift_received` e-mail (always sent, sealed at rest) and the audit row are written. After the commit
`events.token_gifted` is sent: the proxy tombstones the old secret in its cache, so it is refused on the very next
request, and closes the giver's open session, if any; the proxy sweep writes that tombstone again while the gift
is recent (a Redis blip).

The token stays the giver's in the database (the recipient uses it through its secret; the proxy reports the
giver's `user_id`), can no longer be revoked for a refund, and is never auto-renewed.
"""
from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .. import events
from ..accounts.emails import canonical_email
from ..accounts.models import User
from ..audit.services import record
from ..clock import now
from ..database import db
from ..errors import Conflict, RateLimited
from ..ledger import services as ledger
from ..notifications.email import enqueue_email, queue_email
from .models import AccessToken, hash_secret
from .services import get_own_token, hint_for, new_secret

GIFTS_PER_WINDOW = 10
GIFT_WINDOW = timedelta(hours=24)


class TokenNotGiftable(Conflict):
    message = "Only a token that was never used, revoked or gifted can be gifted."


class GiftLimitReached(RateLimited):
    message = f"You can gift at most {GIFTS_PER_WINDOW} tokens in 24 hours; try again later."


def _check_giftable(token: AccessToken, moment: datetime) -> None:
    status = token.status_at(moment)
    if status == "revoked":
        raise TokenNotGiftable("The token is revoked; it cannot be gifted.")
    if token.gifted_at is not None:
        raise TokenNotGiftable("The token was already gifted.")
    if status == "expired":
        raise TokenNotGiftable("The token has expired; it cannot be gifted.")
    if status != "ready":
        raise TokenNotGiftable("The token was already used (its clock has started); only an unused token can be "
                               "gifted.")


def _check_daily_limit(user_id: uuid.UUID, moment: datetime) -> None:
    """At most GIFTS_PER_WINDOW gifts in any rolling 24 h; the caller holds the user's row lock."""
    since = moment - GIFT_WINDOW
    count, oldest = db.session.execute(
        sa.select(sa.func.count(), sa.func.min(AccessToken.gifted_at))
        .where(AccessToken.user_id == user_id, AccessToken.gifted_at.is_not(None), AccessToken.gifted_at > since)
    ).one()
    if count >= GIFTS_PER_WINDOW:
        raise GiftLimitReached(math.ceil((oldest + GIFT_WINDOW - moment).total_seconds()))


def _rotate(token: AccessToken, old_hash: str, secret: str, recipient: str, moment: datetime) -> bool:
    """The new secret and the gift mark, unless the token was used, revoked or gifted since it was read."""
    return db.session.execute(
        sa.update(AccessToken)
        .where(AccessToken.id == token.id, AccessToken.token_hash == old_hash, AccessToken.status_is("ready", moment),
               AccessToken.gifted_at.is_(None))
        .values(token_hash=hash_secret(secret), token_hint=hint_for(secret), gifted_to_email=recipient,
                gifted_at=moment, retired_token_hash=old_hash)
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def gift_token(user: User, token_id: uuid.UUID, recipient_email: str) -> dict[str, Any]:
    recipient = canonical_email(recipient_email)
    moment = now()
    token = get_own_token(user, token_id, for_update=True)
    _check_giftable(token, moment)
    giver = ledger.lock_user(user.id)
    _check_daily_limit(user.id, moment)
    old_hash = token.token_hash
    secret = new_secret()
    if not _rotate(token, old_hash, secret, recipient, moment):
        db.session.rollback()
        raise TokenNotGiftable("The token was used, revoked or gifted meanwhile; it cannot be gifted.")
    record("token.gifted", actor_id=user.id, resource_type="access_token", resource_id=token.id,
           details={"recipient_email": recipient})
    # Always sent (the template says so), whatever the giver's e-mail preference: it is the recipient's token.
    message = queue_email(
        "gift_received", recipient,
        {"sender_username": giver.username, "scope": token.scope, "duration_hours": token.duration_hours,
         "token": secret},
        user_id=user.id, dedupe_key=f"gift_received:{token.id}",
    )
    email_id = None if message is None else message.id
    # The proxy refuses the old secret from the very next request (a tombstone keyed by the OLD hash, which no
    # concurrent cache fill overwrites), frees the giver's device and closes the giver's session; the new
    # secret's cache entry is left alone, so the recipient is not locked out.
    events.announce(events.token_gifted, token=token, retired_hash=old_hash)
    db.session.commit()
    if email_id is not None:
        enqueue_email(email_id)
    return {"token_id": token.id, "recipient_email": recipient, "gifted_at": moment}
