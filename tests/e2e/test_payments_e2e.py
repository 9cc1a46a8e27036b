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
from datetime import timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa
import stripe
from rq import Queue
from rq.job import Job, JobStatus

from tests.e2e.harness import Gunicorn, Worker, real_services, wait_for
from tests.fixtures.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe
from tests.notifications.conftest import Receiver, verify_signature
from tests.payments.helpers import audits, event, sign
from tests.support import SmtpSink
from zenzefi_backend.extensions import db
from zenzefi_backend.jobs.schedule import by_name
from zenzefi_backend.ledger.models import Transaction
from zenzefi_backend.payments.models import Payment

pytestmark = [pytest.mark.e2e, real_services]

PURCHASE = "/api/v1/currency/purchase"
STRIPE_WEBHOOK = "/api/v1/webhooks/payment/stripe"
GATEWAY_WEBHOOK = "/api/v1/webhooks/payment"
ENDPOINTS = "/api/v1/webhooks/endpoints"
GATEWAY_SECRET = "gw-secret-0123456789abcdefghijklmnopqrstuvwxyz"  # noqa: S105 - a test secret
PROCESSED = {"received": True, "processed": True}
IGNORED = {"received": True, "processed": False}


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def redis_client(services) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services.redis_url)
    yield client
    client.close()


class Shop:
    """Gunicorn and the worker taking payments through one provider; what a test does with them."""

    def __init__(self, server: Gunicorn, worker: Worker, app, redis_client: redis.Redis):
        self.server, self.worker, self.app, self.redis = server, worker, app, redis_client

    def logs(self) -> str:
        return f"{self.server.logs()}\n{self.worker.logs()}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def top_up(self, user: dict, amount_znc: str = "100", currency: str = "USD") -> dict:
        created = self.server.call("POST", PURCHASE, {"amount_znc": amount_znc, "currency": currency},
                                   user["headers"])
        assert created.status == 201, self.server.describe(repr(created))
        return created.json()

    def subscribe(self, user: dict, receiver: Receiver) -> str:
        endpoint = self.server.call("POST", ENDPOINTS, {"url": receiver.url(), "events": ["balance.topped_up"]},
                                    user["headers"])
        assert endpoint.status == 201, endpoint
        return endpoint.json()["secret"]

    def balance(self, user: dict) -> str:
        answer = self.server.call("GET", "/api/v1/currency/balance", headers=user["headers"])
        assert answer.status == 200, answer
        return answer.json()["balance"]

    def status(self, user: dict, payment_id: str) -> str:
        answer = self.server.call("GET", f"/api/v1/currency/payments/{payment_id}", headers=user["headers"])
        assert answer.status == 200, answer
        return answer.json()["status"]

    def deposits(self, user: dict) -> int:
        with self.app.app_context():
            return db.session.scalar(sa.select(sa.func.count()).select_from(Transaction).where(
                Transaction.user_id == uuid.UUID(user["id"]), Transaction.transaction_type == "deposit"))

    def payments(self) -> int:
        with self.app.app_context():
            return db.session.scalar(sa.select(sa.func.count()).select_from(Payment))

    def provider_id(self, created: dict) -> str:
        with self.app.app_context():
            return db.session.get(Payment, uuid.UUID(created["payment_id"])).provider_payment_id

    def age(self, payment_id: str, minutes: int = 11) -> None:
        """Make a payment look created `minutes` ago (the processes under test keep the real clock)."""
        with self.app.app_context():
            payment = db.session.get(Payment, uuid.UUID(payment_id))
            payment.created_at -= timedelta(minutes=minutes)
            db.session.commit()

    def reconcile(self) -> dict[str, int]:
        """Enqueue the periodic reconciliation job for the worker and wait for its result."""
        periodic = by_name("reconcile_payments")
        job = Queue(periodic.queue, connection=self.redis).enqueue(periodic.func, result_ttl=600)
        wait_for(lambda: Job.fetch(job.id, connection=self.redis).get_status() in (JobStatus.FINISHED,
                                                                                   JobStatus.FAILED), 30,
                 lambda: f"the reconciliation job did not finish\n{self.logs()}", step=0.1)
        fetched = Job.fetch(job.id, connection=self.redis)
        assert fetched.get_status() == JobStatus.FINISHED, self.logs()
        return fetched.return_value()

    def post(self, path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        answer = self.server.request("POST", path, headers={"Content-Type": "application/json", **headers},
                                     body=raw, timeout=10)
        return answer.status, answer.json()


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
        yield Shop(server, worker, app, redis_client)


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
        yield Shop(server, worker, app, redis_client)


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
