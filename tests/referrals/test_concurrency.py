"""At most one bonus per referee, and clawbacks that add up, under real concurrency (PostgreSQL).

Each thread has its own `app.test_client()` (its own app context, DB session and pooled connection); a
`threading.Barrier` releases them together. Races are probabilistic, so each runs for several rounds.
"""
from __future__ import annotations

import uuid
from collections import Counter
from decimal import Decimal

import pytest
import sqlalchemy as sa

from tests.bundles.helpers import purchase_path
from tests.fixtures.race import race
from tests.money.helpers import PURCHASE, assert_chained, assert_ledger_verifies, balance, ledger, token_path
from tests.support import postgres_only
from zenzefi_backend.extensions import db
from zenzefi_backend.referrals.models import ReferralBonus

from .helpers import MONTH, WEEK, referral_entries

pytestmark = [pytest.mark.postgres, postgres_only]

THREADS = 20
ROUNDS = 5


def buy_token(headers: dict[str, str], hours: int = MONTH):
    return lambda client: client.post(PURCHASE, json={"duration_hours": hours}, headers=headers)


def buy_bundle(bundle_id: str, headers: dict[str, str]):
    return lambda client: client.post(purchase_path(bundle_id), headers=headers)


def revoke(token_id: str, headers: dict[str, str]):
    return lambda client: client.delete(token_path(token_id), headers=headers)


def the_bonus(app, referee: dict) -> ReferralBonus:
    with app.app_context():
        statement = sa.select(ReferralBonus).where(ReferralBonus.referee_id == uuid.UUID(referee["id"]))
        (bonus,) = db.session.scalars(statement).all()
        db.session.expunge(bonus)
        return bonus


def referred(accounts, referrer: dict, amount: str) -> dict:
    user = accounts.signed_in(referral_code=referrer["referral_code"])
    accounts.fund(user["id"], amount)
    return user


def test_twenty_concurrent_first_purchases_earn_one_bonus(app, client, accounts, admin):
    for _ in range(ROUNDS):
        referrer = accounts.signed_in()
        referee = referred(accounts, referrer, str(THREADS * 300))
        responses = race(app, [buy_token(referee["headers"])] * THREADS)
        assert Counter(r.status_code for r in responses) == Counter({201: THREADS}), \
            [(r.status_code, r.get_json()) for r in responses]
        assert referral_entries(client, referrer) == [("referral_bonus", "30.00")]
        assert balance(client, referrer) == Decimal("30.00")
        purchases = ledger(client, referee, "purchase")
        assert len(purchases) == THREADS and balance(client, referee) == Decimal("0.00")
        assert_chained(ledger(client, referee))
        # The bonus went to the purchase that was first in the referee's ledger.
        assert str(the_bonus(app, referee).purchase_transaction_id) == purchases[-1]["id"]
        assert_ledger_verifies(client, admin)


def test_concurrent_token_and_bundle_purchases_earn_one_bonus_for_the_first(app, client, catalogue, accounts, admin):
    developer = catalogue["Developer Pack"]
    for _ in range(ROUNDS):
        referrer = accounts.signed_in()
        referee = referred(accounts, referrer, str(THREADS // 2 * (300 + 850)))
        calls = [buy_token(referee["headers"]), buy_bundle(developer["id"], referee["headers"])] * (THREADS // 2)
        responses = race(app, calls)
        assert Counter(r.status_code for r in responses) == Counter({201: THREADS})
        first = ledger(client, referee, "purchase")[-1]
        expected = (-Decimal(first["amount"]) / 10).quantize(Decimal("0.01"))
        assert referral_entries(client, referrer) == [("referral_bonus", str(expected))]
        assert str(the_bonus(app, referee).purchase_transaction_id) == first["id"]
        assert_ledger_verifies(client, admin)


def test_concurrent_revokes_of_a_bundle_claw_back_exactly_the_bonus(app, client, catalogue, accounts, admin):
    developer = catalogue["Developer Pack"]
    for _ in range(ROUNDS):
        referrer = accounts.signed_in()
        referee = referred(accounts, referrer, "850.00")
        issued = client.post(purchase_path(developer["id"]), headers=referee["headers"]).get_json()["tokens"]
        # Each token revoked twice at once, while the referrer spends most of the bonus: one refund per token,
        # and the clawbacks plus any shortfall add up to the bonus, never below the referrer's zero.
        accounts.fund(referrer["id"], "20.00")
        calls = [revoke(token["id"], referee["headers"]) for token in issued] * 2
        responses = race(app, calls + [buy_token(referrer["headers"], WEEK)])
        assert Counter(r.status_code for r in responses[:-1]) == Counter({200: 10, 404: 10})
        assert responses[-1].status_code in (201, 402)
        assert balance(client, referee) == Decimal("850.00")
        bonus = the_bonus(app, referee)
        assert bonus.clawed_back + bonus.clawback_shortfall == bonus.bonus_amount == Decimal("85.00")
        assert bonus.refunded_amount == Decimal("850.00")
        taken = -sum(Decimal(amount) for kind, amount in referral_entries(client, referrer)
                     if kind == "referral_clawback")
        assert taken == bonus.clawed_back
        assert balance(client, referrer) >= 0
        assert_chained(ledger(client, referrer))
        assert_ledger_verifies(client, admin)
