"""`python -m worker`: the periodic scheduler enqueues the health check, the RQ worker runs it, once per slot."""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from rq import Queue
from rq.registry import FinishedJobRegistry

from tests.e2e.harness import Worker, real_services, wait_for
from zenzefi_backend.health.monitor import SHARED_KEY
from zenzefi_backend.jobs.schedule import TICK_SECONDS, by_name

pytestmark = pytest.mark.e2e

HEALTH_JOB_PREFIX = "periodic-health_check-"


def health_job_ids(job_ids: list[str]) -> list[str]:
    return [job_id for job_id in job_ids if job_id.startswith(HEALTH_JOB_PREFIX)]


@real_services
def test_worker_schedules_and_runs_the_health_check(services, redis_client):
    redis_client.delete(SHARED_KEY)
    with Worker(services.database_url, services.redis_url) as worker:
        raw = wait_for(lambda: worker.alive() and redis_client.get(SHARED_KEY), 15,
                       lambda: worker.describe(f"{SHARED_KEY} did not appear within 15 s"))
        report = json.loads(raw)
        assert report["checks"]["database"]["status"] == "up", report
        assert report["checks"]["redis"]["status"] == "up", report
        assert report["checks"]["upstream"]["status"] == "down", report  # 127.0.0.1:9
        assert report["status"] == "degraded", report

        finished = FinishedJobRegistry("default", connection=redis_client)
        wait_for(lambda: health_job_ids(finished.get_job_ids()), 10,
                 lambda: worker.describe("the health_check job never finished in RQ"))
        assert redis_client.ttl(SHARED_KEY) > 0, "the shared report must expire (HEALTH_TTL_SECONDS)"


@real_services
def test_two_schedulers_enqueue_each_health_check_slot_once(services, redis_client):
    periodic = by_name("health_check")
    queue = Queue(periodic.queue, connection=redis_client)
    started = time.time()
    with Worker(services.database_url, services.redis_url, ["--scheduler-only"], name="scheduler-a") as first, \
            Worker(services.database_url, services.redis_url, ["--scheduler-only"], name="scheduler-b") as second:
        schedulers = (first, second)

        def logs() -> str:
            return "\n".join(scheduler.logs() for scheduler in schedulers)

        wait_for(lambda: all("periodic scheduler started" in scheduler.stderr_path.read_text(errors="replace")
                             for scheduler in schedulers), 15,
                 lambda: f"both schedulers should have started\n{logs()}")
        wait_for(lambda: health_job_ids(queue.get_job_ids()), 10,
                 lambda: f"no health_check job was enqueued\n{logs()}")
        # Let both schedulers tick a few more times: the one that lost the lease keeps trying.
        time.sleep(3 * TICK_SECONDS)
        finished = time.time()
        assert all(scheduler.alive() for scheduler in schedulers), logs()

        enqueued = Counter(health_job_ids(queue.get_job_ids()))
    assert enqueued and all(count == 1 for count in enqueued.values()), f"job ids in the queue: {enqueued}"
    # Only the slots this test lived through (one, or two if it straddled a 50 s boundary).
    lived = range(int(started) // periodic.every_seconds, int(finished) // periodic.every_seconds + 1)
    assert {int(job_id.removeprefix(HEALTH_JOB_PREFIX)) for job_id in enqueued} <= set(lived), (enqueued, lived)


def test_worker_without_redis_exits_2_with_a_clear_message():
    outcome = Worker(database_url=None, redis_url=None, name="worker-no-redis").run(timeout=30)
    assert outcome.returncode == 2, (outcome.returncode, outcome.stderr[-2000:])
    assert "REDIS_URL" in outcome.stderr, outcome.stderr[-2000:]
    assert "Traceback" not in outcome.stderr, outcome.stderr[-2000:]
