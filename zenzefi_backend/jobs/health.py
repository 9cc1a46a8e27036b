"""The periodic health check: refreshes the shared report that operators read."""
from __future__ import annotations

from typing import Any

from flask import current_app

from ..health.checks import run_checks
from ..health.monitor import publish


def health_check() -> dict[str, Any]:
    app = current_app._get_current_object()
    report = run_checks(app)
    publish(app, report)
    return {"status": report["status"]}
