"""A message that went out is written down as sent even when the database goes away the moment the receiver has
answered (a restart, a failover): the worker waits for the database, a few seconds, instead of leaving the attempt
leased until its lease runs out and sending the message again. (The chaos test met exactly that: a receipt e-mail
sent twice across its PostgreSQL restart.) On a PostgreSQL cluster of the test's own, stopped for a few seconds
right after the SMTP server or the webhook receiver answered."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.e2e.harness import LOOPBACK
from tests.fixtures.actions import Accounts
from tests.fixtures.mailbox import RECEIPT
from tests.support import SmtpSink, app_config
from zenzefi_backend.clock import now
from zenzefi_backend.extensions import db, get_redis
from zenzefi_backend.notifications import email, webhooks
from zenzefi_backend.notifications.models import EmailMessage, WebhookDelivery
from zenzefi_backend.notifications.relay import relay_new_events

DOWN_SECONDS = 3.0


@pytest.fixture
def own_app(own_postgres, backends, tmp_path) -> Iterator[tuple]:
    """The app on the test's own cluster, sending e-mail to a real SMTP server: (app, sink)."""
    from zenzefi_backend import create_app

    with SmtpSink() as sink:
        app = create_app(app_config(backends, tmp_path, DATABASE_URL=own_postgres.url, SMTP_HOST=LOOPBACK,
                                    SMTP_PORT=sink.port, WEBHOOK_ALLOW_PRIVATE_TARGETS=True))
        with app.app_context():
            try:
                yield app, sink
            finally:
                db.session.remove()
                db.engine.dispose()
                get_redis().flushdb()


def down_right_after(monkeypatch, module, name: str, cluster) -> list[float]:
    """Stop the cluster as soon as `module.name` (the send) returns, and start it again DOWN_SECONDS later."""
    real = getattr(module, name)
    outages: list[float] = []

    def then_down(*args, **kwargs):
        answer = real(*args, **kwargs)
        cluster.stop()
        outages.append(DOWN_SECONDS)
        threading.Timer(DOWN_SECONDS, cluster.start).start()
        return answer

    monkeypatch.setattr(module, name, then_down)
    return outages


def test_a_sent_email_is_written_down_once_the_database_is_back(own_app, own_postgres, monkeypatch):
    _app, sink = own_app
    email_id = email.queue_email("payment_receipt", "ada@example.com", RECEIPT).id
    db.session.commit()
    outages = down_right_after(monkeypatch, email, "_deliver", own_postgres)

    assert email.send_email(email_id) == "sent"
    assert outages == [DOWN_SECONDS]  # the database really was away when the answer was written down
    message = db.session.get(EmailMessage, email_id)
    assert (message.status, message.attempts, message.body_sealed) == ("sent", 1, None)
    assert email.due_emails(now() + email.LEASE + timedelta(seconds=1)) == []  # nothing left to send again
    assert len(sink.messages) == 1


def test_a_delivered_webhook_is_written_down_once_the_database_is_back(own_app, own_postgres, monkeypatch,
                                                                      receiver):
    app, _sink = own_app
    accounts = Accounts(app, app.test_client())
    user = accounts.funded("5")
    created = accounts.client.post("/api/v1/webhooks/endpoints", headers=user["headers"],
                                   json={"url": receiver.url(), "events": ["token.purchased"]})
    assert created.status_code == 201, created.get_json()
    accounts.buy_token(user)
    relay_new_events()
    [delivery_id] = db.session.scalars(sa.select(WebhookDelivery.id))
    db.session.rollback()
    outages = down_right_after(monkeypatch, webhooks, "_send", own_postgres)

    assert webhooks.deliver(delivery_id) == "succeeded"
    assert outages == [DOWN_SECONDS]
    delivery = db.session.get(WebhookDelivery, delivery_id)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("succeeded", 1, 204)
    assert len(receiver.requests) == 1
