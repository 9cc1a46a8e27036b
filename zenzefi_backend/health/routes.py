from __future__ import annotations

import json

from flask import current_app
from flask.views import MethodView

from ..accounts.auth import superuser_required
from ..clock import now
from ..errors import DATABASE_RETRY_AFTER_SECONDS, error_response
from ..extensions import get_redis, limiter
from ..jobs.queues import queue_stats
from ..openapi import BEARER, PUBLIC, Blueprint, errors
from .checks import run_checks
from .monitor import SHARED_KEY, HealthMonitor, readiness_probes
from .schemas import DetailedHealthSchema, HealthSchema, ProbeSchema

blp = Blueprint("health", __name__, url_prefix="/health", description="Liveness, readiness and status.")
limiter.exempt(blp)

FIRST_CHECK_WAIT_SECONDS = 0.05
READY_WAIT_SECONDS = 1.0


@blp.route("")
class Health(MethodView):
    @blp.doc(security=PUBLIC)
    @blp.response(200, HealthSchema)
    def get(self):
        """Overall status from a cached check (DB, Redis, upstream)

        Refreshed in the background every 50 s and trusted for 120 s, so it answers at once even when a
        dependency hangs. DB or Redis down → `unhealthy`; only the upstream down → `degraded`.
        """
        report = HealthMonitor.for_app(current_app._get_current_object()).current(FIRST_CHECK_WAIT_SECONDS)
        if report is None:
            return {"status": "degraded", "timestamp": now().isoformat(), "message": "First health check running."}
        return {"status": report["status"], "timestamp": report["timestamp"]}


@blp.route("/live")
class Live(MethodView):
    @blp.doc(security=PUBLIC)
    @blp.response(200, ProbeSchema)
    def get(self):
        """Liveness: the process answers"""
        return {"status": "alive"}


@blp.route("/ready")
class Ready(MethodView):
    @blp.doc(security=PUBLIC)
    @blp.response(200, ProbeSchema)
    @errors(503)
    def get(self):
        """Readiness: 503 while the database (or the configured Redis) is unreachable

        Answers within about a second even when a dependency hangs.
        """
        probes = readiness_probes(current_app._get_current_object())
        checks = {name: probe.status(READY_WAIT_SECONDS) for name, probe in probes.items()}
        down = sorted(name for name, state in checks.items() if state == "down")
        if down:
            return error_response(503, f"Not ready: {', '.join(down)} unreachable.",
                                  {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}, checks=checks,
                                  retry_after=DATABASE_RETRY_AFTER_SECONDS)
        return {"status": "ready", "checks": checks}


@blp.route("/detailed")
class Detailed(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.response(200, DetailedHealthSchema)
    @errors(401, 403)
    def get(self):
        """Every check with latency and error, queue depths, failed jobs and workers (superuser)"""
        app = current_app._get_current_object()
        report = run_checks(app)
        queues, workers, queue_error = queue_stats()
        shared = None
        try:
            raw = get_redis().get(SHARED_KEY)
            shared = json.loads(raw) if raw else None
        except Exception:
            shared = None
        return {**report, "queues": queues, "workers": workers, "queue_error": queue_error, "shared_report": shared}
