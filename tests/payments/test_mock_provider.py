"""The mock provider (checkout page, Pay, Cancel), mock-purchase, and both switched off."""
from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from zenzefi_backend import clock
from zenzefi_backend.extensions import db
from zenzefi_backend.ledger.models import Transaction
from zenzefi_backend.payments.models import PaymentWebhookEvent
from zenzefi_backend.payments.services import expire_pending_payments

from .helpers import (
    MOCK_PURCHASE,
    assert_ledger_consistent,
    audits,
    balance,
    checkout_path,
    count,
    create_payment,
    deposits,
    event,
    status_of,
)


def test_the_checkout_page_shows_the_payment_and_its_buttons(client, payment):
    response = client.get(checkout_path(payment["payment_id"]))
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "1000.00 RUB" in page and "100.00 ZNC" in page and payment["payment_id"] in page
    assert f'action="/api/v1/payments/mock/{payment["payment_id"]}/succeed"' in page
    assert f'action="/api/v1/payments/mock/{payment["payment_id"]}/cancel"' in page
    assert "<script" not in page
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_payment_url_leads_to_the_checkout_page(client, payment):
    path = urlsplit(payment["payment_url"]).path
    assert client.get(path).status_code == 200


def test_pay_credits_once_through_the_signed_webhook(app, client, user, payment):
    response = client.post(checkout_path(payment["payment_id"]) + "/succeed")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "Payment succeeded" in page and "<form" not in page
    assert balance(client, user) == "100.00"
    assert status_of(client, user, payment["payment_id"]) == "succeeded"
    # It went through the webhook path: a provider event id was recorded and the credit audited with it.
    with app.app_context():
        [event_id] = db.session.scalars(sa.select(PaymentWebhookEvent.event_id)).all()
    assert event_id.startswith("evt_mock_")
    [audit] = audits(app, "payment.succeeded")
    assert audit.details["event_id"] == event_id
    assert audits(app, "payment.webhook_rejected") == []

    again = client.post(checkout_path(payment["payment_id"]) + "/succeed")
    assert again.status_code == 200
    assert "already succeeded" in again.get_data(as_text=True)
    assert balance(client, user) == "100.00"
    assert len(deposits(app)) == 1
    assert_ledger_consistent(app)

    after = client.get(checkout_path(payment["payment_id"])).get_data(as_text=True)
    assert "succeeded" in after and "<form" not in after


def test_cancel_changes_the_state_and_a_later_pay_credits_nothing(app, client, user, payment):
    response = client.post(checkout_path(payment["payment_id"]) + "/cancel")
    assert response.status_code == 200
    assert "Payment canceled" in response.get_data(as_text=True)
    assert status_of(client, user, payment["payment_id"]) == "canceled"
    assert len(audits(app, "payment.canceled")) == 1

    pay = client.post(checkout_path(payment["payment_id"]) + "/succeed")
    assert pay.status_code == 200 and "already canceled" in pay.get_data(as_text=True)
    assert balance(client, user) == "0.00" and deposits(app) == []
    assert_ledger_consistent(app)


@pytest.mark.parametrize("return_url, kept_query", [
    ("https://app.example.com/paid", {}),
    ("http://localhost:3000/wallet?tab=top-up", {"tab": ["top-up"]}),
])
def test_buttons_send_the_customer_back_to_the_return_url(client, user, return_url, kept_query):
    created = create_payment(client, user, return_url=return_url).get_json()
    response = client.post(checkout_path(created["payment_id"]) + "/succeed")
    assert response.status_code == 303
    location = urlsplit(response.headers["Location"])
    assert location._replace(query="").geturl() == urlsplit(return_url)._replace(query="").geturl()
    assert parse_qs(location.query) == {**kept_query, "payment_id": [created["payment_id"]],
                                        "status": ["succeeded"]}
    assert balance(client, user) == "100.00"

    canceled = create_payment(client, user, return_url=return_url).get_json()
    response = client.post(checkout_path(canceled["payment_id"]) + "/cancel")
    assert response.status_code == 303
    assert parse_qs(urlsplit(response.headers["Location"]).query)["status"] == ["canceled"]


def test_an_unknown_payment_has_no_checkout(client):
    missing = str(uuid.uuid4())
    for method, path in (("get", ""), ("post", "/succeed"), ("post", "/cancel")):
        response = getattr(client, method)(checkout_path(missing) + path)
        assert response.status_code == 404 and response.is_json


def test_pay_for_an_expired_payment_credits_nothing(app, client, user, payment):
    with app.app_context(), clock.travel(timedelta(hours=24, seconds=1)):
        assert expire_pending_payments() == 1
    page = client.get(checkout_path(payment["payment_id"])).get_data(as_text=True)
    assert "expired" in page and "<form" not in page
    response = client.post(checkout_path(payment["payment_id"]) + "/succeed")
    assert response.status_code == 200 and "already expired" in response.get_data(as_text=True)
    assert balance(client, user) == "0.00" and deposits(app) == []


# --- mock-purchase -------------------------------------------------------------------------------------------------


def test_mock_purchase_deposits_at_once(app, client, user):
    response = client.post(MOCK_PURCHASE, headers=user["headers"], json={"amount": "25.50"})
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"transaction", "new_balance"}
    assert body["new_balance"] == "25.50"
    assert body["transaction"]["transaction_type"] == "deposit" and body["transaction"]["amount"] == "25.50"
    assert body["transaction"]["balance_after"] == "25.50" and body["transaction"]["user_id"] == user["id"]
    assert client.post(MOCK_PURCHASE, headers=user["headers"], json={"amount": 4.5}).get_json()["new_balance"] \
        == "30.00"
    assert balance(client, user) == "30.00"
    assert len(audits(app, "payment.mock_purchase")) == 2
    assert_ledger_consistent(app)


@pytest.mark.parametrize("raw", ['{"amount": -1}', '{"amount": 0}', '{"amount": 0.001}', '{"amount": "NaN"}',
                                 '{"amount": 1e309}', '{"amount": 1000000000000}', '{"amount": "abc"}', '{}',
                                 '{"amount": "5", "user_id": "x"}',
                                 '{"amount": "1E+999999999"}'])
def test_mock_purchase_rejects_bad_amounts(app, client, user, raw):
    response = client.post(MOCK_PURCHASE, headers=user["headers"], data=raw, content_type="application/json")
    assert response.status_code == 422
    assert count(app, Transaction) == 0


def test_mock_purchase_is_idempotent(app, client, user):
    headers = {**user["headers"], "Idempotency-Key": "mock-1"}
    first = client.post(MOCK_PURCHASE, headers=headers, json={"amount": "10"})
    replay = client.post(MOCK_PURCHASE, headers=headers, json={"amount": "10"})
    assert first.status_code == replay.status_code == 201 and replay.get_json() == first.get_json()
    assert balance(client, user) == "10.00" and len(deposits(app)) == 1


def test_mock_purchase_needs_a_jwt(client):
    assert client.post(MOCK_PURCHASE, json={"amount": "10"}).status_code == 401


# --- mock mode off -------------------------------------------------------------------------------------------------


def test_with_mock_payments_off_every_mock_route_is_404_like_a_missing_one(app, client, user, payment,
                                                                           mock_payments_disabled):
    missing = client.get("/api/v1/no/such/route").get_json()
    attempts = [
        client.get(checkout_path(payment["payment_id"])),
        client.post(checkout_path(payment["payment_id"]) + "/succeed"),
        client.post(checkout_path(payment["payment_id"]) + "/cancel"),
        client.post(MOCK_PURCHASE, headers=user["headers"], json={"amount": "10"}),
        client.post(MOCK_PURCHASE, headers=user["headers"], json={"amount": "not even valid"}),
        client.post(MOCK_PURCHASE, json={"amount": "10"}),
    ]
    for response in attempts:
        assert response.status_code == 404
        assert response.get_json() == missing
    assert balance(client, user) == "0.00" and count(app, Transaction) == 0
    assert status_of(client, user, payment["payment_id"]) == "pending"


def test_with_mock_payments_off_a_signed_webhook_still_works(client, provider, user, payment,
                                                              mock_payments_disabled):
    response = provider.deliver(event(payment["payment_id"]))
    assert response.status_code == 200 and response.get_json()["processed"] is True
    assert balance(client, user) == "100.00"
