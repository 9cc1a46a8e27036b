"""A due attempt whose job sits in Redis but will never run is handed to a worker by the next sweep, within seconds
of being asked, not after the job's id expires (10-15 minutes): a delayed retry that no RQ scheduler moved to its
queue (the worker holding the scheduler lock was killed), a job that failed for good, one whose worker died
before it claimed the row, or one a worker took from its queue and lost with its Redis connection before it could
mark it started. A job a worker will still run is left alone: each attempt is enqueued once."""
from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from rq.job import Job, JobStatus

from zenzefi_backend.extensions import get_redis
from zenzefi_backend.jobs.notifications import relay_outbox_job
from zenzefi_backend.notifications import delivery, webhooks


def test_a_retry_no_scheduler_moved_to_its_queue_is_queued_by_the_sweep(first_attempt, receiver, timeline):
    queue, delivery_id = first_attempt
    receiver.answer(500)
    assert webhooks.deliver(delivery_id) == "failed (HTTP 500); retry in 10 s"
    queue.remove(f"webhook-{delivery_id}-1")
    retry = f"webhook-{delivery_id}-2"
    scheduled = queue.scheduled_job_registry
    assert scheduled.get_job_ids() == [retry]
    timeline.advance(webhooks.RETRY_DELAYS[0])

    relay_outbox_job()  # due by the database, its delayed job's time still to come in RQ: left where it is
    assert (queue.get_job_ids(), scheduled.get_job_ids()) == ([], [retry])

    # Its time came and went, and no scheduler moved it (the worker holding RQ's scheduler lock was killed).
    get_redis().zadd(scheduled.key, {retry: time.time() - delivery.OVERDUE_SCHEDULED_SECONDS - 5})
    relay_outbox_job()
    relay_outbox_job()
    assert (queue.get_job_ids(), scheduled.get_job_ids()) == ([retry], [])
    assert Job.fetch(retry, connection=get_redis()).get_status() == JobStatus.QUEUED


def test_an_attempt_whose_job_failed_for_good_is_enqueued_again(first_attempt):
    queue, delivery_id = first_attempt
    job_id = f"webhook-{delivery_id}-1"
    job = queue.fetch_job(job_id)
    queue.remove(job_id)
    job.set_status(JobStatus.FAILED)  # what RQ leaves after the job raised on its last retry (the database was away)
    queue.failed_job_registry.add(job, ttl=delivery.FAILED_JOB_KEPT_SECONDS)

    relay_outbox_job()
    relay_outbox_job()
    assert queue.get_job_ids() == [job_id]
    assert queue.failed_job_registry.get_job_ids() == []


@pytest.mark.parametrize(("started_seconds_ago", "enqueued_again"), [(5, False), (120, True)])
def test_an_attempt_whose_worker_died_before_the_claim_is_enqueued_again_after_the_job_timeout(
        first_attempt, started_seconds_ago, enqueued_again):
    queue, delivery_id = first_attempt
    job_id = f"webhook-{delivery_id}-1"
    job = queue.fetch_job(job_id)
    queue.remove(job_id)  # a worker took it...
    job.started_at = datetime.now(UTC) - timedelta(seconds=started_seconds_ago)
    job.save()
    job.set_status(JobStatus.STARTED)  # ...and was killed before its claim was committed: the row is still due

    relay_outbox_job()
    relay_outbox_job()
    assert queue.get_job_ids() == ([job_id] if enqueued_again else [])


@pytest.mark.parametrize(("taken_to", "enqueued_again"), [("nowhere", True), ("the one-queue worker's list", False)])
def test_an_attempt_whose_job_a_worker_took_but_never_marked_started_is_enqueued_again(
        first_attempt, taken_to, enqueued_again):
    """RQ takes a job from its queue and marks it started in two steps; a worker that lost Redis in between (its
    connection killed, the primary failing over) leaves a job that says "queued" and is in no queue."""
    queue, delivery_id = first_attempt
    job_id = f"webhook-{delivery_id}-1"
    redis = get_redis()
    if taken_to == "nowhere":
        assert redis.lpop(queue.key) == job_id.encode()
    else:  # a worker of this queue alone moves the job to a list of its own as it takes it: it will start it
        assert redis.lmove(queue.key, queue.intermediate_queue_key) == job_id.encode()
    assert Job.fetch(job_id, connection=redis).get_status() == JobStatus.QUEUED

    relay_outbox_job()
    relay_outbox_job()
    assert queue.get_job_ids() == ([job_id] if enqueued_again else [])
