"""How `python -m worker` serves its queues: webhooks and e-mails take turns, so neither kind waits behind a backlog
of the other, and both come before "default" (the relay runs that make deliveries, periodic jobs); each job runs
in the worker's own process with a clean session."""
from __future__ import annotations

import pytest
from rq import Queue

from zenzefi_backend.extensions import get_redis
from zenzefi_backend.jobs.queues import QUEUE_NAMES, InProcessWorker


class RecordingWorker(InProcessWorker):
    """The worker, noting which queue each job came from."""

    served: list[str]

    def execute_job(self, job, queue):
        self.served.append(queue.name)
        return super().execute_job(job, queue)


@pytest.fixture
def real_queues(app):
    if app.config["EMBEDDED"]:
        pytest.skip("the embedded default has no queues: jobs run inline")


def test_deliveries_take_turns_and_come_before_default(app_ctx, real_queues):
    connection = get_redis()
    queues = {name: Queue(name, connection=connection) for name in QUEUE_NAMES}
    for _ in range(2):
        queues["default"].enqueue("os.getpid")
    for _ in range(5):
        queues["emails"].enqueue("os.getpid")  # a backlog of e-mails, queued first …
    for _ in range(3):
        queues["webhooks"].enqueue("os.getpid")  # … does not hold up the webhooks
    worker = RecordingWorker(list(queues.values()), connection=connection)
    worker.served = []
    worker.work(burst=True)
    assert worker.served == ["webhooks", "emails", "webhooks", "emails", "webhooks", "emails", "emails", "emails",
                             "default", "default"]
