"""Access tokens: purchase, listing, revoke with the pro-rata refund of what was paid.

`purchase_token`, `revoke_token` and `force_revoke` are route-facing: each is one transaction and commits it.
`purchase_token_in_transaction` and `add_token_in_transaction` are pieces for other services' transactions (bundles,
auto-renewal): they flush at most. A revoke announces `events.token_revoked`; the proxy follows it.
"""
from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from .. import events, metrics
from ..accounts.models import User
from ..audit.services import record_outcome
from ..clock import now
from ..database import db
from ..errors import Conflict, NotFound
from ..ledger import services as ledger
from ..money import format_amount, round_down
from ..pagination import paginate
from ..record_views import RecordView
from ..referrals import services as referrals
from .models import AccessToken, hash_secret
from .pricing import price_for

SECRET_BYTES = 48  # 48 random bytes → 64 URL-safe characters


class TokenNotFound(NotFound):
    message = "Token not found."


class TokenExpired(Conflict):
    message = "The token has expired; there is nothing left to refund."


class TokenAlreadyRevoked(Conflict):
    message = "The token is already revoked."


class TokenGifted(Conflict):
    message = "The token was given away as a gift; it can no longer be revoked for a refund."


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def hint_for(secret: str) -> str:
    return f"{secret[:6]}...{secret[-4:]}"


@dataclass
class IssuedToken(RecordView):
    """A token together with its secret, which exists only in this response."""

    record: AccessToken
    secret: str


def add_token_in_transaction(user_id: uuid.UUID, duration_hours: int, scope: str, paid: Decimal, *,
                             source: str = "purchase", bundle_id: uuid.UUID | None = None,
                             purchase_transaction_id: uuid.UUID | None = None) -> IssuedToken:
    secret = new_secret()
    token = AccessToken(
        id=uuid.uuid4(), user_id=user_id, token_hash=hash_secret(secret), token_hint=hint_for(secret),
        duration_hours=duration_hours, scope=scope, paid_znc=paid, source=source, bundle_id=bundle_id,
        purchase_transaction_id=purchase_transaction_id, created_at=now(),
    )
    db.session.add(token)
    return IssuedToken(token, secret)


def purchase_token(user: User, duration_hours: int, scope: str = "full", *, source: str = "purchase") -> IssuedToken:
    """One DB transaction: lock the user, debit, insert the token and its ledger entry, write the events."""
    ledger.lock_user(user.id)
    issued = purchase_token_in_transaction(user.id, duration_hours, scope, source=source)
    db.session.commit()
    return issued


def purchase_token_in_transaction(user_id: uuid.UUID, duration_hours: int, scope: str, *,
                                  source: str = "purchase", description: str | None = None) -> IssuedToken:
    """A purchase in the caller's transaction: the caller holds the user's row lock (`ledger.lock_user`) and
    commits. Raises `InsufficientBalance` (the caller rolls back) when short."""
    price = price_for(duration_hours)
    issued = add_token_in_transaction(user_id, duration_hours, scope, price, source=source)
    entry = ledger.apply(user_id, -price, "purchase", description or f"Access token {duration_hours} h ({scope})",
                         reference_type="access_token", reference_id=issued.record.id)
    issued.record.purchase_transaction_id = entry.id
    referrals.award_bonus_in_transaction(user_id, entry)
    record_outcome(
        "token.purchased", actor_id=user_id, resource_type="access_token", resource_id=issued.record.id,
        details={"duration_hours": duration_hours, "scope": scope, "paid_znc": format_amount(price)},
        events=[("token.purchased", user_id, {"token_id": str(issued.record.id), "duration_hours": duration_hours,
                                              "scope": scope, "paid_znc": format_amount(price), "source": source})],
        counts=[(metrics.token_purchases, 1, {"duration_hours": str(duration_hours)}),
                (metrics.znc_revenue, price, {})])
    return issued


def list_tokens(user: User, *, active_only: bool, limit: int, offset: int) -> dict[str, Any]:
    statement = (
        sa.select(AccessToken)
        .where(AccessToken.user_id == user.id)
        .order_by(AccessToken.created_at.desc(), AccessToken.id.desc())
    )
    if active_only:
        statement = statement.where(AccessToken.usable_at(now()))
    return paginate(statement, limit, offset)


def get_own_token(user: User, token_id: uuid.UUID, *, for_update: bool = False) -> AccessToken:
    statement = sa.select(AccessToken).where(AccessToken.id == token_id, AccessToken.user_id == user.id)
    if for_update:
        statement = statement.with_for_update().execution_options(populate_existing=True)
    token = db.session.scalar(statement)
    if token is None:
        raise TokenNotFound()
    return token


def refund_for(token: AccessToken, moment: datetime) -> Decimal:
    """`paid × unused / duration`, rounded down to the cent; never more than paid, never negative."""
    duration = timedelta(hours=token.duration_hours)
    if token.activated_at is None:
        unused = duration
    else:
        unused = max(timedelta(0), min(duration, token.expires_at - moment))
    fraction = Decimal(unused // timedelta(microseconds=1)) / Decimal(duration // timedelta(microseconds=1))
    return min(token.paid_znc, round_down(token.paid_znc * fraction))


def _claim_revocation(token: AccessToken, moment: datetime) -> bool:
    """Mark the token revoked unless someone else just did: a concurrent second revoke loses here even
    where row locks don't exist (SQLite). The caller rolls back when it lost."""
    return db.session.execute(
        sa.update(AccessToken)
        .where(AccessToken.id == token.id, AccessToken.revoked_at.is_(None))
        .values(revoked_at=moment)
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def _revoked(token: AccessToken, actor_id: uuid.UUID, action: str, details: dict[str, Any],
             **payload: Any) -> None:
    record_outcome(action, actor_id=actor_id, resource_type="access_token", resource_id=token.id, details=details,
                   events=[("token.revoked", token.user_id, {"token_id": str(token.id), **payload})],
                   counts=[(metrics.token_revocations, 1, {})])
    events.announce(events.token_revoked, token=token)  # the very next proxied request is refused


def revoke_token(user: User, token_id: uuid.UUID) -> dict[str, Any]:
    moment = now()
    token = get_own_token(user, token_id, for_update=True)
    if token.revoked_at is not None:
        raise TokenNotFound()
    if token.status_at(moment) == "expired":
        raise TokenExpired()
    if token.gifted_at is not None:
        raise TokenGifted()
    refund = refund_for(token, moment)
    if not _claim_revocation(token, moment):
        db.session.rollback()
        raise TokenNotFound()
    if refund > 0:
        ledger.apply(user.id, refund, "refund", f"Refund for revoked token {token.token_hint}",
                     reference_type="access_token", reference_id=token.id)
        referrals.claw_back_in_transaction(token, refund)
    _revoked(token, user.id, "token.revoked", {"refund_amount": format_amount(refund)},
             refund_amount=format_amount(refund))
    db.session.commit()
    balance = db.session.scalar(sa.select(User.balance).where(User.id == user.id))
    return {
        "revoked": True,
        "refund_amount": refund,
        "new_balance": balance,
        "message": f"Token revoked; {format_amount(refund)} ZNC refunded.",
    }


def force_revoke(admin: User, token_id: uuid.UUID) -> AccessToken:
    """A superuser's revoke: no refund (and so no clawback); the token stops working at once."""
    moment = now()
    token = db.session.scalar(sa.select(AccessToken).where(AccessToken.id == token_id).with_for_update()
                              .execution_options(populate_existing=True))
    if token is None:
        raise TokenNotFound()
    if token.revoked_at is not None:
        raise TokenAlreadyRevoked()
    status_before = token.status_at(moment)
    if not _claim_revocation(token, moment):
        db.session.rollback()
        raise TokenAlreadyRevoked()
    _revoked(token, admin.id, "admin.token_revoked",
             {"user_id": str(token.user_id), "status_before": status_before, "refund_amount": "0.00"},
             refund_amount="0.00", by_admin=True)
    db.session.commit()
    return token
