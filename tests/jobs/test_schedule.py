from __future__ import annotations

import json
from datetime import UTC, datetime
from datetime import time as clock_time

from rq import Queue

from zenzefi_backend.extensions import get_redis
from zenzefi_backend.health.monitor import SHARED_KEY
from zenzefi_backend.jobs.health import health_check
from zenzefi_backend.jobs.schedule import Periodic, PeriodicScheduler


def test_only_one_scheduler_leads(app_ctx):
    first, second = PeriodicScheduler(get_redis()), PeriodicScheduler(get_redis())
    assert first.is_leader() is True
    assert second.is_leader() is False
    assert first.is_leader() is True  # renews its own lease
    first.release()
    assert second.is_leader() is True


def test_a_slot_is_enqueued_once_even_by_two_schedulers(app_ctx):
    moment = datetime(2026, 11, 22, 12, 0, 10, tzinfo=UTC)
    schedule = (Periodic("health_check", health_check, every_seconds=50),)
    first, second = PeriodicScheduler(get_redis(), schedule), PeriodicScheduler(get_redis(), schedule)
    assert first.enqueue_due(moment) == ["health_check"]
    assert second.enqueue_due(moment) == []
    assert first.enqueue_due(moment.replace(second=40)) == []  # same 50-second slot
    assert first.enqueue_due(moment.replace(minute=1)) == ["health_check"]
    assert Queue("default", connection=get_redis()).count == 2


def test_daily_jobs_wait_for_their_time():
    daily = Periodic("retention", health_check, daily_at=clock_time(3, 0))
    assert daily.slot(datetime(2026, 11, 22, 2, 59, tzinfo=UTC)) is None
    assert daily.slot(datetime(2026, 11, 22, 3, 0, tzinfo=UTC)) == "2026-11-22"
    assert daily.slot(datetime(2026, 11, 22, 23, 0, tzinfo=UTC)) == "2026-11-22"


def test_health_check_job_publishes_the_shared_report(app_ctx):
    assert health_check()["status"] == "degraded"  # the test upstream is down
    report = json.loads(get_redis().get(SHARED_KEY))
    assert report["checks"]["database"]["status"] == "up"
    assert report["checks"]["upstream"]["status"] == "down"
