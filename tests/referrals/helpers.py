"""Referral-test helpers: purchases and revokes through the API, and the referrer's side of the ledger."""
from __future__ import annotations

from decimal import Decimal

from flask.testing import FlaskClient

from tests.money.helpers import ledger, token_path

REFERRALS = "/api/v1/users/me/referrals"
# Token prices that straddle the 100.00 threshold: 100.00 earns nothing, 300.00 earns 30.00.
WEEK, MONTH = 168, 720


def revoke(client: FlaskClient, user: dict, token_id: str) -> Decimal:
    response = client.delete(token_path(token_id), headers=user["headers"])
    assert response.status_code == 200, response.get_json()
    return Decimal(response.get_json()["refund_amount"])


def referral_entries(client: FlaskClient, user: dict) -> list[tuple[str, str]]:
    """The user's referral bonus and clawback entries, oldest first, as (type, amount)."""
    rows = [row for row in ledger(client, user) if row["transaction_type"].startswith("referral_")]
    return [(row["transaction_type"], row["amount"]) for row in reversed(rows)]


def net_referral_gain(client: FlaskClient, user: dict) -> Decimal:
    return sum((Decimal(amount) for _type, amount in referral_entries(client, user)), Decimal("0.00"))
