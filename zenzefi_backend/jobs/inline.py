"""The embedded default's periodic jobs: with no Redis server there is no RQ worker, so the web process runs
the schedule itself, in one background thread (started by `dev.py serve` through INLINE_SCHEDULER)."""
from __future__ import annotations

import threading
from datetime import datetime

from flask import Flask

from ..database import db
from ..extensions import get_redis
from .schedule import PeriodicScheduler


class InlineScheduler(PeriodicScheduler):
    """The periodic scheduler with jobs run on the spot; a failing job is recorded by RQ and never stops it."""

    def enqueue_due(self, moment: datetime) -> list[str]:
        try:
            return super().enqueue_due(moment)
        finally:
            db.session.remove()  # each tick starts with a clean session, whatever the jobs left behind


def start_inline_scheduler(app: Flask) -> InlineScheduler:
    with app.app_context():
        scheduler = InlineScheduler(get_redis(), is_async=False)

    def run() -> None:
        with app.app_context():
            scheduler.run()

    threading.Thread(target=run, name="inline-scheduler", daemon=True).start()
    return scheduler
