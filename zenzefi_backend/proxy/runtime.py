"""What the proxy needs of its app, usable outside Flask's request and app contexts.

The WSGI fast path (fastpath.py) serves a warm request without any Flask context: settings come from
`app.config`, the Redis client from the app's extensions. Whatever needs the database (a cache miss, the device
claim, activation, the outbox, the Redis-down fallback) runs inside `app_context()`, which pushes the app's
context only when it is not already active (the Flask route has one).
"""
from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Flask, current_app, has_app_context
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import redis_connection
from .state import PendingBytesOut, redis_state

EXTENSION_KEY = "zenzefi-proxy"

log = logging.getLogger(__name__)


class ProxyRuntime:
    def __init__(self, app: Flask):
        self.app = app
        self.bytes_out = PendingBytesOut(self._write_bytes_out)

    @property
    def config(self) -> dict[str, Any]:
        return self.app.config

    @property
    def redis(self) -> Redis:
        return self.app.extensions[redis_connection.extension_key]

    @contextlib.contextmanager
    def app_context(self) -> Iterator[None]:
        if has_app_context() and current_app._get_current_object() is self.app:
            yield
            return
        with self.app.app_context():
            yield

    def _write_bytes_out(self, counts: list[tuple[str, int]]) -> None:
        """The timer's flush: into Redis; while Redis is unreachable, straight into the session rows."""
        from . import sessions

        if redis_state.available():
            try:
                redis_state.add_bytes_out(self.redis, counts)
                return
            except RedisError:
                redis_state.failed()
        written = 0
        try:
            with self.app_context():
                for session_id, count in counts:
                    sessions.add_bytes_out(uuid.UUID(session_id), count)
                    written += 1
        except SQLAlchemyError:
            log.warning("proxy: bytes_out kept for a later flush", exc_info=True)
            self.bytes_out.give_back(counts[written:])


def runtime_of(app: Flask) -> ProxyRuntime:
    runtime = app.extensions.get(EXTENSION_KEY)
    if runtime is None:
        runtime = app.extensions.setdefault(EXTENSION_KEY, ProxyRuntime(app))
    return runtime
