"""Referrals: the 10 % bonus on a referee's first purchase over 100.00 ZNC, its clawback, the summary.

Both the bonus and the clawback are pieces (`…_in_transaction`): they run inside the purchase's or the revoke's
own DB transaction and never commit or roll it back. Lock order is
always referee, then referrer: a referrer registered before their referee, so the order is one global order
(by registration) and two transactions can never wait for each other in a cycle.
"""
from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import current_app

from .. import metrics
from ..accounts.models import User
from ..audit.services import record
from ..database import db
from ..ledger import services as ledger
from ..ledger.models import Transaction
from ..money import format_amount, quantize, round_down
from ..notifications.outbox import emit
from ..tokens.models import AccessToken
from .models import ReferralBonus

BONUS_RATE = Decimal("0.10")
QUALIFYING_AMOUNT = Decimal("100.00")  # a purchase must be MORE than this to earn a bonus


def bonus_for(purchase_amount: Decimal) -> Decimal:
    """10 % of a qualifying purchase, half-even to the cent; 0 for a purchase of 100.00 or less."""
    if purchase_amount <= QUALIFYING_AMOUNT:
        return Decimal("0.00")
    return quantize(purchase_amount * BONUS_RATE)


def award_bonus_in_transaction(referee_id: uuid.UUID, purchase: Transaction) -> ReferralBonus | None:
    """Credit the referrer when `purchase` is the referee's first one over 100.00 ZNC.

    The caller holds the referee's user-row lock (`ledger.lock_user`), so the existence check and the insert
    cannot interleave with another purchase by the same referee; UNIQUE(referee_id) backs that up.
    """
    amount = -purchase.amount
    bonus_amount = bonus_for(amount)
    if bonus_amount == 0:
        return None
    referrer_id, username = db.session.execute(
        sa.select(User.referred_by_id, User.username).where(User.id == referee_id)
    ).one()
    if referrer_id is None or referrer_id == referee_id:
        return None
    if db.session.scalar(sa.select(ReferralBonus.id).where(ReferralBonus.referee_id == referee_id)) is not None:
        return None
    bonus = ReferralBonus(id=uuid.uuid4(), referrer_id=referrer_id, referee_id=referee_id,
                          purchase_transaction_id=purchase.id, purchase_amount=amount, bonus_amount=bonus_amount)
    db.session.add(bonus)
    entry = ledger.apply(referrer_id, bonus_amount, "referral_bonus", f"Referral bonus: purchase by {username}",
                         reference_type="referral_bonus", reference_id=bonus.id)
    emit("referral.bonus_awarded", referrer_id, bonus_id=str(bonus.id), referee_username=username,
         purchase_amount=format_amount(amount), bonus_amount=format_amount(bonus_amount))
    record("referral.bonus_awarded", actor_id=referee_id, resource_type="referral_bonus", resource_id=bonus.id,
           details={"referrer_id": str(referrer_id), "referee_id": str(referee_id),
                    "purchase_transaction_id": str(purchase.id), "purchase_amount": format_amount(amount),
                    "bonus_amount": format_amount(bonus_amount), "transaction_id": str(entry.id)})
    metrics.count(metrics.referral_bonuses)  # with the purchase's commit
    return bonus


def claw_back_in_transaction(token: AccessToken, refund: Decimal) -> None:
    """Take back `bonus × refund / purchase` (rounded down) when a token of the qualifying purchase is refunded.

    Computed on the running total of the purchase's refunds, so the clawbacks add up to exactly
    `bonus × refunded / purchase` rounded down: never more than the bonus, and all of it once everything is
    refunded. Never below the referrer's zero: what the balance cannot cover is recorded as a shortfall and
    audited. Runs in the revoke's transaction, after the referee's refund.
    """
    if token.purchase_transaction_id is None or refund <= 0:
        return
    bonus = db.session.scalar(
        sa.select(ReferralBonus)
        .where(ReferralBonus.purchase_transaction_id == token.purchase_transaction_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if bonus is None:
        return
    bonus.refunded_amount += refund
    owed = min(bonus.bonus_amount, round_down(bonus.bonus_amount * bonus.refunded_amount / bonus.purchase_amount))
    due = owed - bonus.clawback_settled
    if due <= 0:
        return
    referrer = ledger.lock_user(bonus.referrer_id)
    taken = min(due, referrer.balance)
    shortfall = due - taken
    details = {"referrer_id": str(bonus.referrer_id), "referee_id": str(bonus.referee_id),
               "token_id": str(token.id), "refund_amount": format_amount(refund), "due": format_amount(due),
               "clawed_back": format_amount(taken), "shortfall": format_amount(shortfall)}
    if taken > 0:
        entry = ledger.apply(bonus.referrer_id, -taken, "referral_clawback",
                             f"Referral bonus clawback: refund of token {token.token_hint}",
                             reference_type="referral_bonus", reference_id=bonus.id)
        details["transaction_id"] = str(entry.id)
        record("referral.bonus_clawed_back", actor_id=token.user_id, resource_type="referral_bonus",
               resource_id=bonus.id, details=details)
    if shortfall > 0:
        record("referral.clawback_shortfall", actor_id=token.user_id, resource_type="referral_bonus",
               resource_id=bonus.id, details=details)
    bonus.clawed_back += taken
    bonus.clawback_shortfall += shortfall


def referral_link(code: str) -> str:
    return f"{current_app.config['FRONTEND_URL'].rstrip('/')}/register?ref={code}"


def summary(user: User) -> dict[str, Any]:
    """The user's code and link, their referees (usernames only, newest first) and the bonus they kept."""
    referees = db.session.execute(
        sa.select(User.username, User.created_at, ReferralBonus.id.is_not(None))
        .outerjoin(ReferralBonus, ReferralBonus.referee_id == User.id)
        .where(User.referred_by_id == user.id)
        .order_by(User.created_at.desc(), User.id.desc())
    ).all()
    bonuses = db.session.execute(
        sa.select(ReferralBonus.bonus_amount, ReferralBonus.clawed_back).where(ReferralBonus.referrer_id == user.id)
    ).all()
    return {
        "referral_code": user.referral_code,
        "referral_link": referral_link(user.referral_code),
        "total_referrals": len(referees),
        "qualifying_referrals": len(bonuses),
        "total_bonus_earned": sum((bonus - clawed for bonus, clawed in bonuses), Decimal("0.00")),
        "referred_users": [
            {"username": username, "joined_at": joined_at, "has_qualifying_purchase": bool(qualified)}
            for username, joined_at, qualified in referees
        ],
    }
