"""Refunds of the qualifying purchase claw the bonus back in proportion; referrals can't mint money."""
from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from tests.bundles.helpers import DEFAULTS, buy, create
from tests.fixtures.actions import buy_token
from tests.money.helpers import assert_ledger_verifies, balance, ledger
from zenzefi_backend import clock
from zenzefi_backend.audit.models import AuditLog
from zenzefi_backend.extensions import db
from zenzefi_backend.referrals.models import ReferralBonus
from zenzefi_backend.tokens.models import AccessToken

from .helpers import MONTH, WEEK, net_referral_gain, referral_entries, revoke


def audits(app, action: str) -> list[dict]:
    with app.app_context():
        return [row.details for row in db.session.scalars(
            sa.select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.created_at))]


def test_revoking_the_qualifying_token_claws_the_whole_bonus_back(app, client, admin, referrer, referee):
    token = buy_token(client, referee, MONTH)
    assert balance(client, referrer) == Decimal("30.00")
    assert revoke(client, referee, token["id"]) == Decimal("300.00")
    assert referral_entries(client, referrer) == [("referral_bonus", "30.00"), ("referral_clawback", "-30.00")]
    assert net_referral_gain(client, referrer) == 0 and balance(client, referrer) == Decimal("0.00")
    (clawback,) = ledger(client, referrer, "referral_clawback")
    assert clawback["reference_type"] == "referral_bonus" and token["token_hint"] in clawback["description"]
    (details,) = audits(app, "referral.bonus_clawed_back")
    assert (details["clawed_back"], details["shortfall"], details["token_id"]) == ("30.00", "0.00", token["id"])
    assert audits(app, "referral.clawback_shortfall") == []
    assert_ledger_verifies(client, admin)


def test_a_spent_bonus_is_taken_as_far_as_it_goes_and_the_shortfall_audited(app, client, admin, referrer, referee):
    token = buy_token(client, referee, MONTH)
    buy_token(client, referrer, 24)  # the referrer spends 18.00 of the 30.00
    revoke(client, referee, token["id"])
    assert referral_entries(client, referrer) == [("referral_bonus", "30.00"), ("referral_clawback", "-12.00")]
    assert balance(client, referrer) == Decimal("0.00")
    (details,) = audits(app, "referral.clawback_shortfall")
    assert (details["due"], details["clawed_back"], details["shortfall"]) == ("30.00", "12.00", "18.00")
    assert net_referral_gain(client, referrer) == Decimal(details["shortfall"])
    with app.app_context():
        bonus = db.session.scalar(sa.select(ReferralBonus))
        assert (bonus.clawed_back, bonus.clawback_shortfall) == (Decimal("12.00"), Decimal("18.00"))
    assert_ledger_verifies(client, admin)


def test_an_empty_referrer_balance_means_all_shortfall_and_no_entry(app, client, referrer, referee):
    token = buy_token(client, referee, MONTH)
    for hours in (24, 12, 1, 1):  # 18 + 10 + 1 + 1 = the whole 30.00
        buy_token(client, referrer, hours)
    revoke(client, referee, token["id"])
    assert referral_entries(client, referrer) == [("referral_bonus", "30.00")]
    assert audits(app, "referral.bonus_clawed_back") == []
    (details,) = audits(app, "referral.clawback_shortfall")
    assert (details["clawed_back"], details["shortfall"]) == ("0.00", "30.00")


def test_bundle_refunds_claw_back_in_proportion(client, admin, catalogue, referrer, referee):
    issued = buy(client, referee, catalogue["Developer Pack"]["id"]).get_json()["tokens"]
    revoke(client, referee, issued[0]["id"])
    assert referral_entries(client, referrer)[-1] == ("referral_clawback", "-8.50")  # 85 × 85 / 850
    for token in issued[1:]:
        revoke(client, referee, token["id"])
    assert net_referral_gain(client, referrer) == 0 and balance(client, referrer) == Decimal("0.00")
    assert_ledger_verifies(client, admin)


def test_many_small_refunds_add_up_to_exactly_the_bonus(client, admin, referrer, referee):
    """101.65 earns 10.16; each 0.95 refund owes 0.0949…, so rounding each clawback down on its own would let
    the referrer keep 0.53. Clawbacks follow the running total of refunds instead."""
    odd = create(client, admin, name="Odd", token_count=107, duration_hours=1, discount_percent=5).get_json()
    issued = buy(client, referee, odd["id"]).get_json()["tokens"]
    assert referral_entries(client, referrer) == [("referral_bonus", "10.16")]
    revoke(client, referee, issued[0]["id"])
    assert referral_entries(client, referrer)[-1] == ("referral_clawback", "-0.09")
    for token in issued[1:]:
        revoke(client, referee, token["id"])
    assert net_referral_gain(client, referrer) == 0
    assert balance(client, referee) == Decimal("20000.00")
    assert_ledger_verifies(client, admin)


def test_a_partly_used_token_claws_back_only_its_refund_share(app, client, referrer, referee):
    token = buy_token(client, referee, MONTH)
    with app.app_context():
        moment = clock.now()
        db.session.execute(sa.update(AccessToken).where(AccessToken.id == uuid.UUID(token["id"]))
                           .values(activated_at=moment, expires_at=moment + timedelta(hours=MONTH)))
        db.session.commit()
    with clock.travel(timedelta(hours=MONTH / 2)):
        refund = revoke(client, referee, token["id"])
    assert Decimal("149.99") <= refund <= Decimal("150.00")
    (_bonus, (kind, amount)) = referral_entries(client, referrer)
    assert kind == "referral_clawback" and Decimal(amount) == -(refund / 10).quantize(Decimal("0.01"), "ROUND_DOWN")
    assert balance(client, referrer) == Decimal("30.00") + Decimal(amount)


def test_refunds_of_other_purchases_claw_nothing_back(client, referrer, referee):
    small = buy_token(client, referee, WEEK)
    buy_token(client, referee, MONTH)
    later = buy_token(client, referee, MONTH)
    revoke(client, referee, small["id"])
    revoke(client, referee, later["id"])
    assert referral_entries(client, referrer) == [("referral_bonus", "30.00")]


@pytest.mark.parametrize("name", DEFAULTS)
def test_buying_a_bundle_and_revoking_it_mints_nothing(client, admin, catalogue, referrer, referee, name):
    """Referee and referrer together end with at most what the referee paid in."""
    start = balance(client, referee)
    issued = buy(client, referee, catalogue[name]["id"]).get_json()["tokens"]
    for token in issued:
        revoke(client, referee, token["id"])
    referee_gain = balance(client, referee) - start
    assert referee_gain <= 0
    assert net_referral_gain(client, referrer) == 0
    assert referee_gain + balance(client, referrer) <= 0
    assert_ledger_verifies(client, admin)
