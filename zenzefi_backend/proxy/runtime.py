"""What the proxy needs of its app, usable outside Flask's request and app contexts.

The WSGI entry (entry.py) serves a warm request without any Flask context: settings come from `app.config`, the
Redis client from the app's extensions. Whatever needs the database (a cache miss, the device claim, activation,
the outbox, the Redis-down fallback) runs inside `app_context()`, which pushes the app's context only when it is
not already active (the Flask route has one). The app's response bytes wait in `bytes_out` (counters.py).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from flask import Flask, current_app, has_app_context
from redis import Redis

from ..extensions import redis_connection
from .counters import PendingBytesOut

EXTENSION_KEY = "zenzefi-proxy"


class ProxyRuntime:
    def __init__(self, app: Flask):
        self.app = app
        self.bytes_out = PendingBytesOut(lambda: self.redis, self.app_context)

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


def runtime_of(app: Flask) -> ProxyRuntime:
    runtime = app.extensions.get(EXTENSION_KEY)
    if runtime is None:
        runtime = app.extensions.setdefault(EXTENSION_KEY, ProxyRuntime(app))
    return runtime
