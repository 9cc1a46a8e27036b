"""Queue names and the numbers operators look at (depth, failed, scheduled, workers)."""
from __future__ import annotations

from typing import Any

from rq import Queue, SimpleWorker, Worker

from ..extensions import db, get_redis

QUEUE_NAMES = ("webhooks", "emails", "default")
DELIVERY_QUEUES = ("webhooks", "emails")


class InProcessWorker(SimpleWorker):
    """`python -m worker`'s RQ worker: each job runs in this process, not in a fork of it. A delivery attempt is a few
    milliseconds of database work and one HTTP request; a fork and a fresh database connection per job cost more
    than that, and would cap one worker at a few deliveries a second. The job timeout still holds (SIGALRM), and
    the session is cleared after every job, so nothing one job left behind reaches the next.

    Queues: the delivery queues take turns (a backlog of e-mails never holds up webhooks, nor the other way round)
    and come before "default", whose relay runs make the deliveries: a relay run waits until the deliveries it
    made earlier are out, so under load one run fans out many events instead of every other job being a run of
    its own (which would halve the deliveries a worker makes). Periodic jobs wait at most for that backlog."""

    def reorder_queues(self, reference_queue: Queue) -> None:
        deliveries = [queue for queue in self._ordered_queues if queue.name in DELIVERY_QUEUES]
        others = [queue for queue in self._ordered_queues if queue.name not in DELIVERY_QUEUES]
        if reference_queue in deliveries:  # the one just served goes behind the other
            deliveries.remove(reference_queue)
            deliveries.append(reference_queue)
        self._ordered_queues = deliveries + others

    def execute_job(self, job, queue):
        try:
            return super().execute_job(job, queue)
        finally:
            db.session.remove()


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
