"""The operator's own gateway: our checkout URL template, its X-Zenzefi-Signature webhook, no reconciliation."""
from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from zenzefi_backend import clock
from zenzefi_backend.extensions import db
from zenzefi_backend.payments import services
from zenzefi_backend.payments.models import Payment

from .helpers import (
    assert_ledger_consistent,
    assert_untouched,
    balance,
    count,
    create_payment,
    deposits,
    event,
    status_of,
)

GATEWAY_URL = "https://pay.example.com/checkout/{payment_id}?amount={amount}&currency={currency}&back={return_url}"
PROCESSED = {"received": True, "processed": True}


@pytest.fixture
def gateway(app, monkeypatch) -> None:
    for name, value in {"PAYMENT_PROVIDER": "gateway", "PAYMENT_GATEWAY_URL": GATEWAY_URL,
                        "MOCK_PAYMENTS_ENABLED": False}.items():
        monkeypatch.setitem(app.config, name, value)


def test_the_payment_url_is_the_gateway_template_filled_in(app, client, user, gateway):
    response = create_payment(client, user, currency="EUR", return_url="https://app.example/back?x=1")
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    url = urlsplit(created["payment_url"])
    assert (url.scheme, url.netloc, url.path) == ("https", "pay.example.com", f"/checkout/{created['payment_id']}")
    assert parse_qs(url.query) == {"amount": ["10.00"], "currency": ["EUR"], "back": ["https://app.example/back?x=1"]}
    with app.app_context():
        row = db.session.get(Payment, uuid.UUID(created["payment_id"]))
        assert (row.provider, row.provider_payment_id) == ("gateway", f"gateway_{uuid.UUID(created['payment_id']).hex}")


def test_the_gateways_signed_webhook_credits_once(app, client, provider, user, gateway):
    created = create_payment(client, user).get_json()
    body = event(created["payment_id"])
    assert provider.deliver(body).get_json() == PROCESSED
    assert provider.deliver(body).get_json() == {"received": True, "processed": False}
    assert balance(client, user) == "100.00" and len(deposits(app)) == 1
    assert status_of(client, user, created["payment_id"]) == "succeeded"
    assert_ledger_consistent(app)


def test_the_mock_checkout_cannot_pay_a_gateway_payment(app, client, user, gateway, monkeypatch):
    created = create_payment(client, user).get_json()
    monkeypatch.setitem(app.config, "MOCK_PAYMENTS_ENABLED", True)
    assert client.post(f"/api/v1/payments/mock/{created['payment_id']}/succeed").status_code == 404
    assert_untouched(app, client, user, created["payment_id"])


def test_a_payment_left_by_the_mock_provider_is_not_the_gateways(app, client, provider, user, monkeypatch):
    created = create_payment(client, user).get_json()  # mock
    monkeypatch.setitem(app.config, "PAYMENT_PROVIDER", "gateway")
    monkeypatch.setitem(app.config, "PAYMENT_GATEWAY_URL", GATEWAY_URL)
    response = provider.deliver(event(created["payment_id"]))
    assert response.status_code == 404
    assert_untouched(app, client, user, created["payment_id"])


def test_the_gateway_has_no_reconciliation(app, client, user, gateway):
    created = create_payment(client, user).get_json()
    with clock.travel(timedelta(hours=1)), app.app_context():
        assert services.reconcile_pending_payments() == {"checked": 0, "settled": 0, "rejected": 0, "unavailable": 0}
    assert status_of(client, user, created["payment_id"]) == "pending"


def test_the_providers_endpoint_names_the_gateway(client, gateway):
    assert client.get("/api/v1/currency/providers").get_json() == {
        "provider": "gateway", "available": True, "currencies": ["RUB", "USD", "EUR"], "minimums": {},
        "reconciles": False}


def test_a_return_url_too_long_for_the_gateways_checkout_url_is_422(app, client, user, gateway):
    response = create_payment(client, user, return_url="https://app.example/" + "%20" * 600)
    assert response.status_code == 422, response.get_json()
    assert "return_url" in response.get_json()["errors"]
    assert count(app, Payment) == 0
