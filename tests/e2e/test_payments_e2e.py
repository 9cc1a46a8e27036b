"""Stripe and the operator's gateway end to end: gunicorn (2 workers), a real `python -m worker`, localstripe with
Checkout Sessions (tests/fixtures/fake_stripe.py), a real SMTP sink and a real webhook receiver, all on 127.0.0.1.

Stripe: a top-up creates a Checkout Session through the official library; the customer pays on the fake's page;
localstripe signs `checkout.session.completed` with the endpoint's secret and POSTs it to gunicorn, where the
library verifies it: credited once, one receipt, one `balance.topped_up` webhook. A replay, a forged signature,
a mismatched amount change nothing; a lost webhook is made good by the reconciliation job the worker runs, also
after Stripe was down; Stripe down at creation is a 503 with nothing stored; a body over 64 KiB is a 413.
The gateway: its `X-Zenzefi-Signature` webhook, the same guarantees."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from tests.e2e.harness import Gunicorn, Worker, real_services, wait_for
from tests.fixtures.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe
from tests.fixtures.shop import Shop
from tests.fixtures.webhooks import Receiver, verify_signature
from tests.payments.helpers import audits, event, sign
from tests.support import SmtpSink

pytestmark = [pytest.mark.e2e, real_services]

PURCHASE = "/api/v1/currency/purchase"
STRIPE_WEBHOOK = "/api/v1/webhooks/payment/stripe"
GATEWAY_WEBHOOK = "/api/v1/webhooks/payment"
ENDPOINTS = "/api/v1/webhooks/endpoints"
GATEWAY_SECRET = "gw-secret-0123456789abcdefghijklmnopqrstuvwxyz"  # noqa: S105 - a test secret
PROCESSED = {"received": True, "processed": True}
IGNORED = {"received": True, "processed": False}


def shop_env(smtp_sink: SmtpSink, **extra: str) -> dict[str, str]:
    return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_sink.port), "MOCK_PAYMENTS_ENABLED": "false", **extra}


# --- Stripe ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def stripe_shop(services, app, fake_stripe: FakeStripe, smtp_sink, redis_client) -> Iterator[Shop]:
    env = shop_env(smtp_sink, PAYMENT_PROVIDER="stripe", STRIPE_API_KEY=API_KEY,
                   STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, STRIPE_API_BASE=fake_stripe.api_base)
    with Gunicorn(services.database_url, services.redis_url, extra_env=env) as server, \
            Worker(services.database_url, services.redis_url, ["--no-scheduler"], extra_env=env) as worker:
        # Stripe's dashboard: our endpoint, the Checkout events; a copy goes to `copies` so a test can replay.
        fake_stripe.register_webhook(f"http://127.0.0.1:{server.port}{STRIPE_WEBHOOK}")
        yield Shop(server, worker, app, redis_client, currency="USD")


@pytest.fixture
def copies(fake_stripe: FakeStripe) -> Iterator[Receiver]:
    """Every event localstripe sends, also delivered here (a second endpoint with the same secret)."""
    found = Receiver().start()
    fake_stripe.register_webhook(found.url("/copy"), name="copies")
    yield found
    found.stop()


def test_paid_at_stripe_is_credited_once_with_one_receipt_and_one_webhook(stripe_shop, fake_stripe, copies,
                                                                          receiver, smtp_sink, app):
    shop = stripe_shop
    user = shop.server.sign_up()
    secret = shop.subscribe(user, receiver)
    created = shop.top_up(user)
    assert created["payment_url"].startswith(f"{fake_stripe.api_base}/checkout/pay/cs_test_")

    import requests

    paid = requests.post(created["payment_url"], allow_redirects=False, timeout=10)  # the customer pays
    assert paid.status_code == 303, paid.text
    wait_for(lambda: shop.balance(user) == "100.00", 20, lambda: f"not credited\n{shop.logs()}", step=0.2)
    wait_for(lambda: receiver.requests and smtp_sink.messages, 30,
             lambda: f"{len(receiver.requests)} webhooks, {len(smtp_sink.messages)} e-mails\n{shop.logs()}", step=0.2)
    assert shop.status(user, created["payment_id"]) == "succeeded"

    # Stripe delivers again (its copy of the very bytes it sent): nothing changes.
    [original] = copies.wait_for(1)
    assert shop.post(STRIPE_WEBHOOK, original.body, {"Stripe-Signature": original.headers["stripe-signature"]}) \
        == (200, IGNORED)

    # A second paid top-up is the barrier: once its e-mail and webhook are in, anything the replay had caused
    # would be in too (the outbox relays in order).
    second = shop.top_up(user, "50", "EUR")
    fake_stripe.pay(shop.provider_id(second))
    wait_for(lambda: len(receiver.requests) >= 2 and len(smtp_sink.messages) >= 2, 30,
             lambda: f"{len(receiver.requests)} webhooks, {len(smtp_sink.messages)} e-mails\n{shop.logs()}", step=0.2)
    assert shop.balance(user) == "150.00" and shop.deposits(user) == 2
    bodies = [verify_signature(secret, received) for received in receiver.requests]
    assert [(b["type"], b["data"]["payment_id"], b["data"]["amount"], b["data"]["currency"]) for b in bodies] == [
        ("balance.topped_up", created["payment_id"], "11.00", "USD"),
        ("balance.topped_up", second["payment_id"], "5.00", "EUR")]
    assert [m["Subject"] for m in smtp_sink.messages] == ["Receipt: 100.00 ZNC added to your balance",
                                                          "Receipt: 50.00 ZNC added to your balance"]
    assert all(m["To"] == user["email"] for m in smtp_sink.messages)
    assert audits(app, "payment.webhook_rejected") == []


def test_forged_or_mismatched_stripe_callbacks_are_4xx_audited_and_credit_nothing(stripe_shop, fake_stripe,
                                                                                  copies, app):
    shop = stripe_shop
    user = shop.server.sign_up()
    created = shop.top_up(user)
    session = fake_stripe.pay(shop.provider_id(created), send=False)  # paid at Stripe; no event yet
    claim = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": "checkout.session.completed",
                        "data": {"object": session}}).encode()

    forged = stripe.WebhookSignature.generate_signature_header(claim.decode(), "whsec_guessed")
    assert shop.post(STRIPE_WEBHOOK, claim, {"Stripe-Signature": forged})[0] == 401
    assert shop.post(STRIPE_WEBHOOK, claim, {})[0] == 401
    stale = stripe.WebhookSignature.generate_signature_header(claim.decode(), WEBHOOK_SECRET,
                                                              timestamp=int(time.time()) - 600)
    assert shop.post(STRIPE_WEBHOOK, claim, {"Stripe-Signature": stale})[0] == 401
    assert shop.post(STRIPE_WEBHOOK, b'{"padding": "' + b"x" * 70_000 + b'"}', {"Stripe-Signature": forged})[0] \
        == 413
    assert [a.details["reason"] for a in audits(app, "payment.webhook_rejected")] == [
        "signature_mismatch", "signature_mismatch", "signature_mismatch", "body_too_large"]

    # Stripe itself reporting another amount than the payment's (signed by localstripe): 422, audited.
    other = shop.top_up(user)
    fake_stripe.pay(shop.provider_id(other), amount_total=1)
    [mismatch] = copies.wait_for(1)
    wait_for(lambda: audits(app, "payment.amount_mismatch"), 20, lambda: f"no mismatch audited\n{shop.logs()}")
    assert shop.post(STRIPE_WEBHOOK, mismatch.body, {"Stripe-Signature": mismatch.headers["stripe-signature"]})[0] \
        == 422

    assert (shop.balance(user), shop.deposits(user)) == ("0.00", 0)
    assert shop.status(user, created["payment_id"]) == shop.status(user, other["payment_id"]) == "pending"


def test_stripe_down_at_creation_is_503_and_nothing_is_stored(stripe_shop, fake_stripe):
    shop = stripe_shop
    user = shop.server.sign_up()
    fake_stripe.down()
    refused = shop.server.call("POST", PURCHASE, {"amount_znc": "100", "currency": "USD"}, user["headers"])
    assert refused.status == 503, refused
    assert shop.payments() == 0
    fake_stripe.down(False)
    assert shop.top_up(user)["status"] == "pending"


def test_a_lost_stripe_webhook_is_credited_by_reconciliation_even_after_stripe_was_down(stripe_shop, fake_stripe,
                                                                                        receiver, smtp_sink):
    shop = stripe_shop
    user = shop.server.sign_up()
    shop.subscribe(user, receiver)
    created = shop.top_up(user)
    fake_stripe.pay(shop.provider_id(created), send=False)  # paid, but the webhook never arrives
    assert shop.reconcile() == {"checked": 0, "settled": 0, "rejected": 0, "unavailable": 0}  # too young
    shop.age(created["payment_id"])

    fake_stripe.down()
    assert shop.reconcile() == {"checked": 1, "settled": 0, "rejected": 0, "unavailable": 1}
    assert shop.status(user, created["payment_id"]) == "pending"

    fake_stripe.down(False)
    assert shop.reconcile() == {"checked": 1, "settled": 1, "rejected": 0, "unavailable": 0}
    assert shop.reconcile() == {"checked": 0, "settled": 0, "rejected": 0, "unavailable": 0}
    assert (shop.balance(user), shop.deposits(user)) == ("100.00", 1)
    wait_for(lambda: receiver.requests and smtp_sink.messages, 30,
             lambda: f"{len(receiver.requests)} webhooks, {len(smtp_sink.messages)} e-mails\n{shop.logs()}", step=0.2)
    assert len(receiver.requests) == 1 and len(smtp_sink.messages) == 1


# --- the operator's gateway -----------------------------------------------------------------------------------------


@pytest.fixture
def gateway_shop(services, app, smtp_sink, redis_client) -> Iterator[Shop]:
    env = shop_env(smtp_sink, PAYMENT_PROVIDER="gateway", PAYMENT_WEBHOOK_SECRET=GATEWAY_SECRET,
                   PAYMENT_GATEWAY_URL="https://pay.example.com/{payment_id}?amount={amount}&currency={currency}")
    with Gunicorn(services.database_url, services.redis_url, extra_env=env) as server, \
            Worker(services.database_url, services.redis_url, ["--no-scheduler"], extra_env=env) as worker:
        yield Shop(server, worker, app, redis_client, currency="USD")


def test_the_gateways_signed_webhook_credits_once_and_refuses_forgeries(gateway_shop, receiver, smtp_sink, app):
    shop = gateway_shop
    user = shop.server.sign_up()
    secret = shop.subscribe(user, receiver)
    created = shop.top_up(user, currency="RUB")
    assert created["payment_url"] == f"https://pay.example.com/{created['payment_id']}?amount=1000.00&currency=RUB"

    def gateway_sends(body: dict, key: str = GATEWAY_SECRET) -> tuple[int, Any]:
        raw = json.dumps(body).encode()
        return shop.post(GATEWAY_WEBHOOK, raw, {"X-Zenzefi-Signature": sign(raw, int(time.time()), key)})

    assert gateway_sends(event(created["payment_id"], amount_znc="10.00"))[0] == 422
    assert gateway_sends(event(created["payment_id"]), key="not-the-secret")[0] == 401
    paid = event(created["payment_id"])
    assert gateway_sends(paid) == (200, PROCESSED)
    assert gateway_sends(paid) == (200, IGNORED)
    assert shop.reconcile() == {"checked": 0, "settled": 0, "rejected": 0, "unavailable": 0}  # no status call

    wait_for(lambda: receiver.requests and smtp_sink.messages, 30,
             lambda: f"{len(receiver.requests)} webhooks, {len(smtp_sink.messages)} e-mails\n{shop.logs()}", step=0.2)
    assert (shop.balance(user), shop.deposits(user)) == ("100.00", 1)
    [body] = [verify_signature(secret, received) for received in receiver.requests]
    assert body["data"]["payment_id"] == created["payment_id"]
    assert [m["Subject"] for m in smtp_sink.messages] == ["Receipt: 100.00 ZNC added to your balance"]
    assert len(audits(app, "payment.amount_mismatch")) == 1
    assert [a.details["reason"] for a in audits(app, "payment.webhook_rejected")] == ["signature_mismatch"]
