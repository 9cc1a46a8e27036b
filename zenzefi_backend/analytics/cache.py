"""The analytics answers, kept in Redis for ANALYTICS_CACHE_SECONDS (5 minutes) as the JSON bytes sent.

A user's figures are kept under a key holding the user's id, so they are never served to anyone else; the key
also holds the period and its last day, so a new UTC day starts from fresh figures. The global figures are the
same for every superuser (the superuser check runs before the cache is read). If Redis cannot be reached the
figures are computed for each request instead.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from flask import Response, current_app
from redis.exceptions import RedisError

from ..extensions import get_redis
from .services import Window

log = logging.getLogger(__name__)

PREFIX = "zenzefi:analytics:"


def usage_key(user_id: uuid.UUID, window: Window) -> str:
    return f"{PREFIX}usage:{user_id}:{window.period}:{window.last.isoformat()}"


def global_key(window: Window) -> str:
    return f"{PREFIX}global:{window.period}:{window.last.isoformat()}"


def cached_json(key: str, build: Callable[[], Any]) -> Response:
    """The JSON response kept under `key`, or `build()`'s, kept for next time."""
    client = get_redis()
    try:
        body = client.get(key)
    except RedisError:
        log.warning("analytics: cache unreachable, computing", exc_info=True)
        body, client = None, None
    if body is None:
        body = current_app.json.dumps(build()).encode()
        if client is not None:
            try:
                client.set(key, body, ex=current_app.config["ANALYTICS_CACHE_SECONDS"])
            except RedisError:
                log.warning("analytics: cannot keep the figures in the cache", exc_info=True)
    return Response(body, status=200, mimetype="application/json")
