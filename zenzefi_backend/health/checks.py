"""Dependency checks: database, Redis, upstream — each bounded in time, run side by side."""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import requests
import sqlalchemy as sa
from flask import Flask

from ..clock import now
from ..database import db
from ..extensions import get_redis

CHECK_DEADLINE_SECONDS = 3.0
# Shared and small: a dependency that hangs can tie up at most these threads, never the web workers.
_executor = ThreadPoolExecutor(max_workers=6, thread_name_prefix="health-check")


def check_database() -> None:
    with db.engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))


def check_redis() -> None:
    get_redis().ping()


def check_upstream(url: str) -> None:
    with requests.get(url, timeout=(2, CHECK_DEADLINE_SECONDS), allow_redirects=False, stream=True):
        pass  # any HTTP answer means the upstream is reachable


def _timed(app: Flask, check: Callable[[], None]) -> dict[str, Any]:
    with app.app_context():
        started = time.perf_counter()
        try:
            check()
            return {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2), "error": None}
        except Exception as exc:  # every failure of a dependency is a "down", never a crash
            return {"status": "down", "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                    "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        finally:
            db.session.remove()


def run_one(app: Flask, check: Callable[[], None]) -> dict[str, Any]:
    """One check, in the calling thread (which may block as long as the dependency does)."""
    return _timed(app, check)


def overall_status(checks: dict[str, dict[str, Any]]) -> str:
    if checks["database"]["status"] == "down" or checks["redis"]["status"] == "down":
        return "unhealthy"
    if checks["upstream"]["status"] == "down":
        return "degraded"
    return "healthy"


def run_checks(app: Flask) -> dict[str, Any]:
    upstream = app.config["ZENZEFI_UPSTREAM_URL"]
    futures = {
        "database": _executor.submit(_timed, app, check_database),
        "redis": _executor.submit(_timed, app, check_redis),
        "upstream": _executor.submit(_timed, app, lambda: check_upstream(upstream)),
    }
    checks: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + CHECK_DEADLINE_SECONDS + 0.5
    for name, future in futures.items():
        try:
            checks[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            checks[name] = {"status": "down", "latency_ms": None, "error": "timed out"}
    return {"status": overall_status(checks), "timestamp": now().isoformat(), "checks": checks}
