"""Hostile and malformed input on the money endpoints: always a 4xx, never a 500, and nothing changes.

Also the refund arithmetic (`refund_for`) as plain unit tests, and token states that need the clock
moved: the proxy that activates tokens does not exist yet, so a test sets `activated_at`/`expires_at`
directly in the database.
"""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from tests.fixtures.actions import buy_token
from tests.money.helpers import (
    PURCHASE,
    adjust,
    adjustments_path,
    balance,
    fund,
    ledger,
    token_path,
    tokens,
)
from zenzefi_backend.tokens.models import AccessToken
from zenzefi_backend.tokens.services import refund_for

START = Decimal("1000.00")
OTHER_USER = str(uuid.uuid4())


@pytest.fixture
def buyer(accounts, client, admin) -> dict:
    """A user with plenty of ZNC, so a refusal is never about the balance."""
    user = accounts.signed_in()
    fund(client, admin, user, START)
    return user


def post_raw(client, path: str, raw: str, headers: dict[str, str]):
    return client.post(path, data=raw, content_type="application/json", headers=headers)


def assert_error_body(response, code: int) -> dict:
    assert response.status_code == code, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.is_json, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert body["code"] == code and isinstance(body["message"], str), body
    return body


def assert_untouched(client, user: dict, *, entries: int = 1, amount: Decimal = START) -> None:
    assert balance(client, user) == amount
    assert len(ledger(client, user)) == entries
    assert tokens(client, user) == []


# --- POST /api/v1/tokens/purchase -------------------------------------------------------------------------------

BAD_PURCHASES = [
    '{"duration_hours": -1}',
    '{"duration_hours": 0}',
    '{"duration_hours": 0.001}',
    '{"duration_hours": "NaN"}',
    '{"duration_hours": NaN}',
    '{"duration_hours": 1e309}',
    '{"duration_hours": -1e309}',
    f'{{"duration_hours": {10**12}}}',
    '{"duration_hours": "abc"}',
    '{"duration_hours": null}',
    '{"duration_hours": true}',
    '{"duration_hours": [24]}',
    '{"duration_hours": {"hours": 24}}',
    "{}",
    '{"scope": "full"}',
    '{"duration_hours": 2}',
    '{"duration_hours": "24"}',
    '{"duration_hours": 24.5}',
    '{"duration_hours": 24.0}',
    '{"duration_hours": 24, "scope": "admin"}',
    '{"duration_hours": 24, "scope": "FULL"}',
    '{"duration_hours": 24, "scope": ""}',
    '{"duration_hours": 24, "scope": null}',
    '{"duration_hours": 24, "scope": ["full"]}',
    '{"duration_hours": 24, "price": "0.01"}',
    '{"duration_hours": 24, "paid_znc": "0.00"}',
    '{"duration_hours": 24, "source": "bundle"}',
    f'{{"duration_hours": 24, "user_id": "{OTHER_USER}"}}',
]


@pytest.mark.parametrize("raw", BAD_PURCHASES)
def test_invalid_purchase_is_422_and_buys_nothing(client, buyer, raw):
    assert_error_body(post_raw(client, PURCHASE, raw, buyer["headers"]), 422)
    assert_untouched(client, buyer)


@pytest.mark.parametrize("raw", ["[]", '[{"duration_hours": 24}]', '"24"', "24", "null", "true"])
def test_purchase_body_that_is_not_an_object_is_refused(client, buyer, raw):
    response = post_raw(client, PURCHASE, raw, buyer["headers"])
    assert response.status_code in (400, 422), response.get_json()
    assert_error_body(response, response.status_code)
    assert_untouched(client, buyer)


@pytest.mark.parametrize("raw", [
    '{"duration_hours": ', "{'duration_hours': 24}", '{"duration_hours": 24,}', "\xff\xfe",
    pytest.param('{"duration_hours": 1' + "0" * 5000 + "}", id="integer-over-4300-digits"),  # json.loads: ValueError
])
def test_malformed_purchase_json_is_400(client, buyer, raw):
    assert_error_body(post_raw(client, PURCHASE, raw, buyer["headers"]), 400)
    assert_untouched(client, buyer)


def test_purchase_as_form_data_buys_nothing(client, buyer):
    response = client.post(PURCHASE, data={"duration_hours": "24"}, headers=buyer["headers"])
    assert response.status_code in (400, 415, 422), response.get_data(as_text=True)[:300]
    assert_untouched(client, buyer)


@pytest.mark.parametrize("key", ["", "   ", "k" * 256, "nul\x00key", "tab\tkey"])
def test_unusable_idempotency_key_is_400_and_buys_nothing(client, buyer, key):
    response = client.post(PURCHASE, json={"duration_hours": 24}, headers={**buyer["headers"], "Idempotency-Key": key})
    assert_error_body(response, 400)
    assert_untouched(client, buyer)


def test_idempotency_keys_are_scoped_to_the_user(client, accounts, admin, buyer):
    other = accounts.signed_in()
    fund(client, admin, other, Decimal("18.00"))
    key = {"Idempotency-Key": "k" * 255}
    first = client.post(PURCHASE, json={"duration_hours": 24}, headers={**buyer["headers"], **key})
    second = client.post(PURCHASE, json={"duration_hours": 24}, headers={**other["headers"], **key})
    assert (first.status_code, second.status_code) == (201, 201), (first.get_json(), second.get_json())
    assert "Idempotent-Replayed" not in second.headers
    assert first.get_json()["id"] != second.get_json()["id"]
    assert balance(client, buyer) == START - 18 and balance(client, other) == 0


def test_purchase_without_enough_balance_is_402_and_changes_nothing(client, accounts, admin):
    user = accounts.signed_in()
    fund(client, admin, user, Decimal("17.99"))
    body = assert_error_body(client.post(PURCHASE, json={"duration_hours": 24}, headers=user["headers"]), 402)
    assert (body["required"], body["available"]) == ("18.00", "17.99"), body
    assert_untouched(client, user, amount=Decimal("17.99"))


# --- POST /api/v1/admin/users/{id}/balance-adjustments ----------------------------------------------------------

BAD_AMOUNTS = [
    "0", '"0"', '"0.00"', '"-0"', "0.001", '"0.001"', '"-0.001"', '"1e-30"', '"NaN"', "NaN", '"Infinity"',
    '"-Infinity"', "Infinity", "1e309", "-1e309", str(10**12), f'"{10**12}"', '"1000000.01"', '"-1000000.01"',
    '"abc"', '""', '" "', '"1,50"', '"1.5.5"', '"0x10"', "null", "true", "false", "[]", "[1]", '{"value": 1}',
]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_invalid_adjustment_amount_is_422_and_moves_nothing(client, admin, buyer, amount):
    raw = f'{{"amount": {amount}, "reason": "test"}}'
    body = assert_error_body(post_raw(client, adjustments_path(buyer["id"]), raw, admin["headers"]), 422)
    assert "amount" in body.get("errors", {}), body
    assert_untouched(client, buyer)


@pytest.mark.parametrize("raw", [
    "{}",
    '{"amount": "5.00"}',
    '{"reason": "no amount"}',
    '{"amount": "5.00", "reason": ""}',
    '{"amount": "5.00", "reason": null}',
    '{"amount": "5.00", "reason": 5}',
    '{"amount": "5.00", "reason": "' + "r" * 256 + '"}',
    '{"amount": "5.00", "reason": "x", "transaction_type": "deposit"}',
    '{"amount": "5.00", "reason": "x", "balance_after": "0.00"}',
    f'{{"amount": "5.00", "reason": "x", "user_id": "{OTHER_USER}"}}',
])
def test_adjustment_with_missing_or_unknown_fields_is_422(client, admin, buyer, raw):
    assert_error_body(post_raw(client, adjustments_path(buyer["id"]), raw, admin["headers"]), 422)
    assert_untouched(client, buyer)


@pytest.mark.parametrize("amount", ['"123456789012345678901234567890.001"', '"1E+999999999"', '"-1E+999999999"',
                                    '"1E-999999999"', '"' + "9" * 40 + '.999"'])
def test_adjustment_amount_beyond_decimal_precision_is_422(client, admin, buyer, amount):
    raw = f'{{"amount": {amount}, "reason": "test"}}'
    assert_error_body(post_raw(client, adjustments_path(buyer["id"]), raw, admin["headers"]), 422)
    assert_untouched(client, buyer)


@pytest.mark.parametrize("amount", ['"123456789012345678901234567890.001"', '"1E+999999999"'])
def test_purchase_refuses_huge_numbers(client, buyer, amount):
    """The same hostile numbers in the purchase body's only numeric field are refused cleanly."""
    assert_error_body(post_raw(client, PURCHASE, f'{{"duration_hours": {amount}}}', buyer["headers"]), 422)
    assert_untouched(client, buyer)


def test_adjustment_below_zero_is_409_and_moves_nothing(client, accounts, admin):
    user = accounts.signed_in()
    assert_error_body(adjust(client, admin, user["id"], "-1"), 409)
    fund(client, admin, user, Decimal("0.99"))
    assert_error_body(adjust(client, admin, user["id"], "-1.00"), 409)
    assert_untouched(client, user, amount=Decimal("0.99"))


def test_adjustment_for_an_unknown_user_is_404(client, admin):
    assert_error_body(adjust(client, admin, str(uuid.uuid4()), "5.00"), 404)


def test_adjustment_needs_a_superuser(client, accounts, buyer):
    someone = accounts.signed_in()
    assert_error_body(adjust(client, someone, buyer["id"], "5.00"), 403)
    assert_error_body(adjust(client, someone, someone["id"], "5.00"), 403)
    assert_untouched(client, buyer)
    assert balance(client, someone) == 0


def test_credit_beyond_the_largest_storable_balance_is_409(app, client, admin, buyer):
    from zenzefi_backend.accounts.models import User
    from zenzefi_backend.extensions import db

    ceiling = Decimal("9999999999.99")  # Numeric(12, 2)
    with app.app_context():
        db.session.execute(sa.update(User).where(User.id == uuid.UUID(buyer["id"])).values(balance=ceiling - 5))
        db.session.commit()
    assert_error_body(adjust(client, admin, buyer["id"], "1000000.00"), 409)
    assert balance(client, buyer) == ceiling - 5
    ok = adjust(client, admin, buyer["id"], "5.00")  # exactly up to the ceiling is fine
    assert ok.status_code == 201 and ok.get_json()["balance_after"] == str(ceiling), ok.get_json()


def test_adjustment_reason_with_a_nul_character_is_422(client, admin, buyer):
    # PostgreSQL cannot store NUL in text: this must be a validation error, never a 500.
    body = assert_error_body(adjust(client, admin, buyer["id"], "5.00", reason="typo\x00fix"), 422)
    assert "reason" in body["errors"], body
    assert_untouched(client, buyer)


# --- other users' tokens, expired tokens, double revokes --------------------------------------------------------


def set_clock_of(app, token_id: str, activated_at: datetime) -> None:
    """Pretend the proxy activated the token at `activated_at` (no proxy exists yet to do it)."""
    with app.app_context():
        from zenzefi_backend.extensions import db

        token = db.session.get(AccessToken, uuid.UUID(token_id))
        token.activated_at = activated_at
        token.expires_at = activated_at + timedelta(hours=token.duration_hours)
        db.session.commit()


def test_another_users_token_is_404_and_stays_usable(client, accounts, admin, buyer):
    token = buy_token(client, buyer, hours=24)
    intruder = accounts.signed_in()
    fund(client, admin, intruder, Decimal("5.00"))
    assert_error_body(client.get(token_path(token["id"]), headers=intruder["headers"]), 404)
    assert_error_body(client.delete(token_path(token["id"]), headers=intruder["headers"]), 404)
    shown = client.get(token_path(token["id"]), headers=buyer["headers"]).get_json()
    assert shown["status"] == "ready" and shown["revoked_at"] is None
    assert balance(client, intruder) == Decimal("5.00") and len(ledger(client, intruder)) == 1
    assert balance(client, buyer) == START - 18


@pytest.mark.parametrize("path", [token_path(str(uuid.uuid4())), "/api/v1/tokens/not-a-uuid",
                                  "/api/v1/tokens/00000000-0000-0000-0000-000000000000"])
def test_unknown_token_is_404(client, buyer, path):
    assert_error_body(client.get(path, headers=buyer["headers"]), 404)
    assert_error_body(client.delete(path, headers=buyer["headers"]), 404)
    assert_untouched(client, buyer)


def test_double_revoke_is_404_and_refunds_once(client, buyer):
    token = buy_token(client, buyer, hours=24)
    first = client.delete(token_path(token["id"]), headers=buyer["headers"])
    assert first.status_code == 200 and first.get_json()["refund_amount"] == "18.00", first.get_json()
    assert_error_body(client.delete(token_path(token["id"]), headers=buyer["headers"]), 404)
    assert balance(client, buyer) == START
    assert len(ledger(client, buyer, "refund")) == 1


def test_revoking_an_expired_token_is_409_and_refunds_nothing(app, client, buyer):
    token = buy_token(client, buyer, hours=24)
    set_clock_of(app, token["id"], datetime.now(UTC) - timedelta(hours=25))
    shown = client.get(token_path(token["id"]), headers=buyer["headers"]).get_json()
    assert shown["status"] == "expired", shown
    assert_error_body(client.delete(token_path(token["id"]), headers=buyer["headers"]), 409)
    assert client.get(token_path(token["id"]), headers=buyer["headers"]).get_json()["revoked_at"] is None
    assert balance(client, buyer) == START - 18
    assert ledger(client, buyer, "refund") == []


def test_revoking_a_half_used_token_refunds_the_unused_part_rounded_down(app, client, buyer):
    token = buy_token(client, buyer, hours=24)
    set_clock_of(app, token["id"], datetime.now(UTC) - timedelta(hours=12))
    result = client.delete(token_path(token["id"]), headers=buyer["headers"]).get_json()
    # A little under 12 of 24 hours are left by the time the revoke runs: 18 × (12 h − ε) / 24 h → 8.99.
    assert result["refund_amount"] == "8.99", result
    assert Decimal(result["new_balance"]) == START - 18 + Decimal("8.99") == balance(client, buyer)
    assert [row["amount"] for row in ledger(client, buyer, "refund")] == ["8.99"]


# --- refund arithmetic ------------------------------------------------------------------------------------------

NOW = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def token_with(hours: int, paid: str, left: timedelta | None) -> AccessToken:
    """A token that was activated so that `left` remains at NOW (None: never activated)."""
    token = AccessToken(duration_hours=hours, paid_znc=Decimal(paid))
    if left is not None:
        token.expires_at = NOW + left
        token.activated_at = token.expires_at - timedelta(hours=hours)
    return token


@pytest.mark.parametrize("hours, paid, left, refund", [
    (24, "18.00", None, "18.00"),                                   # never activated → full
    (720, "300.00", None, "300.00"),
    (24, "16.20", None, "16.20"),                                   # a bundle share: what was actually paid
    (24, "18.00", timedelta(hours=12), "9.00"),                     # half used → half
    (12, "10.01", timedelta(hours=6), "5.00"),                      # 5.005 → rounded down
    (1, "1.00", timedelta(minutes=30), "0.50"),
    (24, "16.20", timedelta(hours=7), "4.72"),                      # 4.725 → 4.72
    (1, "1.00", timedelta(minutes=59, seconds=59, milliseconds=999), "0.99"),
    (1, "1.00", timedelta(microseconds=1), "0.00"),
    (24, "18.00", timedelta(hours=24), "18.00"),                    # activated this instant
    (24, "18.00", timedelta(0), "0.00"),                            # expired this instant
    (24, "18.00", -timedelta(hours=1), "0.00"),                     # expired an hour ago: never negative
    (720, "0.01", timedelta(hours=719), "0.00"),                    # a cent can't be split: rounded down
])
def test_refund_for(hours, paid, left, refund):
    assert refund_for(token_with(hours, paid, left), NOW) == Decimal(refund)


def test_refund_is_never_above_what_was_paid():
    # Activation stamped in the future (clock skew): more than the whole duration "left".
    token = AccessToken(duration_hours=24, paid_znc=Decimal("18.00"), activated_at=NOW + timedelta(hours=5),
                        expires_at=NOW + timedelta(hours=29))
    assert refund_for(token, NOW) == Decimal("18.00")


@pytest.mark.parametrize("paid", ["0.01", "0.99", "1.00", "16.20", "17.99", "18.00", "299.99", "300.00"])
@pytest.mark.parametrize("hours", [1, 12, 24, 168, 720])
def test_refund_is_between_zero_and_paid_and_shrinks_with_time(paid, hours):
    refunds = [refund_for(token_with(hours, paid, timedelta(hours=hours) * step / 8), NOW) for step in range(9)]
    assert refunds[0] == 0 and refunds[-1] == Decimal(paid)
    assert refunds == sorted(refunds)
    assert all(refund == refund.quantize(Decimal("0.01")) for refund in refunds)



# --- how an amount may be written, on every money field -----------------------------------------------------------

# Only ASCII digits, an optional "." with one or two digits (and "-" where negative amounts are allowed), as a
# string or a JSON number written that way. Each of these is refused with a 422 naming the field.
BADLY_WRITTEN_AMOUNTS = [
    '"５"', '"٥"', '"１０.00"', '"٥.٠٠"', '"𝟓"', '"१०"', '"1e2"', '"1E2"', '"1.5e1"', '" 5.00"', '"5.00 "', '"\\t5"',
    '"5\\u00a0"', '"+5"', '"5."', '".5"', '"1_000"', '"5,00"', '"1.230"', '"0x10"', '"½"', "1e2", "1E2", "1.0e2",
    "5.000", "5e0",
]
MONEY_FIELDS = [
    pytest.param("adjustment", "amount", id="admin-balance-adjustment"),
    pytest.param("currency-purchase", "amount_znc", id="currency-purchase"),
    pytest.param("mock-purchase", "amount", id="mock-purchase"),
]


def money_request(kind: str, field: str, amount: str, buyer: dict, admin: dict) -> tuple[str, str, dict]:
    """(path, raw body, headers) of a request whose only questionable part is the amount."""
    if kind == "adjustment":
        return adjustments_path(buyer["id"]), f'{{"{field}": {amount}, "reason": "test"}}', admin["headers"]
    path = {"currency-purchase": "/api/v1/currency/purchase", "mock-purchase": "/api/v1/currency/mock-purchase"}[kind]
    return path, f'{{"{field}": {amount}}}', buyer["headers"]


def payments_of(app, user: dict) -> int:
    from zenzefi_backend.extensions import db
    from zenzefi_backend.payments.models import Payment

    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(Payment)
                                 .where(Payment.user_id == uuid.UUID(user["id"])))


@pytest.mark.parametrize("kind, field", MONEY_FIELDS)
@pytest.mark.parametrize("amount", BADLY_WRITTEN_AMOUNTS)
def test_an_amount_not_written_in_ascii_digits_is_422_on_every_money_field(app, client, admin, buyer, kind, field,
                                                                          amount):
    path, raw, headers = money_request(kind, field, amount, buyer, admin)
    body = assert_error_body(post_raw(client, path, raw, headers), 422)
    assert field in body["errors"] and field in body["message"], body
    assert_untouched(client, buyer)
    assert payments_of(app, buyer) == 0


@pytest.mark.parametrize("kind, field", MONEY_FIELDS)
@pytest.mark.parametrize("amount, credited", [('"5"', "5.00"), ('"5.5"', "5.50"), ('"5.05"', "5.05"), ("5", "5.00"),
                                              ("5.5", "5.50"), ("5.00", "5.00")])
def test_an_amount_in_ascii_digits_is_accepted_on_every_money_field(app, client, admin, buyer, kind, field, amount,
                                                                     credited):
    path, raw, headers = money_request(kind, field, amount, buyer, admin)
    response = post_raw(client, path, raw, headers)
    assert response.status_code == 201, response.get_json()
    if kind == "currency-purchase":
        assert response.get_json()["amount_znc"] == credited
    else:
        assert balance(client, buyer) == START + Decimal(credited)


@pytest.mark.parametrize("amount", ['"５"', '"1e2"', '" 100.00"', '"+100"', "1e2", "100.000"])
def test_a_signed_payment_webhook_with_a_badly_written_amount_is_400_and_credits_nothing(app, client, buyer, amount):
    from tests.payments.helpers import Provider, create_payment, encode, event

    payment = create_payment(client, buyer).get_json()
    raw = encode(event(payment["payment_id"], amount_znc="AMOUNT")).replace(b'"AMOUNT"', amount.encode())
    response = Provider(app, client).deliver(raw)
    assert response.status_code == 400, response.get_json()
    assert "amount_znc" in response.get_json()["message"]
    assert balance(client, buyer) == START
