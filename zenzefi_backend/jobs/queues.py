"""Queue names and the numbers operators look at (depth, failed, scheduled, workers)."""
from __future__ import annotations

from typing import Any

from rq import Queue, Worker

from ..extensions import get_redis

# A worker serves its queues round robin (DEQUEUE_STRATEGY): a backlog of e-mails never holds up webhooks, nor the
# other way round, and the relay's runs on "default" wait for at most one job of each other kind.
QUEUE_NAMES = ("default", "webhooks", "emails")
DEQUEUE_STRATEGY = "round_robin"


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
