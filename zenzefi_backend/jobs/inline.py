"""The embedded default's periodic jobs: with no Redis server there is no RQ worker, so the web process runs
the schedule itself, in one background thread (started by `dev.py serve` through INLINE_SCHEDULER), and the
outbox relay at once after every commit that wrote events (a second thread, woken by `relay_wanted`)."""
from __future__ import annotations

import logging
import threading
from datetime import datetime

from flask import Flask

from ..database import db
from ..extensions import get_redis
from ..notifications.outbox import relay_wanted
from .notifications import relay_outbox_job
from .schedule import SCHEDULE, Periodic, PeriodicScheduler

log = logging.getLogger(__name__)


class InlineScheduler(PeriodicScheduler):
    """The periodic scheduler with jobs run on the spot; a failing job is recorded by RQ and never stops it."""

    def enqueue_due(self, moment: datetime) -> list[str]:
        try:
            return super().enqueue_due(moment)
        finally:
            db.session.remove()  # each tick starts with a clean session, whatever the jobs left behind


class InlineRelay:
    """Relays the outbox whenever a commit asked for it; nudges that come while a run is on make one more run."""

    def __init__(self, app: Flask):
        self.app = app
        self.wanted = threading.Event()

    def nudge(self, sender: Flask, **kwargs) -> None:
        self.wanted.set()

    def run(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            with self.app.app_context():
                try:
                    relay_outbox_job()
                except Exception:  # the minute's periodic relay will try again
                    log.exception("inline outbox relay failed")
                finally:
                    db.session.remove()


def start_inline_scheduler(app: Flask, schedule: tuple[Periodic, ...] = SCHEDULE) -> InlineScheduler:
    with app.app_context():
        scheduler = InlineScheduler(get_redis(), schedule, is_async=False)
    relay = InlineRelay(app)
    relay_wanted.connect(relay.nudge, sender=app, weak=False)

    def run() -> None:
        with app.app_context():
            scheduler.run()

    threading.Thread(target=run, name="inline-scheduler", daemon=True).start()
    threading.Thread(target=relay.run, name="inline-outbox-relay", daemon=True).start()
    return scheduler
