"""A per-process cached health report, refreshed in the background so `/health` never waits on a dependency."""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from flask import Flask

from ..extensions import get_redis
from .checks import check_database, check_redis, run_checks, run_one

log = logging.getLogger(__name__)
SHARED_KEY = "zenzefi:health:report"


def publish(app: Flask, report: dict[str, Any]) -> None:
    """Share the report through Redis for operators and other processes (best effort)."""
    try:
        with app.app_context():
            get_redis().set(SHARED_KEY, json.dumps(report), ex=app.config["HEALTH_TTL_SECONDS"])
    except Exception:  # Redis being down is already in the report itself
        log.debug("could not publish health report", exc_info=True)


class HealthMonitor:
    """The process's health report, refreshed by one background thread every `HEALTH_REFRESH_SECONDS` from the
    first `/health` request on, so its timestamp is never older than that period plus one check's duration
    (at most the checks' deadline). Requests only read it; they wait (briefly) only while there is none."""

    extension_key = "zenzefi-health"

    def __init__(self, app: Flask):
        self.app = app
        self.refresh_seconds = app.config["HEALTH_REFRESH_SECONDS"]
        self.ttl_seconds = app.config["HEALTH_TTL_SECONDS"]
        self._report: dict[str, Any] | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._running = False
        self._fresh = threading.Condition(self._lock)

    @classmethod
    def for_app(cls, app: Flask) -> HealthMonitor:
        monitor = app.extensions.get(cls.extension_key)
        if monitor is None:
            monitor = app.extensions.setdefault(cls.extension_key, cls(app))
        return monitor

    def _refresh(self) -> None:
        try:
            report = run_checks(self.app)
            publish(self.app, report)
        except Exception:
            log.exception("health check failed to run")
            report = None
        with self._lock:
            if report is not None:
                self._report, self._checked_at = report, time.monotonic()
            self._fresh.notify_all()

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            self._refresh()
            # Reports land one period apart: the next check starts a period after this one started.
            time.sleep(max(0.0, started + self.refresh_seconds - time.monotonic()))

    def _start_locked(self) -> None:
        """Started lazily, in the serving process (a gunicorn worker), never before a fork."""
        if not self._running:
            self._running = True
            threading.Thread(target=self._run, name="health-refresh", daemon=True).start()

    def current(self, wait_seconds: float) -> dict[str, Any] | None:
        """The cached report; waits up to `wait_seconds` only if there is none younger than the TTL."""
        with self._lock:
            self._start_locked()
            age = time.monotonic() - self._checked_at
            if self._report is None or age >= self.ttl_seconds:
                self._fresh.wait(timeout=wait_seconds)
                age = time.monotonic() - self._checked_at
                if self._report is None or age >= self.ttl_seconds:
                    return None
            return self._report


class SharedProbe:
    """Readiness check of one dependency, shared by every request of the process.

    Concurrent callers share one running probe, and a caller waits at most `wait_seconds` from the
    probe's start: behind a hung database, piled-up readiness requests answer "down" at once instead of
    pinning web threads. A probe stuck for `abandon_seconds` is left behind and a fresh one started, so
    recovery is seen even if a socket never returns.
    """

    def __init__(self, app: Flask, check, abandon_seconds: float = 10.0):
        self.app = app
        self.check = check
        self.abandon_seconds = abandon_seconds
        self._lock = threading.Lock()
        self._running: tuple[Future, float] | None = None

    def _run(self, outcome: Future) -> None:
        outcome.set_result(run_one(self.app, self.check)["status"])
        with self._lock:
            if self._running is not None and self._running[0] is outcome:
                self._running = None

    def status(self, wait_seconds: float) -> str:
        with self._lock:
            moment = time.monotonic()
            if self._running is None or moment - self._running[1] > self.abandon_seconds:
                self._running = (Future(), moment)
                threading.Thread(target=self._run, args=(self._running[0],), name="readiness-probe",
                                 daemon=True).start()
            outcome, started = self._running
        try:
            return outcome.result(timeout=max(0.0, wait_seconds - (time.monotonic() - started)))
        except FutureTimeout:
            return "down"


def readiness_probes(app: Flask) -> dict[str, SharedProbe]:
    probes = app.extensions.get("zenzefi-readiness")
    if probes is None:
        probes = {"database": SharedProbe(app, check_database)}
        if app.config["REDIS_URL"]:
            probes["redis"] = SharedProbe(app, check_redis)
        probes = app.extensions.setdefault("zenzefi-readiness", probes)
    return probes
