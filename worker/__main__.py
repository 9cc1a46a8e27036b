"""`python -m worker`: an RQ worker (with RQ's delayed-job scheduler) plus the periodic scheduler.

    python -m worker                  worker + periodic scheduler (only one scheduler enqueues at a time)
    python -m worker --no-scheduler   worker only (scale these out)
    python -m worker --scheduler-only the periodic scheduler alone

Redis may be down when it starts or go away while it runs: it waits and reconnects (worker/reconnect.py).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from zenzefi_backend import create_app
from zenzefi_backend.extensions import get_redis
from zenzefi_backend.jobs.queues import QUEUE_NAMES
from zenzefi_backend.jobs.schedule import PeriodicScheduler

from .reconnect import ReconnectingWorker, run_worker

log = logging.getLogger("worker")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-scheduler", action="store_true", help="do not run the periodic scheduler")
    mode.add_argument("--scheduler-only", action="store_true", help="run only the periodic scheduler")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--queues", nargs="+", default=list(QUEUE_NAMES), help="queues to work on")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    app = create_app()
    if app.config["EMBEDDED"]:
        print("The worker needs REDIS_URL (and DATABASE_URL); the embedded default runs jobs inline.",
              file=sys.stderr)
        return 2
    with app.app_context():
        connection = get_redis()
        scheduler = PeriodicScheduler(connection)
        if args.scheduler_only:
            signal.signal(signal.SIGTERM, lambda *_: scheduler.stopped.set())
            signal.signal(signal.SIGINT, lambda *_: scheduler.stopped.set())
            scheduler.run()
            return 0
        if not args.no_scheduler:
            threading.Thread(target=scheduler.run, name="periodic-scheduler", daemon=True).start()
        try:
            return run_worker(lambda: ReconnectingWorker(args.queues, connection=connection), connection,
                              burst=args.burst, logging_level=app.config["LOG_LEVEL"])
        finally:
            scheduler.stopped.set()
            scheduler.release()


if __name__ == "__main__":
    sys.exit(main())
