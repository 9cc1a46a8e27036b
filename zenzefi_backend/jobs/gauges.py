"""The queues' gauge, set when `/metrics` is read (the factory lists it in `metrics.compute_gauges_with`)."""
from __future__ import annotations

from rq import Queue

from .. import metrics
from ..extensions import get_redis
from .queues import QUEUE_NAMES


def refresh_queue_gauges() -> None:
    """`rq_queue_depth`: jobs waiting in each queue."""
    client = get_redis()
    for name in QUEUE_NAMES:
        metrics.rq_queue_depth.labels(queue=name).set(Queue(name, connection=client).count)
