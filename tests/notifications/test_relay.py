"""The outbox relay: every business event reaches its user's webhooks and e-mails once, and a Redis outage
only delays it."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from rq import Queue

from tests.fixtures.actions import buy_token
from tests.fixtures.mailbox import send_queued_emails
from tests.support import POSTGRES_ONLY_REASON, dead_redis
from zenzefi_backend import clock
from zenzefi_backend.extensions import db, get_redis, redis_connection
from zenzefi_backend.jobs.notifications import delivery_log_retention, relay_new_events_job, relay_outbox_job
from zenzefi_backend.jobs.schedule import Periodic
from zenzefi_backend.notifications.models import EmailMessage, OutboxEvent, WebhookDelivery
from zenzefi_backend.notifications.outbox import NUDGE_EXPIRES_SECONDS, NUDGE_KEY, emit
from zenzefi_backend.notifications.relay import relay_events
from zenzefi_backend.notifications.webhooks import deliver

ENDPOINTS = "/api/v1/webhooks/endpoints"
MOCK_PURCHASE = "/api/v1/currency/mock-purchase"


@pytest.fixture
def user(accounts):
    return accounts.signed_in()


def subscribe(client, user, events: list[str], url: str = "http://127.0.0.1:9/hook") -> dict:
    response = client.post(ENDPOINTS, headers=user["headers"], json={"url": url, "events": events})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def rows(model, *where) -> list:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(model).where(*where)))


def emails(kind: str) -> list[EmailMessage]:
    return rows(EmailMessage, EmailMessage.kind == kind)


def test_an_event_becomes_one_delivery_per_subscribed_endpoint(app_ctx, client, accounts, user):
    accounts.fund(user["id"], "5")
    purchases = subscribe(client, user, ["token.purchased"])
    subscribe(client, user, ["token.revoked"])
    other = accounts.signed_in()
    subscribe(client, other, ["token.purchased"])
    token = buy_token(client, user)

    relay_outbox_job()
    relay_outbox_job()  # a second run finds nothing new

    [delivery] = rows(WebhookDelivery, WebhookDelivery.event_type == "token.purchased")
    [event] = rows(OutboxEvent, OutboxEvent.event_type == "token.purchased")
    assert str(delivery.endpoint_id) == purchases["id"]
    assert delivery.message_id == f"msg_{event.id.hex}"
    assert delivery.payload["type"] == "token.purchased"
    assert delivery.payload["data"]["token_id"] == token["id"]
    assert event.dispatched_at is not None
    assert rows(OutboxEvent, OutboxEvent.dispatched_at.is_(None)) == []


def test_a_top_up_sends_a_receipt_even_to_a_user_who_opted_out(app_ctx, client, accounts, user, mailbox_files):
    accounts.set_flags(user["id"], email_notifications=False)
    response = client.post(MOCK_PURCHASE, headers=user["headers"], json={"amount": "25.50"})
    assert response.status_code in (200, 201), response.get_json()
    relay_outbox_job()
    send_queued_emails()
    [receipt] = emails("payment_receipt")
    assert receipt.status == "sent"
    [mail] = mailbox_files()
    assert mail["To"] == user["email"]
    assert "25.50 ZNC" in mail["Subject"]


def test_low_balance_is_emailed_at_most_once_a_day(app_ctx, client, accounts, user):
    def cross_below_ten() -> None:
        accounts.fund(user["id"], "5")  # the balance is 9 before and 14 after: five 1-ZNC tokens take it to 9
        for _ in range(5):
            buy_token(client, user)
        relay_outbox_job()

    accounts.fund(user["id"], "11")
    buy_token(client, user)  # 11 → 10: not below 10 yet
    relay_outbox_job()
    assert emails("balance_low") == []
    buy_token(client, user)  # 10 → 9
    relay_outbox_job()
    assert len(emails("balance_low")) == 1
    cross_below_ten()
    assert len(emails("balance_low")) == 1
    assert len(rows(OutboxEvent, OutboxEvent.event_type == "balance.low")) == 2
    with clock.travel(timedelta(hours=24, minutes=1)):
        cross_below_ten()
    assert len(emails("balance_low")) == 2


def test_low_balance_emails_respect_the_opt_out(app_ctx, client, accounts, user):
    accounts.set_flags(user["id"], email_notifications=False)
    accounts.fund(user["id"], "10")
    buy_token(client, user)
    relay_outbox_job()
    assert emails("balance_low") == []


def test_the_referrer_is_emailed_a_bonus(app_ctx, client, accounts):
    referrer = accounts.signed_in()
    referee = accounts.signed_in(referral_code=referrer["referral_code"])
    accounts.fund(referee["id"], "300")
    buy_token(client, referee, hours=720)
    relay_outbox_job()
    [bonus] = emails("referral_bonus")
    assert bonus.to_address == referrer["email"]
    assert str(bonus.user_id) == referrer["id"]


def test_an_event_that_cannot_be_relayed_does_not_hold_up_the_others(app_ctx, client, accounts, user):
    broken = emit("balance.low", uuid.UUID(user["id"]))  # no balance in the payload: the e-mail cannot render
    db.session.commit()
    accounts.fund(user["id"], "1")
    buy_token(client, user)
    assert relay_events().events == 1
    db.session.refresh(broken)
    assert (broken.dispatched_at, broken.attempts) == (None, 1)
    assert rows(OutboxEvent, OutboxEvent.dispatched_at.is_(None)) == [broken]


def test_nothing_is_lost_while_redis_is_down(app, app_ctx, client, accounts, user, monkeypatch):
    accounts.fund(user["id"], "5")
    subscribe(client, user, ["token.purchased"])
    response = client.post(MOCK_PURCHASE, headers=user["headers"], json={"amount": "3"})
    assert response.status_code in (200, 201)
    buy_token(client, user)
    alive = get_redis()
    monkeypatch.setitem(app.extensions, redis_connection.extension_key, dead_redis())

    relay_outbox_job()  # the rows are written; handing them to the workers fails quietly

    [receipt] = emails("payment_receipt")
    [delivery] = rows(WebhookDelivery)
    assert (receipt.status, receipt.attempts) == ("pending", 0)
    assert (delivery.status, delivery.attempts) == ("pending", 0)

    monkeypatch.setitem(app.extensions, redis_connection.extension_key, alive)
    relay_outbox_job()
    send_queued_emails()
    assert emails("payment_receipt")[0].status == "sent"
    deliver(delivery.id)  # what a "webhooks" worker does (inline in the embedded default, already done there)
    assert rows(WebhookDelivery)[0].attempts == 1


def test_retention_forgets_old_finished_rows_only(app_ctx, client, accounts, user):
    accounts.fund(user["id"], "5")
    buy_token(client, user)
    relay_outbox_job()
    send_queued_emails()
    waiting = emit("balance.low", uuid.UUID(user["id"]), balance="1.00")
    db.session.commit()
    with clock.travel(timedelta(days=31)):
        purged = delivery_log_retention()
    assert purged["outbox_events"] >= 1
    assert rows(OutboxEvent) == [waiting]


def test_commits_with_events_keep_one_relay_run_queued_and_none_is_skipped(app, app_ctx, client, accounts, user):
    if app.config["EMBEDDED"]:
        pytest.skip("no worker to nudge on the embedded default (its in-process relay is nudged instead: "
                    "test_the_embedded_default_relays_right_after_the_commit)")
    accounts.fund(user["id"], "6")
    default = Queue("default", connection=get_redis())

    def queued_runs() -> list[str]:
        return [job.func_name for job in default.get_jobs()]

    buy_token(client, user)
    buy_token(client, user)  # a run is queued already, and it has not read the outbox yet: it will see this one too
    assert queued_runs() == ["zenzefi_backend.jobs.notifications.relay_new_events_job"]
    [job] = default.get_jobs()
    default.remove(job)
    assert relay_new_events_job() == {"events": 2, "deliveries": 0, "emails": 0}  # what the worker runs
    buy_token(client, user)  # after that run read the outbox: a run of its own, at once
    assert queued_runs() == ["zenzefi_backend.jobs.notifications.relay_new_events_job"]

    [job] = default.get_jobs()
    default.remove(job)
    relay_new_events_job()
    buy_token(client, user)
    default.empty()  # the queued run is lost (a worker killed with it), its flag stays: later commits wait …
    buy_token(client, user)
    assert queued_runs() == []
    assert 0 < get_redis().ttl(NUDGE_KEY) <= NUDGE_EXPIRES_SECONDS
    get_redis().delete(NUDGE_KEY)  # … as if it had expired
    buy_token(client, user)
    assert queued_runs() == ["zenzefi_backend.jobs.notifications.relay_new_events_job"]


def test_the_relay_runs_inline_in_the_embedded_scheduler(app_ctx, client, accounts, user):
    from zenzefi_backend.jobs.inline import InlineScheduler

    accounts.fund(user["id"], "5")
    buy_token(client, user)
    scheduler = InlineScheduler(get_redis(), (Periodic("relay_outbox", relay_outbox_job, every_seconds=60),),
                                is_async=False)
    assert scheduler.tick() == ["relay_outbox"]
    assert rows(OutboxEvent, OutboxEvent.dispatched_at.is_(None)) == []


def test_relays_running_at_once_relay_each_event_once(app, backends, client, accounts):
    if not backends.is_postgres:
        pytest.skip(POSTGRES_ONLY_REASON)
    from tests.fixtures.race import race_in_app_contexts

    users = [accounts.signed_in() for _ in range(3)]
    for user in users:
        subscribe(client, user, ["token.purchased", "balance.topped_up"])
        for _ in range(4):
            assert client.post(MOCK_PURCHASE, headers=user["headers"], json={"amount": "2"}).status_code in (200, 201)
            buy_token(client, user)
    results = race_in_app_contexts(app, lambda: relay_events().events, threads=4)
    assert sum(results) == 3 * 4 * 2
    with app.app_context():
        assert len(rows(WebhookDelivery)) == 3 * 4 * 2
        assert len(emails("payment_receipt")) == 3 * 4


def test_a_commit_with_events_asks_the_embedded_relay_once(app, app_ctx, client, accounts, user):
    if not app.config["EMBEDDED"]:
        pytest.skip("a worker's job is nudged instead (test_commits_with_events_keep_one_relay_run_queued_…)")
    from zenzefi_backend.notifications.outbox import relay_wanted

    accounts.fund(user["id"], "5")
    asked = []
    relay_wanted.connect(asked.append, sender=app, weak=False)
    try:
        buy_token(client, user)
        client.get("/api/v1/tokens/my-tokens", headers=user["headers"])  # no event written: no nudge
    finally:
        relay_wanted.disconnect(asked.append, sender=app)
    assert asked == [app]


def test_the_embedded_default_relays_right_after_the_commit(backends, tmp_path):
    """With no worker, the embedded default's relay thread is woken by the commit, not by the minute's tick."""
    import time

    from flask_migrate import upgrade

    from tests.fixtures.actions import Accounts
    from tests.support import app_config
    from zenzefi_backend import create_app
    from zenzefi_backend.jobs.inline import start_inline_scheduler

    embedded = create_app(app_config(backends, tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'embedded.db'}",
                                     REDIS_URL=None))
    with embedded.app_context():
        upgrade()
    start_inline_scheduler(embedded, schedule=())  # the relay thread only: no periodic tick can do the work
    people = Accounts(embedded, embedded.test_client())
    user = people.signed_in()
    people.fund(user["id"], "5")
    bought_at = time.monotonic()
    buy_token(people.client, user)
    with embedded.app_context():
        while True:
            pending = rows(OutboxEvent, OutboxEvent.event_type == "token.purchased",
                           OutboxEvent.dispatched_at.is_(None))
            if not pending or time.monotonic() - bought_at > 10:
                break
            time.sleep(0.02)
        assert pending == [], "the purchase's event was not relayed after its commit"
        assert rows(OutboxEvent, OutboxEvent.event_type == "token.purchased")
        db.session.remove()
