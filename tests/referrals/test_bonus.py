"""The 10 % bonus on a referee's first purchase over 100.00 ZNC (SPEC §3.7)."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa

from tests.bundles.helpers import buy, create
from tests.fixtures.actions import buy_token
from tests.money.helpers import balance, ledger
from zenzefi_backend.audit.models import AuditLog
from zenzefi_backend.extensions import db
from zenzefi_backend.notifications.models import OutboxEvent
from zenzefi_backend.referrals.models import ReferralBonus
from zenzefi_backend.referrals.services import bonus_for

from .helpers import MONTH, WEEK, referral_entries


@pytest.mark.parametrize("amount, bonus", [("100.00", "0.00"), ("99.99", "0.00"), ("100.01", "10.00"),
                                           ("300.00", "30.00"), ("850.00", "85.00"), ("100.05", "10.00"),
                                           ("100.15", "10.02"), ("101.65", "10.16"), ("11250.00", "1125.00")])
def test_bonus_is_ten_percent_half_even_above_one_hundred(amount, bonus):
    assert bonus_for(Decimal(amount)) == Decimal(bonus)


def test_a_purchase_of_exactly_one_hundred_earns_nothing(client, referrer, referee):
    buy_token(client, referee, WEEK)
    assert referral_entries(client, referrer) == []
    assert balance(client, referrer) == Decimal("0.00")


def test_the_first_purchase_over_one_hundred_earns_ten_percent_once(client, referrer, referee):
    buy_token(client, referee, WEEK)  # 100.00: not more than 100, and it does not use up the bonus
    buy_token(client, referee, MONTH)
    assert referral_entries(client, referrer) == [("referral_bonus", "30.00")]
    assert balance(client, referrer) == Decimal("30.00")
    buy_token(client, referee, MONTH)
    buy_token(client, referee, MONTH)
    assert referral_entries(client, referrer) == [("referral_bonus", "30.00")]
    assert balance(client, referrer) == Decimal("30.00")
    (entry,) = ledger(client, referrer, "referral_bonus")
    assert entry["reference_type"] == "referral_bonus" and referee["username"] in entry["description"]
    assert balance(client, referee) == Decimal("20000.00") - Decimal("100.00") - 3 * Decimal("300.00")


def test_a_bundle_of_850_earns_85(client, catalogue, referrer, referee):
    response = buy(client, referee, catalogue["Developer Pack"]["id"])
    assert response.status_code == 201
    assert referral_entries(client, referrer) == [("referral_bonus", "85.00")]
    buy(client, referee, catalogue["Team Pack"]["id"])
    assert referral_entries(client, referrer) == [("referral_bonus", "85.00")]


def test_a_starter_pack_of_81_earns_nothing(client, catalogue, referrer, referee):
    buy(client, referee, catalogue["Starter Pack"]["id"])
    assert referral_entries(client, referrer) == []


def test_odd_cents_round_half_even(client, admin, referrer, referee):
    odd = create(client, admin, name="Odd", token_count=107, duration_hours=1, discount_percent=5).get_json()
    assert odd["total_price"] == "101.65"
    buy(client, referee, odd["id"])
    assert referral_entries(client, referrer) == [("referral_bonus", "10.16")]


def test_users_without_a_referrer_earn_nobody_anything(app, client, accounts):
    user = accounts.signed_in()
    accounts.fund(user["id"], "300.00")
    buy_token(client, user, MONTH)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(ReferralBonus)) == 0


def test_no_self_referral_even_if_the_data_said_so(app, client, accounts):
    user = accounts.signed_in()
    accounts.fund(user["id"], "300.00")
    accounts.set_flags(user["id"], referred_by_id=uuid.UUID(user["id"]))
    buy_token(client, user, MONTH)
    assert referral_entries(client, user) == []
    assert balance(client, user) == Decimal("0.00")


def test_the_bonus_is_recorded_announced_and_audited(app, client, referrer, referee):
    buy_token(client, referee, MONTH)
    (purchase,) = ledger(client, referee, "purchase")
    with app.app_context():
        bonus = db.session.scalar(sa.select(ReferralBonus))
        assert (str(bonus.referrer_id), str(bonus.referee_id)) == (referrer["id"], referee["id"])
        assert str(bonus.purchase_transaction_id) == purchase["id"]
        assert (bonus.purchase_amount, bonus.bonus_amount) == (Decimal("300.00"), Decimal("30.00"))
        event = db.session.scalar(sa.select(OutboxEvent).where(OutboxEvent.event_type == "referral.bonus_awarded"))
        assert str(event.user_id) == referrer["id"]
        assert event.payload == {"bonus_id": str(bonus.id), "referee_username": referee["username"],
                                 "purchase_amount": "300.00", "bonus_amount": "30.00"}
        audit = db.session.scalar(sa.select(AuditLog).where(AuditLog.action == "referral.bonus_awarded"))
        assert (str(audit.actor_id), audit.resource_id) == (referee["id"], str(bonus.id))
        assert audit.details["bonus_amount"] == "30.00" and audit.details["referrer_id"] == referrer["id"]


def test_a_failed_purchase_earns_nothing(client, accounts, referrer):
    poor = accounts.signed_in(referral_code=referrer["referral_code"])
    accounts.fund(poor["id"], "299.99")
    response = client.post("/api/v1/tokens/purchase", json={"duration_hours": MONTH}, headers=poor["headers"])
    assert response.status_code == 402
    assert referral_entries(client, referrer) == []
