"""Each due attempt is enqueued once: however often the relay runs, the minute's sweep re-reads the due rows, a
retry is both scheduled and swept, or Redis loses its data, the workers run about one job per real attempt."""
from __future__ import annotations

import sqlalchemy as sa
from rq import Queue, SimpleWorker

from zenzefi_backend.clock import now
from zenzefi_backend.extensions import db, get_redis
from zenzefi_backend.jobs.notifications import relay_new_events_job, relay_outbox_job
from zenzefi_backend.notifications import webhooks
from zenzefi_backend.notifications.models import EmailMessage, OutboxEvent, WebhookDelivery

ENDPOINTS = "/api/v1/webhooks/endpoints"
MOCK_PURCHASE = "/api/v1/currency/mock-purchase"
USERS = 12
ROUNDS = 6
MAX_JOBS_PER_ATTEMPT = 1.1


class CountingWorker(SimpleWorker):
    """RQ's in-process worker, counting the jobs it runs."""

    executed = 0

    def execute_job(self, job, queue):
        self.executed += 1
        return super().execute_job(job, queue)


class Workers:
    """Runs the queued jobs as `python -m worker` would (RQ's scheduler included), counting the delivery jobs."""

    def __init__(self):
        self.delivery_jobs = 0

    def promote_scheduled(self) -> None:
        """What RQ's scheduler does once a delayed job's time has come (here: at once, the clock having moved)."""
        for name in ("webhooks", "emails"):
            queue = Queue(name, connection=get_redis())
            registry = queue.scheduled_job_registry
            for job_id in registry.get_job_ids():
                job = queue.fetch_job(job_id)
                registry.remove(job_id)
                if job is not None:
                    queue.enqueue_job(job)

    def run(self) -> None:
        connection = get_redis()
        SimpleWorker([Queue("default", connection=connection)], connection=connection).work(burst=True)
        worker = CountingWorker([Queue(name, connection=connection) for name in ("webhooks", "emails")],
                                connection=connection)
        worker.work(burst=True)
        self.delivery_jobs += worker.executed


def attempts_made() -> int:
    db.session.expire_all()
    total = (db.session.scalar(sa.select(sa.func.sum(WebhookDelivery.attempts))) or 0) + \
        (db.session.scalar(sa.select(sa.func.sum(EmailMessage.attempts))) or 0)
    db.session.rollback()
    return int(total)


def pending() -> list:
    db.session.expire_all()
    rows = list(db.session.scalars(sa.select(WebhookDelivery).where(WebhookDelivery.status == "pending"))) + \
        list(db.session.scalars(sa.select(EmailMessage).where(EmailMessage.status == "pending")))
    db.session.rollback()
    return rows


def test_workers_run_about_one_job_per_attempt_under_load_and_after_redis_lost_its_data(
        app, app_ctx, with_workers, client, accounts, receiver, mailbox, timeline, capsys):
    users = [accounts.signed_in() for _ in range(USERS)]
    for user in users:
        created = client.post(ENDPOINTS, headers=user["headers"],
                              json={"url": receiver.url(), "events": ["token.purchased", "balance.topped_up"]})
        assert created.status_code == 201, created.get_json()
    workers = Workers()
    receiver.answer(*[500] * 10)  # the first ten attempts fail: their retries are scheduled, and also come due
    for round_number in range(ROUNDS):
        for user in users:
            topped = client.post(MOCK_PURCHASE, headers=user["headers"], json={"amount": "2"})
            assert topped.status_code in (200, 201), topped.get_json()
            bought = client.post("/api/v1/tokens/purchase", headers=user["headers"], json={"duration_hours": 1})
            assert bought.status_code == 201, bought.get_json()
        # The relay is asked again and again while the worker is behind: runs asked for by commits, and the
        # minute's runs, whose sweep reads every due row — queued ones too.
        for _ in range(3):
            relay_new_events_job()
            relay_outbox_job()
        if round_number == ROUNDS // 2:
            get_redis().flushdb()  # Redis lost its data: every queued and scheduled job is gone
            relay_outbox_job()
            relay_outbox_job()
        if round_number % 2:
            timeline.advance(webhooks.RETRY_DELAYS[0])  # scheduled retries are due now, and swept as well
            relay_outbox_job()
            workers.promote_scheduled()
            workers.run()

    for _ in range(webhooks.MAX_ATTEMPTS + 2):  # drain: retries come due, are swept and run
        waiting = pending()
        if not waiting:
            break
        timeline.reach(max(row.next_attempt_at for row in waiting))
        relay_outbox_job()
        relay_outbox_job()
        workers.promote_scheduled()
        workers.run()

    assert pending() == []
    assert db.session.scalar(sa.select(sa.func.count()).select_from(OutboxEvent)
                             .where(OutboxEvent.dispatched_at.is_(None))) == 0
    deliveries = db.session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)
                                   .where(WebhookDelivery.status == "succeeded"))
    emails = db.session.scalar(sa.select(sa.func.count()).select_from(EmailMessage)
                               .where(EmailMessage.status == "sent"))
    assert (deliveries, emails) == (USERS * ROUNDS * 2, USERS * ROUNDS)
    attempts = attempts_made()
    assert attempts == deliveries + emails + 10  # ten failed first attempts, each retried once
    ratio = workers.delivery_jobs / attempts
    with capsys.disabled():
        print(f"\n  delivery jobs run: {workers.delivery_jobs}, attempts: {attempts}, ratio {ratio:.3f}")
    assert ratio <= MAX_JOBS_PER_ATTEMPT, (workers.delivery_jobs, attempts)


def test_an_attempt_asked_for_again_while_queued_or_scheduled_is_not_enqueued_twice(
        first_attempt, receiver, timeline):
    webhooks_queue, delivery_id = first_attempt
    job_id = f"webhook-{delivery_id}-1"
    relay_outbox_job()  # the sweep reads the row (due, queued): no second job
    webhooks.enqueue_delivery(delivery_id)
    assert webhooks_queue.get_job_ids() == [job_id]

    receiver.answer(500)
    assert webhooks.deliver(delivery_id) == "failed (HTTP 500); retry in 10 s"
    webhooks_queue.remove(job_id)
    scheduled = webhooks_queue.scheduled_job_registry
    assert scheduled.get_job_ids() == [f"webhook-{delivery_id}-2"]
    timeline.advance(webhooks.RETRY_DELAYS[0])
    assert webhooks.due_deliveries(now()) == [delivery_id]
    relay_outbox_job()  # due by the database, still scheduled in RQ: the sweep leaves it there
    assert (webhooks_queue.get_job_ids(), scheduled.get_job_ids()) == ([], [f"webhook-{delivery_id}-2"])

    get_redis().flushdb()  # the scheduled retry is lost with Redis's data; the sweep enqueues it, once
    relay_outbox_job()
    relay_outbox_job()
    assert webhooks_queue.get_job_ids() == [f"webhook-{delivery_id}-2"]
