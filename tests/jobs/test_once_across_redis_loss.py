"""Once means once across Redis loss (issue 14 item 5): every periodic job records what it did in the database
(`expiry_reminded_at`, `renewed_at`, `expiry_processed_at`, a payment's or a plan's state, a session's end …), so
when Redis loses everything — the scheduler's "this slot ran" keys, the queues — and the scheduler enqueues the
same slot again, the second run repeats no e-mail, no charge, no event, no audit entry.

Each job goes the production way: the periodic scheduler enqueues it, an RQ worker runs it (and the e-mails it
queues); then Redis is wiped (FLUSHDB) and it all happens again."""
from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from rq import Queue, SimpleWorker

from tests.jobs.helpers import activate, buy_tokens, events
from zenzefi_backend.accounts.models import User
from zenzefi_backend.audit.models import AuditLog
from zenzefi_backend.clock import now
from zenzefi_backend.extensions import db, get_redis
from zenzefi_backend.jobs.schedule import SCHEDULE, PeriodicScheduler
from zenzefi_backend.ledger.models import Transaction
from zenzefi_backend.notifications.models import EmailMessage, OutboxEvent
from zenzefi_backend.payments.models import Payment
from zenzefi_backend.proxy.models import ProxySession
from zenzefi_backend.tokens.models import AccessToken

RENEWAL = "/api/v1/users/me/auto-renewal"


def set_token(app, token_id: str, **values) -> None:
    with app.app_context():
        db.session.execute(sa.update(AccessToken).where(AccessToken.id == uuid.UUID(token_id)).values(**values))
        db.session.commit()


def expiring_in(hours: float) -> dict:
    return {"activated_at": now() - timedelta(minutes=5), "expires_at": now() + timedelta(hours=hours)}


def buy_24h(client, user) -> dict:
    response = client.post("/api/v1/tokens/purchase", headers=user["headers"], json={"duration_hours": 24})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def world_with_work_for_every_job(app, client, accounts) -> dict:
    """Something for each periodic job to do exactly once."""
    reminded = accounts.signed_in()
    accounts.fund(reminded["id"], "18.00")
    set_token(app, buy_24h(client, reminded)["id"], **expiring_in(23))  # the "expires soon" e-mail

    renewing = accounts.signed_in()
    accounts.fund(renewing["id"], "100.00")
    assert client.put(RENEWAL, headers=renewing["headers"],
                      json={"enabled": True, "duration_hours": 24, "scope": "full"}).status_code == 200
    set_token(app, buy_24h(client, renewing)["id"], **expiring_in(5))  # one replacement, charged once

    broke = accounts.signed_in()
    accounts.fund(broke["id"], "18.00")
    assert client.put(RENEWAL, headers=broke["headers"],
                      json={"enabled": True, "duration_hours": 24, "scope": "full"}).status_code == 200
    # "auto-renewal failed", once; reminded an hour ago (else, with auto-renewal now off, the next hourly run
    # would remind it for the first time: not a repeat, but not what this test is about)
    set_token(app, buy_24h(client, broke)["id"], **expiring_in(5), expiry_reminded_at=now() - timedelta(hours=1))

    expired, idle = buy_tokens(client, accounts, 2)
    activate(app, expired, timedelta(hours=2), session=False, cached=False)  # `token.expired`, once
    activate(app, idle, timedelta(minutes=30), cached=False)  # an idle session: `session.ended`, once

    with app.app_context():
        lapsed = db.session.get(User, uuid.UUID(reminded["id"]))
        lapsed.plan, lapsed.plan_expires_at = "premium", now() - timedelta(minutes=1)  # back to free, once
        db.session.add(Payment(user_id=uuid.UUID(renewing["id"]), amount_znc=Decimal("10.00"), currency="RUB",
                               amount=Decimal("100.00"), status="pending", provider="mock",
                               provider_payment_id=f"once-{uuid.uuid4().hex}", created_at=now() - timedelta(hours=25),
                               expires_at=now() - timedelta(hours=1)))  # expired, once
        db.session.commit()
    return {"renewing": renewing["id"], "broke": broke["id"], "expired": expired["id"], "idle": idle["id"]}


def run_every_periodic_job(app, moment: datetime) -> list[str]:
    """The scheduler's run for `moment`'s slots, then an RQ worker until the queues are empty."""
    with app.app_context():
        connection = get_redis()
        embedded = app.config["EMBEDDED"]  # the in-process stand-in runs each job as it is enqueued
        enqueued = PeriodicScheduler(connection, is_async=not embedded).enqueue_due(moment)
        for _ in range(10):
            queues = Queue.all(connection=connection)
            if embedded or not any(queue.count for queue in queues):
                break
            SimpleWorker(queues, connection=connection).work(burst=True)
        db.session.remove()
    return enqueued


def effects(app, mailbox: Path) -> dict:
    """What the jobs did that a user or an operator would notice again if it were repeated."""
    with app.app_context():
        table = {
            "e-mails": sorted(db.session.execute(sa.select(EmailMessage.kind, EmailMessage.to_address)).all()),
            "e-mails sent": sorted(db.session.scalars(sa.select(EmailMessage.id).where(EmailMessage.status == "sent"))),
            "events": sorted(db.session.execute(sa.select(OutboxEvent.event_type, OutboxEvent.user_id)).all()),
            "ledger": sorted(db.session.execute(sa.select(Transaction.user_id, Transaction.amount)).all()),
            "tokens": db.session.scalar(sa.select(sa.func.count()).select_from(AccessToken)),
            "audit": sorted(db.session.execute(sa.select(AuditLog.action, AuditLog.resource_id)).all()),
            "sessions ended": sorted(db.session.scalars(sa.select(ProxySession.id)
                                                        .where(ProxySession.is_active.is_(False)))),
            "balances": sorted(db.session.execute(sa.select(User.id, User.balance)).all()),
        }
        db.session.remove()
    table["mailbox"] = sorted(path.name for path in mailbox.glob("*.eml"))
    return table


def test_no_periodic_job_repeats_anything_after_redis_loses_its_data(app, client, accounts, mailbox):
    ids = world_with_work_for_every_job(app, client, accounts)
    slot_moment = datetime.combine(now().date(), time(12, 0), tzinfo=now().tzinfo)  # daily jobs due too

    first_run = run_every_periodic_job(app, slot_moment)
    assert sorted(first_run) == sorted(periodic.name for periodic in SCHEDULE)  # every job ran
    after_first = effects(app, mailbox)

    # The first run did each job's work.
    kinds = [kind for kind, _ in after_first["e-mails"]]
    # Reminded: the token expiring in 23 h and the idle one (a 1-hour token with half an hour left).
    reminders_and_renewals = ("token_expiring", "auto_renewal_done", "auto_renewal_failed")
    assert [kinds.count(kind) for kind in reminders_and_renewals] == [2, 1, 1], kinds
    assert events(app, "token.expired") == {ids["expired"]: 1}
    assert events(app, "session.ended", "token_id") == {ids["idle"]: 1}
    renewals = [amount for user, amount in after_first["ledger"] if str(user) == ids["renewing"]]
    assert sorted(renewals) == [Decimal("-18.00"), Decimal("-18.00"), Decimal("100.00")], renewals  # buy + renewal
    actions = [action for action, _ in after_first["audit"]]
    assert actions.count("plan.expired") == 1 and actions.count("payment.expired") == 1, actions
    assert len(after_first["mailbox"]) == len(after_first["e-mails sent"]) >= 3

    with app.app_context():
        get_redis().flushdb()  # Redis loses everything: slot keys, leader lease, queues, registries

    second_run = run_every_periodic_job(app, slot_moment)
    assert sorted(second_run) == sorted(first_run)  # the same slots are enqueued and run again …
    after_second = effects(app, mailbox)
    repeated = {what: sorted(set(after_second[what]) - set(after_first[what]), key=str)
                for what in after_first if what != "tokens"}
    assert after_second == after_first, repeated  # … and repeat nothing
