"""What a client of a rate-limited route is told (SPEC §3.8): `X-RateLimit-Limit`, `-Remaining` and `-Reset` on
every response of a limited route; `Retry-After` only on the 429, with the seconds until the window frees up,
rounded up; and a 429 body that says what is limited and when it frees up.

Flask-Limiter's own header code is switched off (`RATELIMIT_HEADERS_ENABLED=False` in config/__init__.py): it
puts `Retry-After` on every response, 200s included, and truncates it (a client retrying after it is refused
again). The limiter still decides and counts; this module only reads its verdict (`limiter.current_limit`).
Redis reports a key's TTL in whole seconds rounded to the nearest, so the exact expiry comes from PTTL.
"""
from __future__ import annotations

import logging
import math
import time

from flask import Flask, Response
from flask_limiter import RateLimitExceeded, RequestLimit
from limits import RateLimitItem
from limits.storage import RedisStorage

from .errors import error_response
from .extensions import limiter

log = logging.getLogger(__name__)


def describe(item: RateLimitItem) -> str:
    """`5 per hour`, `100 per minute`, `10 per 2 hours`."""
    unit = item.GRANULARITY.name
    return f"{item.amount} per {unit}" if item.multiples == 1 else f"{item.amount} per {item.multiples} {unit}s"


def in_words(seconds: int) -> str:
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    parts = [(hours, "hour"), (minutes, "minute"), (seconds, "second")]
    return " ".join(f"{value} {unit}{'s' if value != 1 else ''}" for value, unit in parts if value) or "0 seconds"


def _window(request_limit: RequestLimit) -> tuple[int, float]:
    """(remaining, the moment the window resets as a Unix time) for the request's limit."""
    storage = limiter.storage
    key = request_limit.key
    used = storage.get(key)
    if isinstance(storage, RedisStorage):
        milliseconds = storage.get_connection(True).pttl(storage.prefixed_key(key))
        reset = time.time() + max(milliseconds, 0) / 1000
    else:
        reset = storage.get_expiry(key)
    return max(0, request_limit.limit.amount - used), reset


def seconds_until_reset(request_limit: RequestLimit) -> int:
    """Whole seconds until the window frees up, rounded up (a client waiting this long is let in); at least 1.
    If the counter cannot be read, the whole window: too long is safe, too short is not."""
    try:
        _, reset = _window(request_limit)
    except Exception:  # the limiter's storage is unreachable
        log.warning("cannot read the rate-limit window; answering with its full length", exc_info=True)
        return request_limit.limit.get_expiry()
    return max(1, math.ceil(reset - time.time()))


def add_rate_limit_headers(response: Response) -> Response:
    """After every request (registered before the limiter's own hook, so it runs after it and sees a failed
    login already counted)."""
    request_limit = limiter.current_limit
    if request_limit is None:
        return response
    try:
        remaining, reset = _window(request_limit)
    except Exception:  # the storage is down: the limiter lets requests through (and logs it), we say nothing
        log.debug("cannot read the rate-limit window for the headers", exc_info=True)
        return response
    response.headers["X-RateLimit-Limit"] = str(request_limit.limit.amount)
    response.headers["X-RateLimit-Remaining"] = str(remaining)
    response.headers["X-RateLimit-Reset"] = str(math.ceil(reset))
    return response


def handle_rate_limit_exceeded(error: RateLimitExceeded) -> Response:
    """The 429 of every limiter limit: what is limited (the limit's `error_message`), its size, when it frees up."""
    request_limit = limiter.current_limit
    item = error.limit.limit
    seconds = seconds_until_reset(request_limit) if request_limit is not None else item.get_expiry()
    what = (error.description or "Too many requests").rstrip(".")
    message = f"{what} (at most {describe(item)}). Try again in {in_words(seconds)}."
    return error_response(429, message, {"Retry-After": str(seconds)}, retry_after=seconds)


def init_app(app: Flask) -> None:
    """Call before `limiter.init_app(app)`: Flask runs after-request hooks in reverse order of registration."""
    app.after_request(add_rate_limit_headers)
    app.register_error_handler(RateLimitExceeded, handle_rate_limit_exceeded)
