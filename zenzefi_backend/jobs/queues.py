"""Queue names and the numbers operators look at (depth, failed, scheduled, workers)."""
from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from redis.exceptions import RedisError
from rq import Queue, Worker

from ..extensions import get_queue, get_redis

QUEUE_NAMES = ("default", "emails", "webhooks")


def queue_stats() -> tuple[list[dict[str, Any]], int, str | None]:
    """(queues, workers, error) — a Redis outage is reported, not raised."""
    connection = get_redis()
    try:
        queues = []
        for name in QUEUE_NAMES:
            queue = Queue(name, connection=connection)
            queues.append({
                "name": name,
                "depth": queue.count,
                "failed": queue.failed_job_registry.count,
                "scheduled": queue.scheduled_job_registry.count,
            })
        return queues, Worker.count(connection=connection), None
    except Exception as exc:
        return [], 0, f"{type(exc).__name__}: {str(exc)[:200]}"


def enqueue_attempt(queue_name: str, func: Callable[..., Any], *args: Any, delay_seconds: float = 0,
                    job_timeout: float) -> bool:
    """Hand one delivery attempt (an e-mail, a webhook) to a worker, now or after `delay_seconds`.

    The database row is what must not be lost; this is only the nudge. False when Redis is down (the relay
    re-enqueues every due row each minute). In the embedded default a delayed attempt is not queued — nothing
    would run it — and waits for the relay instead; an immediate one runs inline, right here."""
    queue = get_queue(queue_name)
    try:
        if delay_seconds <= 0:
            queue.enqueue(func, *args, job_timeout=job_timeout)
        elif queue.is_async:
            # RQ keeps the time to the whole second, rounded down: a second late, never before the row is due.
            queue.enqueue_in(timedelta(seconds=math.ceil(delay_seconds) + 1), func, *args, job_timeout=job_timeout)
    except RedisError:
        return False
    return True
