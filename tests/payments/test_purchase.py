"""`POST /currency/purchase` and `GET /currency/payments/{id}`."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest

from zenzefi_backend.extensions import db
from zenzefi_backend.ledger.models import Transaction
from zenzefi_backend.payments.models import Payment

from .helpers import PURCHASE, audits, count, create_payment, payment_path

CREATED_FIELDS = {"payment_id", "payment_url", "amount_znc", "amount", "currency", "status", "expires_at"}


@pytest.mark.parametrize("body, currency, amount", [
    ({"amount_znc": "100"}, "RUB", "1000.00"),
    ({"amount_znc": 100, "currency": "RUB"}, "RUB", "1000.00"),
    ({"amount_znc": "100.00", "currency": "USD"}, "USD", "11.00"),
    ({"amount_znc": 100, "currency": "EUR"}, "EUR", "10.00"),
    ({"amount_znc": "12.34", "currency": "EUR"}, "EUR", "1.23"),
    ({"amount_znc": "0.01"}, "RUB", "0.10"),
])
def test_purchase_creates_a_pending_payment_with_the_converted_amount(app, client, user, body, currency, amount):
    response = client.post(PURCHASE, headers=user["headers"], json=body)
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert set(created) == CREATED_FIELDS
    assert created["status"] == "pending"
    assert created["currency"] == currency and created["amount"] == amount
    assert created["amount_znc"] == f"{float(body['amount_znc']):.2f}"
    assert created["payment_url"] == f"http://localhost/api/v1/payments/mock/{created['payment_id']}"

    stored = client.get(payment_path(created["payment_id"]), headers=user["headers"]).get_json()
    assert stored["user_id"] == user["id"] and stored["provider"] == "mock"
    assert stored["provider_payment_id"].startswith("mock_") and len(stored["provider_payment_id"]) > 20
    assert stored["completed_at"] is None and stored["return_url"] is None
    assert stored["expires_at"] == created["expires_at"]
    created_at, expires_at = (datetime.fromisoformat(stored[k]) for k in ("created_at", "expires_at"))
    assert expires_at - created_at == timedelta(hours=24)
    assert created["expires_at"].endswith("+00:00")

    [entry] = audits(app, "payment.created")
    assert entry.actor_id == uuid.UUID(user["id"]) and entry.resource_id == created["payment_id"]
    assert entry.details == {"amount_znc": created["amount_znc"], "currency": currency, "amount": amount,
                             "provider": "mock"}
    assert count(app, Transaction) == 0, "creating a payment credits nothing"


def test_provider_payment_ids_are_unique(app, client, user):
    for _ in range(3):
        assert create_payment(client, user).status_code == 201
    with app.app_context():
        ids = {p.provider_payment_id for p in db.session.scalars(db.select(Payment))}
    assert len(ids) == 3


def test_return_url_is_kept(client, user):
    created = create_payment(client, user, return_url="http://localhost:3000/paid?from=app").get_json()
    stored = client.get(payment_path(created["payment_id"]), headers=user["headers"]).get_json()
    assert stored["return_url"] == "http://localhost:3000/paid?from=app"


BAD_BODIES = [
    '{"amount_znc": -1}',
    '{"amount_znc": 0}',
    '{"amount_znc": "0"}',
    '{"amount_znc": 0.001}',
    '{"amount_znc": "0.001"}',
    '{"amount_znc": "NaN"}',
    '{"amount_znc": "Infinity"}',
    '{"amount_znc": 1e309}',
    '{"amount_znc": 1000000000000}',
    '{"amount_znc": "1000000.01"}',
    '{"amount_znc": "abc"}',
    '{"amount_znc": true}',
    '{"amount_znc": null}',
    '{"amount_znc": []}',
    '{}',
    '{"currency": "RUB"}',
    '{"amount_znc": "10", "bonus": "5"}',
    '{"amount_znc": "10", "status": "succeeded"}',
    '{"amount_znc": "10", "currency": "GBP"}',
    '{"amount_znc": "10", "currency": "rub"}',
    '{"amount_znc": "10", "currency": null}',
    '{"amount_znc": "0.01", "currency": "EUR"}',
    '{"amount_znc": "10", "return_url": "javascript:alert(1)"}',
    '{"amount_znc": "10", "return_url": "ftp://example.com/x"}',
    '{"amount_znc": "10", "return_url": "/relative/path"}',
    '{"amount_znc": "10", "return_url": "http://example.com/' + "a" * 2040 + '"}',
    '{"amount_znc": "10", "return_url": 5}',
    '{"amount_znc": "10", "return_url": "http://example.com/\\u0000"}',
    '{"amount_znc": "1E+999999999"}',
    '{"amount_znc": "123456789012345678901234567890.001"}',
]


@pytest.mark.parametrize("raw", BAD_BODIES)
def test_invalid_input_is_422_and_creates_nothing(app, client, user, raw):
    response = client.post(PURCHASE, headers=user["headers"], data=raw, content_type="application/json")
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["code"] == 422 and body["errors"]
    assert count(app, Payment) == 0
    assert count(app, Transaction) == 0
    assert audits(app, "payment.created") == []


def test_the_longest_return_url_is_accepted(client, user):
    url = "https://example.com/" + "a" * (2048 - len("https://example.com/"))
    assert create_payment(client, user, return_url=url).status_code == 201


def test_malformed_json_is_400(app, client, user):
    response = client.post(PURCHASE, headers=user["headers"], data='{"amount_znc": ', content_type="application/json")
    assert response.status_code == 400
    assert count(app, Payment) == 0


def test_purchase_needs_a_jwt(app, client):
    assert client.post(PURCHASE, json={"amount_znc": "100"}).status_code == 401
    assert count(app, Payment) == 0


def test_someone_elses_payment_is_404(client, accounts, user, payment):
    other = accounts.signed_in()
    response = client.get(payment_path(payment["payment_id"]), headers=other["headers"])
    assert response.status_code == 404
    assert response.get_json()["code"] == 404
    assert client.get(payment_path(str(uuid.uuid4())), headers=user["headers"]).status_code == 404
    assert client.get(payment_path(payment["payment_id"])).status_code == 401
    assert client.get(payment_path(payment["payment_id"]), headers=user["headers"]).status_code == 200


def test_idempotent_replay_returns_the_first_payment(app, client, user):
    headers = {**user["headers"], "Idempotency-Key": "top-up-1"}
    first = client.post(PURCHASE, headers=headers, json={"amount_znc": "100", "currency": "USD"})
    assert first.status_code == 201
    replay = client.post(PURCHASE, headers=headers, json={"currency": "USD", "amount_znc": "100"})
    assert replay.status_code == 201
    assert replay.get_json() == first.get_json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert count(app, Payment) == 1

    changed = client.post(PURCHASE, headers=headers, json={"amount_znc": "200", "currency": "USD"})
    assert changed.status_code == 422
    assert count(app, Payment) == 1
    other_key = client.post(PURCHASE, headers={**user["headers"], "Idempotency-Key": "top-up-2"},
                            json={"amount_znc": "100", "currency": "USD"})
    assert other_key.status_code == 201 and other_key.get_json()["payment_id"] != first.get_json()["payment_id"]
    assert count(app, Payment) == 2


def test_without_a_payment_provider_purchase_is_503_and_creates_nothing(app, client, user, mock_payments_disabled):
    response = client.post(PURCHASE, headers=user["headers"], json={"amount_znc": "100"})
    assert response.status_code == 503
    assert response.get_json() == {"code": 503, "status": "Service Unavailable",
                                   "message": "No payment provider is configured."}
    assert count(app, Payment) == 0
    assert audits(app, "payment.created") == []
