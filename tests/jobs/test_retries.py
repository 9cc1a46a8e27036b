"""Failed periodic jobs: retried after 10 s, 1 min and 5 min, then kept in the FailedJobRegistry where
`flask jobs status` shows them; `flask jobs run` exits non-zero with the error."""
from __future__ import annotations

from datetime import UTC, datetime

from rq import Queue, SimpleWorker
from rq.job import JobStatus

from zenzefi_backend.clock import now
from zenzefi_backend.extensions import get_redis
from zenzefi_backend.jobs.schedule import FAILURE_TTL_SECONDS, RETRY_INTERVALS, SCHEDULE, Periodic, PeriodicScheduler


def boom() -> None:
    raise RuntimeError("the database said no")


def test_every_periodic_job_is_enqueued_with_retries(app_ctx):
    assert RETRY_INTERVALS == (10, 60, 300)
    scheduler = PeriodicScheduler(get_redis())
    enqueued = scheduler.enqueue_due(now())
    assert {p.name for p in SCHEDULE if p.every_seconds} <= set(enqueued)
    jobs = [job for name in {p.queue for p in SCHEDULE} for job in Queue(name, connection=get_redis()).get_jobs()]
    assert len(jobs) == len(enqueued)
    for job in jobs:
        assert job.retries_left == 3, job.id
        assert job.retry_intervals == [10, 60, 300], job.id
        assert job.failure_ttl == FAILURE_TTL_SECONDS


def test_the_schedule_is_spec_section_4():
    every = {p.name: p.every_seconds or p.daily_at.isoformat() for p in SCHEDULE}
    assert every == {
        "health_check": 50,
        "proxy_sessions": 60, "relay_outbox": 60,
        "expire_tokens": 300, "expire_payments": 300, "reconcile_payments": 300,
        "expiring_token_emails": 3600, "auto_renewal": 3600, "expire_plans": 3600, "purge_expired": 3600,
        "audit_retention": "03:00:00", "delivery_log_retention": "03:00:00",
    }


def test_a_failing_job_is_retried_with_backoff_then_stays_failed_and_visible(app, app_ctx):
    connection = get_redis()
    scheduler = PeriodicScheduler(connection, (Periodic("boom", boom, every_seconds=60),))
    assert scheduler.enqueue_due(now()) == ["boom"]
    queue = Queue("default", connection=connection)
    (job_id,) = queue.get_job_ids()
    worker = SimpleWorker([queue], connection=connection)

    delays = []
    for expected_left in (2, 1, 0):
        started = datetime.now(UTC)
        worker.work(burst=True)
        job = queue.fetch_job(job_id)
        assert job.get_status() == JobStatus.SCHEDULED
        assert job.retries_left == expected_left
        registry = queue.scheduled_job_registry
        delays.append(round((registry.get_scheduled_time(job) - started).total_seconds()))
        registry.remove(job)  # let the delay pass: what RQ's scheduler does when it is due
        queue.enqueue_job(job)
    assert [abs(d - e) <= 2 for d, e in zip(delays, RETRY_INTERVALS, strict=True)] == [True] * 3, delays

    worker.work(burst=True)
    job = queue.fetch_job(job_id)
    assert job.get_status() == JobStatus.FAILED
    assert job_id in queue.failed_job_registry.get_job_ids()
    assert "the database said no" in job.latest_result().exc_string

    status = app.test_cli_runner().invoke(args=["jobs", "status"])
    assert status.exit_code == 0, status.output
    assert "default    depth=0 failed=1" in status.output
    assert f"failed: {job_id}: RuntimeError: the database said no" in status.output


def test_flask_jobs_run_exits_1_with_the_error_when_the_job_fails(app, monkeypatch):
    def broken(moment=None):
        raise RuntimeError("the database said no")

    monkeypatch.setattr("zenzefi_backend.jobs.maintenance.purge_expired_idempotency_keys", broken)
    result = app.test_cli_runner().invoke(args=["jobs", "run", "purge_expired"])
    assert result.exit_code == 1
    assert "Error: job purge_expired failed: RuntimeError: the database said no" in result.output
    assert "Traceback" in result.output  # the operator sees where it failed


def test_flask_jobs_run_unknown_job(app):
    result = app.test_cli_runner().invoke(args=["jobs", "run", "nope"])
    assert result.exit_code == 1
    assert "unknown job 'nope'" in result.output
