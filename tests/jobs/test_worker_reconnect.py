"""worker/reconnect.py's pieces: the backoff, and what happens to the job an outage interrupted (the e2e test
tests/e2e/test_worker_redis_outage_e2e.py runs them in a real `python -m worker`)."""
from __future__ import annotations

import random

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from worker.reconnect import BACKOFF_MAX_SECONDS, Backoff, requeue_unfinished
from zenzefi_backend.extensions import get_redis

JOB = "tests.fixtures.jobs.journaled"


def test_backoff_doubles_up_to_its_cap_with_jitter_and_starts_over_after_a_success():
    backoff = Backoff(first=0.5, cap=BACKOFF_MAX_SECONDS, rng=random.Random(7))
    delays = [backoff.next() for _ in range(8)]
    nominal = [0.5, 1, 2, 4, 8, 8, 8, 8]
    assert all(0.75 * n <= d <= 1.25 * n for d, n in zip(delays, nominal, strict=True)), delays
    backoff.reset()
    assert 0.375 <= backoff.next() <= 0.625


@pytest.fixture
def queue(app_ctx) -> Queue:
    return Queue("default", connection=get_redis())


def taken(queue: Queue, label: str) -> Job:
    """A job as a worker holds it once it started it: dequeued, STARTED, in the started registry."""
    job = queue.enqueue(JOB, "/dev/null", label, job_id=f"job-{label}", job_timeout=60)
    queue.remove(job.id)
    job.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry(queue.name, connection=queue.connection)
    queue.connection.zadd(registry.key, {f"{job.id}:execution-1": 10**10})
    return Job.fetch(job.id, connection=queue.connection)


def test_a_job_redis_lost_is_queued_again_from_the_workers_copy(queue):
    job = taken(queue, "lost")
    queue.connection.flushdb()  # Redis came back empty
    assert requeue_unfinished(queue.connection, job, queue) is True
    assert queue.get_job_ids() == ["job-lost"]
    again = Job.fetch("job-lost", connection=queue.connection)
    assert (again.func_name, again.args, again.get_status()) == (JOB, ("/dev/null", "lost"), JobStatus.QUEUED)


def test_a_job_whose_end_was_never_recorded_is_queued_again_at_the_front(queue):
    queue.enqueue(JOB, "/dev/null", "waiting", job_id="job-waiting")
    job = taken(queue, "interrupted")
    assert requeue_unfinished(queue.connection, job, queue) is True
    assert queue.get_job_ids() == ["job-interrupted", "job-waiting"]
    registry = StartedJobRegistry(queue.name, connection=queue.connection)
    assert queue.connection.zrange(registry.key, 0, -1) == []  # no stale entry to be "abandoned" later


@pytest.mark.parametrize("status", [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.SCHEDULED])
def test_a_job_that_ended_or_waits_for_a_retry_is_left_alone(queue, status):
    job = taken(queue, "done")
    Job.fetch(job.id, connection=queue.connection).set_status(status)
    assert requeue_unfinished(queue.connection, job, queue) is False
    assert queue.get_job_ids() == []


def test_a_job_already_queued_again_is_not_queued_twice(queue):
    job = queue.enqueue(JOB, "/dev/null", "queued", job_id="job-queued")
    assert requeue_unfinished(queue.connection, job, queue) is False
    assert queue.get_job_ids() == ["job-queued"]


def test_a_job_taken_from_its_queue_but_never_marked_started_is_queued_again(queue):
    """RQ takes a job and marks it started in two steps: Redis lost in between leaves it "queued" in no queue."""
    job = queue.enqueue(JOB, "/dev/null", "taken", job_id="job-taken")
    queue.remove(job.id)
    assert Job.fetch(job.id, connection=queue.connection).get_status() == JobStatus.QUEUED
    assert requeue_unfinished(queue.connection, job, queue) is True
    assert queue.get_job_ids() == ["job-taken"]

