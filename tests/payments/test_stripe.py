"""Top-ups through Stripe inside the app: our API → the official `stripe` library → localstripe with Checkout
Sessions (tests/fixtures/fake_stripe.py), and the events localstripe signs and sends back into
`POST /api/v1/webhooks/payment/stripe`, verified there by the library's own `Stripe-Signature` check."""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta

import pytest
import stripe

from tests.fixtures.fake_stripe import API_KEY, DECLINED_CARD, SEPA_FAILING_IBAN, WEBHOOK_SECRET
from tests.fixtures.race import race
from tests.fixtures.webhooks import Received
from tests.support import postgres_only
from zenzefi_backend import clock
from zenzefi_backend.extensions import db
from zenzefi_backend.notifications.models import OutboxEvent
from zenzefi_backend.payments import services
from zenzefi_backend.payments.models import Payment, PaymentWebhookEvent

from . import helpers
from .helpers import (
    PURCHASE,
    WEBHOOK,
    assert_ledger_consistent,
    assert_untouched,
    audits,
    balance,
    count,
    create_payment,
    deposits,
    event,
    reconcile,
    sign,
    status_of,
)

STRIPE_WEBHOOK = "/api/v1/webhooks/payment/stripe"
PROCESSED = {"received": True, "processed": True}
IGNORED = {"received": True, "processed": False}


def top_up(client, user, **body) -> dict:
    """In dollars unless the test says otherwise: Stripe takes USD and EUR, not the API's default currency."""
    return helpers.top_up(client, user, **{"currency": "USD", **body})


def session_id_of(app, payment: dict) -> str:
    with app.app_context():
        return db.session.get(Payment, uuid.UUID(payment["payment_id"])).provider_payment_id


def deliver(client, received: Received | bytes, signature: str | None = None):
    """POST to our Stripe endpoint what Stripe sent: the raw bytes and their `Stripe-Signature`."""
    raw = received if isinstance(received, bytes) else received.body
    if signature is None and not isinstance(received, bytes):
        signature = received.headers["stripe-signature"]
    headers = {} if signature is None else {"Stripe-Signature": signature}
    return client.post(STRIPE_WEBHOOK, data=raw, headers=headers, content_type="application/json")


def signed(payload: dict | bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> tuple[bytes, str]:
    """A body and header signed the way Stripe signs, by the library's own helper for tests."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    header = stripe.WebhookSignature.generate_signature_header(raw.decode(), secret, timestamp=timestamp)
    return raw, header


def checkout_event(session: dict, event_type: str = "checkout.session.completed") -> dict:
    return {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": event_type, "data": {"object": session}}


def rejections(app) -> list[str]:
    return [entry.details["reason"] for entry in audits(app, "payment.webhook_rejected")]


# --- creation ------------------------------------------------------------------------------------------------------


def test_a_top_up_is_a_checkout_session_keyed_and_tagged_with_our_id(app, client, user, stripe_shop):
    created = top_up(client, user, amount_znc="100", return_url="https://app.example/paid?x=1")
    [sent] = stripe_shop.fake.session_creations()
    assert sent["idempotency_key"] == created["payment_id"]
    params = sent["params"]
    assert params["mode"] == "payment"
    assert params["client_reference_id"] == created["payment_id"]
    assert params["metadata"] == {"payment_id": created["payment_id"]}
    assert params["payment_intent_data"] == {"metadata": {"payment_id": created["payment_id"]}}
    [item] = params["line_items"]
    assert item["price_data"]["currency"] == "usd" and item["price_data"]["unit_amount"] == 1100  # 11.00 USD
    assert item["quantity"] == 1 and item["price_data"]["product_data"]["name"] == "100.00 ZNC"
    assert params["success_url"] == f"https://app.example/paid?x=1&payment_id={created['payment_id']}"
    # The session closes an hour before our payment does (Stripe allows 30 min to 24 h).
    expires = datetime.fromisoformat(created["expires_at"])
    assert int(params["expires_at"]) == int((expires - timedelta(hours=1)).timestamp())

    session = stripe.StripeClient(API_KEY, base_addresses={"api": stripe_shop.fake.api_base}) \
        .v1.checkout.sessions.retrieve(session_id_of(app, created))
    assert created["payment_url"] == session["url"]
    assert (session["amount_total"], session["currency"], session["status"]) == (1100, "usd", "open")
    assert (created["amount"], created["currency"], created["status"]) == ("11.00", "USD", "pending")
    with app.app_context():
        row = db.session.get(Payment, uuid.UUID(created["payment_id"]))
        assert (row.provider, row.provider_payment_id, row.payment_url) == ("stripe", session["id"], session["url"])


def test_without_a_return_url_the_customer_comes_back_to_the_frontend(app, client, user, stripe_shop):
    created = top_up(client, user)
    [sent] = stripe_shop.fake.session_creations()
    assert sent["params"]["success_url"] == f"{app.config['FRONTEND_URL']}?payment_id={created['payment_id']}"
    assert sent["params"]["cancel_url"].endswith(f"payment_id={created['payment_id']}&status=canceled")


def test_the_providers_endpoint_says_stripe_takes_dollars_and_euros(client, stripe_shop):
    body = client.get("/api/v1/currency/providers").get_json()
    assert body == {"provider": "stripe", "available": True, "currencies": ["USD", "EUR"],
                    "minimums": {"USD": "0.50", "EUR": "0.50"}, "reconciles": True}


@pytest.mark.parametrize("body", [
    {"amount_znc": "100", "currency": "RUB"},  # Stripe does not take roubles here
    {"amount_znc": "100"},  # RUB is the default currency
    {"amount_znc": "4.40", "currency": "USD"},  # 0.48 USD, below Stripe's 0.50
    {"amount_znc": "4.90", "currency": "EUR"},  # 0.49 EUR
])
def test_what_stripe_cannot_take_is_422_before_any_call(app, client, user, stripe_shop, body):
    response = client.post(PURCHASE, headers=user["headers"], json=body)
    assert response.status_code == 422, response.get_json()
    assert "amount_znc" in response.get_json()["errors"]
    assert stripe_shop.fake.requests() == []
    assert count(app, Payment) == 0


def test_the_minimum_itself_is_accepted(client, user, stripe_shop):
    assert top_up(client, user, amount_znc="5", currency="EUR")["amount"] == "0.50"


@pytest.mark.parametrize("outage", ["503", "connection refused"])
def test_stripe_failing_at_creation_is_503_and_nothing_is_stored(app, client, user, stripe_shop, monkeypatch,
                                                                 outage):
    if outage == "503":
        stripe_shop.fake.down()
    else:
        from tests.e2e.harness import free_port

        monkeypatch.setitem(app.config, "STRIPE_API_BASE", f"http://127.0.0.1:{free_port()}")
    response = create_payment(client, user, currency="USD")
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["message"] == "The payment provider is unavailable; try again shortly."
    assert count(app, Payment) == 0
    assert audits(app, "payment.created") == []


def test_a_retry_with_the_same_idempotency_key_creates_one_session(app, client, user, stripe_shop):
    headers = {**user["headers"], "Idempotency-Key": "top-up-1"}
    first = client.post(PURCHASE, headers=headers, json={"amount_znc": "100", "currency": "USD"})
    again = client.post(PURCHASE, headers=headers, json={"amount_znc": "100", "currency": "USD"})
    assert first.status_code == again.status_code == 201
    assert first.get_json() == again.get_json()
    assert len(stripe_shop.fake.session_creations()) == 1 and count(app, Payment) == 1


# --- the webhook -----------------------------------------------------------------------------------------------------


def test_paying_the_session_credits_once_through_the_signed_webhook(app, client, user, stripe_shop):
    created = top_up(client, user)
    paid = stripe_shop.fake.pay(session_id_of(app, created))
    assert paid["payment_status"] == "paid"

    completed = stripe_shop.event()
    assert stripe_shop.type_of(completed) == "checkout.session.completed"
    response = deliver(client, completed)
    assert response.status_code == 200 and response.get_json() == PROCESSED
    assert balance(client, user) == "100.00"
    assert status_of(client, user, created["payment_id"]) == "succeeded"
    [deposit] = deposits(app)
    assert deposit.reference_id == created["payment_id"] and str(deposit.amount) == "100.00"
    with app.app_context():
        [topped_up] = db.session.scalars(db.select(OutboxEvent).where(OutboxEvent.event_type == "balance.topped_up"))
        assert topped_up.payload["payment_id"] == created["payment_id"]
        assert topped_up.payload["amount"] == "11.00" and topped_up.payload["currency"] == "USD"
    [audit] = audits(app, "payment.succeeded")
    assert audit.details["event_id"] == json.loads(completed.body)["id"] and audit.details["source"] == "callback"

    # Stripe retries (a lost 200): the same event changes nothing.
    for _ in range(2):
        assert deliver(client, completed).get_json() == IGNORED
    assert balance(client, user) == "100.00" and len(deposits(app)) == 1
    assert_ledger_consistent(app)

    # The money really moved at "Stripe": a succeeded PaymentIntent carrying our id.
    intent = stripe.StripeClient(API_KEY, base_addresses={"api": stripe_shop.fake.api_base}) \
        .v1.payment_intents.retrieve(paid["payment_intent"])
    assert intent["status"] == "succeeded" and intent["amount"] == 1100
    assert intent["metadata"]["payment_id"] == created["payment_id"]


def test_the_hosted_page_pays_and_returns_the_customer(app, client, user, stripe_shop):
    import requests

    created = top_up(client, user, return_url="https://app.example/done")
    page = requests.get(created["payment_url"], timeout=5)
    assert page.status_code == 200 and "11.00 USD" in page.text
    paid = requests.post(created["payment_url"], allow_redirects=False, timeout=5)
    assert paid.status_code == 303
    assert paid.headers["Location"] == f"https://app.example/done?payment_id={created['payment_id']}"
    assert deliver(client, stripe_shop.event()).get_json() == PROCESSED
    assert balance(client, user) == "100.00"


def test_a_declined_card_leaves_the_payment_pending(app, client, user, stripe_shop):
    created = top_up(client, user)
    declined = stripe_shop.fake.pay_failing(session_id_of(app, created), card=DECLINED_CARD)
    assert declined.status_code == 402
    # localstripe stores every event it sends when it happens: the charge failed, no checkout event exists.
    events = stripe.StripeClient(API_KEY, base_addresses={"api": stripe_shop.fake.api_base}).v1.events.list()
    assert [e["type"] for e in events.data] == ["payment_intent.payment_failed"]
    assert_untouched(app, client, user, created["payment_id"])


def test_an_expired_session_cancels_the_payment(app, client, user, stripe_shop):
    created = top_up(client, user)
    stripe.StripeClient(API_KEY, base_addresses={"api": stripe_shop.fake.api_base}) \
        .v1.checkout.sessions.expire(session_id_of(app, created))
    expired = stripe_shop.event()
    assert stripe_shop.type_of(expired) == "checkout.session.expired"
    assert deliver(client, expired).get_json() == PROCESSED
    assert status_of(client, user, created["payment_id"]) == "canceled"
    assert balance(client, user) == "0.00" and deposits(app) == []
    assert len(audits(app, "payment.canceled")) == 1


def test_a_delayed_payment_method_credits_when_it_settles(app, client, user, stripe_shop):
    created = top_up(client, user, currency="EUR")
    stripe_shop.fake.pay(session_id_of(app, created), method="sepa_debit")
    completed, settled = stripe_shop.events(2)
    assert [stripe_shop.type_of(completed), stripe_shop.type_of(settled)] == [
        "checkout.session.completed", "checkout.session.async_payment_succeeded"]
    assert json.loads(completed.body)["data"]["object"]["payment_status"] == "unpaid"
    assert deliver(client, completed).get_json() == IGNORED  # completed, but no money yet
    assert status_of(client, user, created["payment_id"]) == "pending"
    assert deliver(client, settled).get_json() == PROCESSED
    assert balance(client, user) == "100.00"


def test_a_failed_delayed_payment_cancels(app, client, user, stripe_shop):
    created = top_up(client, user, currency="EUR")
    stripe_shop.fake.pay(session_id_of(app, created), method="sepa_debit", iban=SEPA_FAILING_IBAN)
    completed, failed = stripe_shop.events(2)
    assert stripe_shop.type_of(failed) == "checkout.session.async_payment_failed"
    assert deliver(client, completed).get_json() == IGNORED
    assert deliver(client, failed).get_json() == PROCESSED
    assert status_of(client, user, created["payment_id"]) == "canceled"
    assert balance(client, user) == "0.00"


@pytest.mark.parametrize("override", [{"amount_total": 1000}, {"amount_total": 110000}, {"currency": "eur"}])
def test_a_session_whose_amount_or_currency_differs_is_422_credits_nothing_and_is_audited(
        app, client, user, stripe_shop, override):
    created = top_up(client, user)
    stripe_shop.fake.pay(session_id_of(app, created), **override)
    response = deliver(client, stripe_shop.event())
    assert response.status_code == 422, response.get_json()
    assert_untouched(app, client, user, created["payment_id"])
    [audit] = audits(app, "payment.amount_mismatch")
    assert audit.resource_id == created["payment_id"] and audit.details["provider"] == "stripe"
    assert audit.details["field"] in ("amount", "currency")


def test_a_bad_signature_is_401_credits_nothing_and_is_audited(app, client, user, stripe_shop):
    created = top_up(client, user)
    stripe_shop.fake.pay(session_id_of(app, created))
    genuine = stripe_shop.event()
    raw = genuine.body
    tampered = raw.replace(b'"amount_total": 1100', b'"amount_total": 1101')
    assert tampered != raw
    forged_body, forged_header = signed(raw, secret="whsec_not_the_endpoint_secret")
    stale_body, stale_header = signed(raw, timestamp=int(time.time()) - 301)
    for body, header in [(raw, None), (raw, "garbage"), (tampered, genuine.headers["stripe-signature"]),
                         (forged_body, forged_header), (stale_body, stale_header)]:
        response = deliver(client, body, header)
        assert response.status_code == 401, response.get_json()
        assert response.get_json()["code"] == 401
    assert_untouched(app, client, user, created["payment_id"])
    assert rejections(app) == ["signature_mismatch"] * 5
    # The genuine delivery still works afterwards.
    assert deliver(client, genuine).get_json() == PROCESSED


def test_signed_events_we_do_not_handle_or_do_not_own_are_acknowledged(app, client, user, stripe_shop):
    created = top_up(client, user)
    session = stripe.StripeClient(API_KEY, base_addresses={"api": stripe_shop.fake.api_base}) \
        .v1.checkout.sessions.retrieve(session_id_of(app, created)).to_dict()
    foreign = {**session, "client_reference_id": None, "metadata": {}}
    for payload in [checkout_event(session, "payment_intent.succeeded"), checkout_event(session, "charge.refunded"),
                    checkout_event(foreign)]:
        response = deliver(client, *signed(payload))
        assert response.status_code == 200 and response.get_json() == IGNORED
    assert_untouched(app, client, user, created["payment_id"])


def test_malformed_signed_events_are_400(app, client, user, stripe_shop):
    created = top_up(client, user)
    session = stripe.StripeClient(API_KEY, base_addresses={"api": stripe_shop.fake.api_base}) \
        .v1.checkout.sessions.retrieve(session_id_of(app, created)).to_dict()
    bodies = [
        b"{not json",
        json.dumps({"id": "evt_1", "type": "checkout.session.completed"}).encode(),
        json.dumps(checkout_event({"object": "payment_intent", "id": "pi_1"})).encode(),
        json.dumps(checkout_event({**session, "amount_total": None})).encode(),
        json.dumps(checkout_event({**session, "metadata": {"payment_id": str(uuid.uuid4())}})).encode(),
    ]
    for raw in bodies:
        response = deliver(client, *signed(raw))
        assert response.status_code in (400, 422), (raw, response.get_json())
    assert_untouched(app, client, user, created["payment_id"])
    assert len(audits(app, "payment.webhook_rejected")) == len(bodies)


def test_a_signed_event_for_an_unknown_payment_is_404_and_audited(app, client, user, stripe_shop):
    created = top_up(client, user)
    session = stripe.StripeClient(API_KEY, base_addresses={"api": stripe_shop.fake.api_base}) \
        .v1.checkout.sessions.retrieve(session_id_of(app, created)).to_dict()
    other = str(uuid.uuid4())
    stranger = {**session, "id": "cs_test_unknown", "client_reference_id": other, "metadata": {"payment_id": other},
                "status": "complete", "payment_status": "paid"}
    response = deliver(client, *signed(checkout_event(stranger)))
    assert response.status_code == 404
    assert rejections(app) == ["unknown_payment"]
    assert_untouched(app, client, user, created["payment_id"])


def test_an_oversized_callback_is_413_and_audited(app, client, user, stripe_shop):
    response = deliver(client, *signed(b'{"padding": "' + b"x" * 70_000 + b'"}'))
    assert response.status_code == 413 and response.is_json
    assert rejections(app) == ["body_too_large"]


# --- one provider at a time ----------------------------------------------------------------------------------------


def test_the_stripe_path_is_closed_when_stripe_is_not_the_provider(app, client, user):
    payment = create_payment(client, user).get_json()  # the default (mock) provider
    session = {"id": "cs_test_x", "object": "checkout.session", "client_reference_id": payment["payment_id"],
               "metadata": {"payment_id": payment["payment_id"]}, "amount_total": 100000, "currency": "rub",
               "status": "complete", "payment_status": "paid"}
    response = deliver(client, *signed(checkout_event(session)))
    assert response.status_code == 404
    assert rejections(app) == ["provider_not_configured"]
    assert_untouched(app, client, user, payment["payment_id"])


def test_the_signed_zenzefi_webhook_cannot_settle_a_stripe_payment(app, client, user, stripe_shop):
    created = top_up(client, user)
    raw = json.dumps(event(created["payment_id"])).encode()
    response = client.post(WEBHOOK, data=raw, content_type="application/json",
                           headers={"X-Zenzefi-Signature": sign(raw, int(time.time()),
                                                                app.config["PAYMENT_WEBHOOK_SECRET"])})
    assert response.status_code == 404
    assert rejections(app) == ["provider_not_configured"]
    assert_untouched(app, client, user, created["payment_id"])


def test_the_mock_checkout_cannot_pay_a_stripe_payment(app, client, user, stripe_shop, monkeypatch):
    created = top_up(client, user)
    monkeypatch.setitem(app.config, "MOCK_PAYMENTS_ENABLED", True)
    assert client.get(f"/api/v1/payments/mock/{created['payment_id']}").status_code == 404
    assert client.post(f"/api/v1/payments/mock/{created['payment_id']}/succeed").status_code == 404
    assert_untouched(app, client, user, created["payment_id"])


# --- reconciliation --------------------------------------------------------------------------------------------------


def test_a_lost_webhook_is_made_good_by_reconciliation_once(app, client, user, stripe_shop):
    created = top_up(client, user)
    stripe_shop.fake.pay(session_id_of(app, created), send=False)  # the webhook never arrives
    with clock.travel(timedelta(minutes=9)):
        assert reconcile(app) == {"checked": 0, "settled": 0, "rejected": 0, "unavailable": 0}
    assert status_of(client, user, created["payment_id"]) == "pending"
    with clock.travel(timedelta(minutes=10, seconds=1)):
        assert reconcile(app) == {"checked": 1, "settled": 1, "rejected": 0, "unavailable": 0}
        assert reconcile(app) == {"checked": 0, "settled": 0, "rejected": 0, "unavailable": 0}
    assert balance(client, user) == "100.00" and len(deposits(app)) == 1
    [audit] = audits(app, "payment.succeeded")
    assert audit.details["source"] == "reconciliation" and audit.details["event_id"] is None
    assert count(app, PaymentWebhookEvent) == 0
    assert_ledger_consistent(app)


def test_reconciliation_leaves_open_sessions_pending_and_closes_expired_ones(app, client, user, stripe_shop):
    still_open = top_up(client, user)
    abandoned = top_up(client, user)
    stripe.StripeClient(API_KEY, base_addresses={"api": stripe_shop.fake.api_base}) \
        .v1.checkout.sessions.expire(session_id_of(app, abandoned))
    with clock.travel(timedelta(minutes=11)):
        assert reconcile(app) == {"checked": 2, "settled": 1, "rejected": 0, "unavailable": 0}
    assert status_of(client, user, still_open["payment_id"]) == "pending"
    assert status_of(client, user, abandoned["payment_id"]) == "canceled"
    # The expired event arriving afterwards changes nothing.
    assert deliver(client, stripe_shop.event()).get_json() == IGNORED


def test_stripe_down_during_reconciliation_is_retried_at_the_next_run(app, client, user, stripe_shop):
    created = top_up(client, user)
    stripe_shop.fake.pay(session_id_of(app, created), send=False)
    stripe_shop.fake.down()
    with clock.travel(timedelta(minutes=11)):
        assert reconcile(app) == {"checked": 1, "settled": 0, "rejected": 0, "unavailable": 1}
        assert status_of(client, user, created["payment_id"]) == "pending"
        stripe_shop.fake.down(False)
        assert reconcile(app)["settled"] == 1
    assert balance(client, user) == "100.00" and len(deposits(app)) == 1


def test_a_session_stripe_does_not_know_does_not_hold_up_the_others(app, client, user, stripe_shop):
    lost = top_up(client, user)
    paid = top_up(client, user, amount_znc="50")
    stripe_shop.fake.pay(session_id_of(app, paid), send=False)
    with app.app_context():
        row = db.session.get(Payment, uuid.UUID(lost["payment_id"]))
        row.provider_payment_id = "cs_test_unknown_to_stripe"
        row.created_at -= timedelta(seconds=1)  # asked about first
        db.session.commit()
    with clock.travel(timedelta(minutes=11)):
        assert reconcile(app) == {"checked": 2, "settled": 1, "rejected": 0, "unavailable": 0}
    assert status_of(client, user, lost["payment_id"]) == "pending"
    assert balance(client, user) == "50.00"


def test_reconciliation_asks_only_about_the_configured_providers_payments(app, client, user, fake_stripe,
                                                                          stripe_shop, monkeypatch):
    monkeypatch.setitem(app.config, "PAYMENT_PROVIDER", "mock")
    monkeypatch.setitem(app.config, "MOCK_PAYMENTS_ENABLED", True)
    mock_payment = create_payment(client, user).get_json()
    with clock.travel(timedelta(minutes=11)):
        assert reconcile(app) == {"checked": 0, "settled": 0, "rejected": 0, "unavailable": 0}  # mock: no status call
    monkeypatch.setitem(app.config, "PAYMENT_PROVIDER", "stripe")
    with clock.travel(timedelta(minutes=11)):
        assert reconcile(app)["checked"] == 0  # the mock payment is not Stripe's to judge
    assert status_of(client, user, mock_payment["payment_id"]) == "pending"
    assert fake_stripe.requests() == []


@pytest.mark.postgres
@postgres_only
def test_a_webhook_racing_reconciliation_credits_once(app, client, accounts, stripe_shop):
    rounds = 4
    for number in range(1, rounds + 1):
        user = accounts.signed_in()
        created = top_up(client, user)
        stripe_shop.fake.pay(session_id_of(app, created))
        completed = stripe_shop.event(number)

        def webhook(c, completed=completed):
            return ("webhook", deliver(c, completed).get_json()["processed"])

        def reconciliation(_c):
            with app.app_context():
                return ("reconciliation", services.reconcile_pending_payments()["settled"] == 1)

        with clock.travel(timedelta(minutes=11)):  # old enough to reconcile; moved once, for every thread
            results = race(app, [webhook, webhook, reconciliation, reconciliation])
        assert Counter(processed for _, processed in results) == Counter({True: 1, False: 3}), results
        assert balance(client, user) == "100.00" and len(deposits(app, user["id"])) == 1
    assert_ledger_consistent(app)
