"""After the worker that ran RQ's scheduler was killed (kill -9: its lock lives on for a minute), a restarted worker
takes the scheduler over within seconds of the lock running out — RQ alone tries again only in its 10-minute
maintenance, and every delayed job (each e-mail and webhook retry) waits until then."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from rq import Queue
from rq.scheduler import RQScheduler

from worker.reconnect import SCHEDULER_TAKEOVER_SECONDS, ReconnectingWorker
from zenzefi_backend.extensions import get_redis

JOB = "tests.fixtures.jobs.journaled"
DEAD_LOCK_SECONDS = 2


@pytest.fixture
def worker(app, app_ctx):
    if app.config["EMBEDDED"]:
        pytest.skip("the embedded default has no worker: its Redis stand-in lives in this process only")
    connection = get_redis()
    worker = ReconnectingWorker([Queue("default", connection=connection)], connection=connection)
    yield worker
    if worker.scheduler is not None and worker.scheduler._process is not None:
        worker.stop_scheduler()


def test_an_idle_worker_wakes_before_the_redis_client_would_time_out(worker):
    socket_timeout = get_redis().connection_pool.connection_kwargs["socket_timeout"]
    assert worker.dequeue_timeout < min(socket_timeout, 2)


def test_a_restarted_worker_takes_the_dead_workers_scheduler_over_once_its_lock_runs_out(worker):
    connection = worker.connection
    queue = Queue("default", connection=connection)
    lock = RQScheduler.get_locking_key("default")
    connection.set(lock, "the-killed-workers-scheduler", ex=DEAD_LOCK_SECONDS)
    job = queue.enqueue_in(timedelta(seconds=1), JOB, "/dev/null", "delayed", job_id="job-delayed")
    worker.runs_scheduler = True  # what work(with_scheduler=True) sets, without its loop
    worker.scheduler = RQScheduler(worker.queues, connection=connection)
    worker.scheduler.acquire_locks()
    assert worker.scheduler.acquired_locks == set()  # the dead worker's lock is still there

    deadline = time.monotonic() + DEAD_LOCK_SECONDS + 2 * SCHEDULER_TAKEOVER_SECONDS + 5
    while job.id not in queue.get_job_ids():
        assert time.monotonic() < deadline, "the delayed job was never moved to its queue"
        worker.heartbeat()  # what the idle worker does every DEQUEUE_TIMEOUT_SECONDS
        time.sleep(0.2)
    assert connection.get(lock).decode() == worker.scheduler.name
