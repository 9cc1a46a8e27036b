"""`python -m worker` survives Redis (issue 14 item 6): started while Redis is down it waits; when Redis is
killed under it (and comes back empty) or merely goes away for a while (and comes back with its data), the same
process reconnects and works on, and the job the outage interrupted runs again — none is lost.

Redis here is a `redis-server` of the test's own (started on a free port, SIGKILLed, started again: no
persistence, so it comes back empty), or the run's Redis behind a relay that is cut and restored (the data
stays). The jobs are tests/fixtures/jobs.py's `journaled`, which writes when it starts and ends.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from tests.e2e.harness import LOOPBACK, RedisServer, Worker, real_services, wait_for

pytestmark = pytest.mark.e2e

JOB = "tests.fixtures.jobs.journaled"
LONG_JOB_SECONDS = 4.0


def lines(journal: Path) -> list[str]:
    return journal.read_text().splitlines() if journal.exists() else []


def enqueue(connection, journal: Path, label: str, seconds: float = 0.0) -> Job:
    return Queue("default", connection=connection).enqueue(JOB, str(journal), label, seconds, job_id=f"job-{label}",
                                                           job_timeout=60)


def finished(connection, job_id: str) -> bool:
    try:
        return Job.fetch(job_id, connection=connection).get_status() == JobStatus.FINISHED
    except Exception:
        return False


def restart(server: RedisServer) -> None:
    server.spawn()
    wait_for(server._answers, 15, lambda: f"{server.label} did not come back\n{server.logs()}")


@real_services
def test_worker_started_while_redis_is_down_waits_then_works(services, tmp_path):
    journal = tmp_path / "journal"
    server = RedisServer("redis-late")  # its port is chosen; nothing listens there yet
    try:
        with Worker(services.database_url, f"redis://{LOOPBACK}:{server.port}/0") as worker:
            wait_for(lambda: "Redis unreachable" in worker.stderr_path.read_text(errors="replace"), 30,
                     lambda: worker.describe("the worker did not say it is waiting for Redis"))
            time.sleep(2)
            assert worker.alive(), worker.describe("the worker exited while Redis was down")

            restart(server)
            with server.client() as client:
                enqueue(client, journal, "first")
                wait_for(lambda: finished(client, "job-first"), 30,
                         lambda: worker.describe(f"the job did not run once Redis was up: {lines(journal)}"))
            assert lines(journal) == ["start first", "end first"]
            assert worker.alive() and worker.process.returncode is None
    finally:
        server.close()


@real_services
def test_redis_killed_under_a_running_job_the_same_worker_reconnects_and_runs_it_again(services, tmp_path):
    journal = tmp_path / "journal"
    with RedisServer("redis-own") as server, \
            Worker(services.database_url, f"redis://{LOOPBACK}:{server.port}/0", ["--no-scheduler"]) as worker:
        pid = worker.pid
        with server.client() as client:
            enqueue(client, journal, "long", LONG_JOB_SECONDS)
            wait_for(lambda: "start long" in lines(journal), 30,
                     lambda: worker.describe(f"the long job did not start: {lines(journal)}"))

        server.crash()  # SIGKILL, no persistence: it comes back empty
        # The job's horse finishes its work while Redis is away, but cannot record that it did.
        wait_for(lambda: "end long" in lines(journal), LONG_JOB_SECONDS + 10,
                 lambda: worker.describe(f"the running job did not finish: {lines(journal)}"))
        time.sleep(1)
        assert worker.alive(), worker.describe("the worker exited when Redis died")

        restart(server)
        with server.client() as client:
            wait_for(lambda: finished(client, "job-long"), 30,
                     lambda: worker.describe(f"the interrupted job was not run again: {lines(journal)}"))
            enqueue(client, journal, "after")
            wait_for(lambda: finished(client, "job-after"), 30,
                     lambda: worker.describe(f"a new job did not run after the outage: {lines(journal)}"))
        assert lines(journal) == ["start long", "end long", "start long", "end long", "start after", "end after"]
        assert worker.alive() and worker.pid == pid
        assert "job job-long was interrupted by the Redis outage; queued again" in worker.stderr_path.read_text()


@real_services
def test_redis_unreachable_for_a_while_loses_no_job(services, redis_client, tmp_path):
    """The network to Redis breaks while a job runs and another waits behind it; Redis keeps its data."""
    journal = tmp_path / "journal"
    relay = services.redis_relay()
    with Worker(services.database_url, services.redis_url_via(relay), ["--no-scheduler"]) as worker:
        enqueue(redis_client, journal, "running", LONG_JOB_SECONDS)
        wait_for(lambda: "start running" in lines(journal), 30,
                 lambda: worker.describe(f"the job did not start: {lines(journal)}"))
        enqueue(redis_client, journal, "waiting")
        relay.stop()
        enqueue(redis_client, journal, "during")  # a web process can still reach Redis; this worker cannot
        wait_for(lambda: "end running" in lines(journal), LONG_JOB_SECONDS + 10,
                 lambda: worker.describe(f"the running job did not finish: {lines(journal)}"))
        time.sleep(2)
        assert worker.alive(), worker.describe("the worker exited when Redis became unreachable")
        assert not finished(redis_client, "job-running")  # its end could not be recorded

        relay.start()
        for label in ("running", "waiting", "during"):
            wait_for(lambda label=label: finished(redis_client, f"job-{label}"), 30,
                     lambda label=label: worker.describe(f"job {label} never finished: {lines(journal)}"))
    runs = lines(journal)
    assert runs[:2] == ["start running", "end running"], runs
    assert runs.count("end waiting") == 1 and runs.count("end during") == 1, runs
    assert runs.count("end running") == 2, runs  # run again: its end was never recorded
