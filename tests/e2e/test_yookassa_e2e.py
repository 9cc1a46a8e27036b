"""YooKassa end to end: gunicorn (2 workers) behind one trusted proxy hop, a real `python -m worker`, the local fake
of the YooKassa API, a real SMTP sink and a real webhook receiver, all on 127.0.0.1.

A top-up is created at the fake through the official library, paid there, and the fake POSTs YooKassa's
notification to gunicorn with YooKassa's address in X-Forwarded-For: the balance is credited once, the receipt
e-mail and the `balance.topped_up` webhook arrive once; replayed, forged or mismatched notifications change
nothing; a lost notification is made good by the reconciliation job the worker runs; YooKassa down at creation is
a 503 with nothing stored, and down during reconciliation loses nothing."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from tests.e2e.harness import Gunicorn, Worker, real_services, wait_for
from tests.fixtures.fake_yookassa import FakeYooKassa
from tests.fixtures.shop import Shop
from tests.fixtures.webhooks import verify_signature
from tests.payments.helpers import audits
from zenzefi_backend.extensions import db
from zenzefi_backend.payments.models import Payment

pytestmark = [pytest.mark.e2e, real_services]

PURCHASE = "/api/v1/currency/purchase"
WEBHOOK = "/api/v1/webhooks/payment/yookassa"
ENDPOINTS = "/api/v1/webhooks/endpoints"
OUTSIDE = "203.0.113.9"


class YooKassaShop(Shop):
    """The shop taking payments through the fake YooKassa."""

    def __init__(self, server: Gunicorn, worker: Worker, fake: FakeYooKassa, app, redis_client: redis.Redis):
        super().__init__(server, worker, app, redis_client)
        self.fake = fake

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}{WEBHOOK}"

    def their_id(self, created: dict) -> str:
        return self.fake.payment_for(created["payment_id"])["id"]


@pytest.fixture
def shop(services, app, fake_yookassa, smtp_sink, redis_client) -> Iterator[YooKassaShop]:
    env = {"PAYMENT_PROVIDER": "yookassa", **fake_yookassa.config(), "TRUSTED_PROXY_HOPS": "1",
           "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_sink.port)}
    with Gunicorn(services.database_url, services.redis_url, extra_env=env) as server, \
            Worker(services.database_url, services.redis_url, ["--no-scheduler"], extra_env=env) as worker:
        yield YooKassaShop(server, worker, fake_yookassa, app, redis_client)


def test_paid_at_yookassa_is_credited_once_with_one_receipt_and_one_webhook(shop, receiver, smtp_sink, app):
    user = shop.server.sign_up()
    endpoint = shop.server.call("POST", ENDPOINTS, {"url": receiver.url(), "events": ["balance.topped_up"]},
                                user["headers"])
    assert endpoint.status == 201, endpoint
    secret = endpoint.json()["secret"]
    created = shop.top_up(user)
    their_id = shop.their_id(created)
    assert created["payment_url"] == shop.fake.payment(their_id)["confirmation"]["confirmation_url"]
    shop.fake.succeed(their_id)

    assert shop.fake.notify(shop.webhook_url, their_id) == (200, {"received": True, "processed": True})
    assert shop.balance(user) == "100.00"
    wait_for(lambda: receiver.requests and smtp_sink.messages, 30,
             lambda: f"{len(receiver.requests)} webhooks, {len(smtp_sink.messages)} e-mails\n{shop.logs()}", step=0.2)

    # YooKassa repeats itself; forged and mismatched ones from anywhere are refused.
    assert shop.fake.notify(shop.webhook_url, their_id) == (200, {"received": True, "processed": False})
    status, _ = shop.fake.notify(shop.webhook_url, their_id, forwarded_for=OUTSIDE)
    assert status == 403

    # A second top-up, paid, is the barrier: once its e-mail and webhook are in, anything the replay had
    # caused would be in too (the outbox relays in order).
    second = shop.top_up(user, "50")
    shop.fake.succeed(shop.their_id(second))
    assert shop.fake.notify(shop.webhook_url, shop.their_id(second))[0] == 200
    wait_for(lambda: len(receiver.requests) >= 2 and len(smtp_sink.messages) >= 2, 30,
             lambda: f"{len(receiver.requests)} webhooks, {len(smtp_sink.messages)} e-mails\n{shop.logs()}", step=0.2)

    assert shop.balance(user) == "150.00"
    assert shop.deposits(user) == 2
    bodies = [verify_signature(secret, received) for received in receiver.requests]
    assert [(b["type"], b["data"]["payment_id"], b["data"]["amount_znc"]) for b in bodies] == [
        ("balance.topped_up", created["payment_id"], "100.00"), ("balance.topped_up", second["payment_id"], "50.00")]
    assert [m["Subject"] for m in smtp_sink.messages] == ["Receipt: 100.00 ZNC added to your balance",
                                                          "Receipt: 50.00 ZNC added to your balance"]
    assert all(m["To"] == user["email"] for m in smtp_sink.messages)
    (rejected,) = audits(app, "payment.webhook_rejected")
    assert (rejected.details["reason"], rejected.details["provider"]) == ("network_not_allowed", "yookassa")


def test_forged_notifications_are_4xx_audited_and_credit_nothing(shop, app):
    for forgery in ("unpaid", "amount", "currency", "outside"):
        user = shop.server.sign_up()
        created = shop.top_up(user)
        their_id = shop.their_id(created)
        forwarded_for, action = "185.71.76.10", "payment.webhook_rejected"
        if forgery == "unpaid":
            body = shop.fake.notification(their_id, "payment.succeeded")
            body["object"].update(status="succeeded", paid=True)  # the API still says pending
        else:
            if forgery != "outside":
                shop.fake.payments[their_id]["amount"].update(
                    {"value": "1.00"} if forgery == "amount" else {"currency": "USD"})
                action = "payment.amount_mismatch"
            shop.fake.succeed(their_id)
            body = shop.fake.notification(their_id)
            if forgery == "outside":
                forwarded_for = OUTSIDE
        before = len(audits(app, action))

        status, _ = shop.fake.notify(shop.webhook_url, body=body, forwarded_for=forwarded_for)

        assert status == (403 if forgery == "outside" else 422), forgery
        assert len(audits(app, action)) == before + 1, forgery
        assert (shop.balance(user), shop.deposits(user)) == ("0.00", 0), forgery
        assert shop.status(user, created["payment_id"]) == "pending", forgery


def test_yookassa_down_at_creation_is_503_and_nothing_is_stored(shop, app):
    user = shop.server.sign_up()
    shop.fake.stop()
    refused = shop.server.call("POST", PURCHASE, {"amount_znc": "100"}, user["headers"])
    assert refused.status == 503, refused
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Payment)) == 0
    shop.fake.start()
    assert shop.top_up(user)["status"] == "pending"


def test_a_lost_notification_is_credited_by_reconciliation_even_after_yookassa_was_down(shop):
    user = shop.server.sign_up()
    created = shop.top_up(user)
    shop.fake.succeed(shop.their_id(created))  # paid, but the notification never arrives

    assert shop.reconcile()["checked"] == 0  # younger than 10 minutes: left alone
    shop.age(created["payment_id"])
    shop.fake.stop()
    assert shop.reconcile()["unavailable"] == 1
    assert (shop.status(user, created["payment_id"]), shop.balance(user)) == ("pending", "0.00")

    shop.fake.start()
    assert shop.reconcile()["settled"] == 1
    assert shop.reconcile()["checked"] == 0
    assert (shop.status(user, created["payment_id"]), shop.balance(user)) == ("succeeded", "100.00")
    assert shop.deposits(user) == 1
    # The notification arriving after all changes nothing.
    assert shop.fake.notify(shop.webhook_url, shop.their_id(created))[1]["processed"] is False
    assert shop.balance(user) == "100.00"
