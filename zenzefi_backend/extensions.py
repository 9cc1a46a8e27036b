"""Extension singletons; each is bound to the app in `create_app`."""
from __future__ import annotations

import hmac
import os
from functools import wraps

import fakeredis
import redis
from blinker import Namespace
from flask import Flask, current_app, request
from flask_jwt_extended import JWTManager
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics
from rq import Queue
from sqlalchemy import MetaData

from .errors import ZenzefiApi, error_response

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
migrate = Migrate()
jwt = JWTManager()
api = ZenzefiApi()


# Decorated limits (register, failed logins) key by IP. The per-user API limit by plan over every /api/v1 route is
# an application limit the factory installs (plans/limits.py says who is counted and what is exempt).
limiter = Limiter(key_func=get_remote_address, strategy="fixed-window")

# Sent by `/metrics` once the caller may read it, just before the exposition is rendered: the factory connects
# what computes the gauges (metrics.refresh_gauges).
metrics_requested = Namespace().signal("metrics-requested")


def _metrics_guard(view):
    """`/metrics` needs `Authorization: Bearer <METRICS_TOKEN>` when that setting is present."""
    @wraps(view)
    def guarded(*args, **kwargs):
        token = current_app.config.get("METRICS_TOKEN")
        if token:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
                return error_response(401, "A valid metrics token is required.")
        metrics_requested.send(current_app._get_current_object())
        return view(*args, **kwargs)

    return guarded


# The multiprocess exporter refuses to start without this variable, which must be in the process
# environment before Python starts (gunicorn.conf.py / the container), so it is read here, once.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    metrics = GunicornInternalPrometheusMetrics.for_app_factory(
        group_by="endpoint", metrics_decorator=_metrics_guard, excluded_paths=["/metrics"]
    )
else:
    metrics = PrometheusMetrics.for_app_factory(
        group_by="endpoint", metrics_decorator=_metrics_guard, excluded_paths=["/metrics"]
    )


class RedisConnection:
    """The app's Redis client — the server or Sentinel-named primary of `REDIS_URL` (config/redis_url.py builds
    it), else an in-process stand-in. Caches, the device holder, queues, the scheduler lease and the worker all
    use it."""

    extension_key = "zenzefi-redis"

    def init_app(self, app: Flask) -> None:
        target = app.config["REDIS_TARGET"]
        if target is not None:
            client = target.client(socket_timeout=2, socket_connect_timeout=1, health_check_interval=30)
        else:
            client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        app.extensions[self.extension_key] = client

    @property
    def client(self) -> redis.Redis:
        return current_app.extensions[self.extension_key]


redis_connection = RedisConnection()


def get_redis() -> redis.Redis:
    return redis_connection.client


def get_queue(name: str = "default") -> Queue:
    """RQ queue; in the embedded default jobs run inline, in the caller's process."""
    return Queue(name, connection=get_redis(), is_async=not current_app.config["EMBEDDED"])


def waits_in_queue(queue: Queue, job_id: str) -> bool:
    """Whether a job is in its queue, or in the list a one-queue worker moves it to as it takes it. A job that says
    "queued" and is in neither was taken by a worker that lost Redis before it could mark the job started (RQ
    takes a job and marks it in two steps): nothing will run it."""
    connection = queue.connection
    return (connection.lpos(queue.key, job_id) is not None
            or connection.lpos(queue.intermediate_queue_key, job_id) is not None)
