"""Domain errors and the one JSON error shape: `{code, status, message[, errors][, extra…]}`."""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, jsonify
from flask_smorest import Api
from flask_smorest.error_handler import ErrorSchema as SmorestErrorSchema
from marshmallow import fields
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

log = logging.getLogger(__name__)


def error_body(code: int, message: str, errors: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "status": HTTPStatus(code).phrase, "message": message}
    if errors:
        body["errors"] = dict(errors)
    body.update(extra)
    return body


def error_response(code: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any):
    response = jsonify(error_body(code, message, **extra))
    response.status_code = code
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class ZenzefiError(Exception):
    """Base of every error a service raises on purpose; mapped to its status code by one handler."""

    code = 500
    message = "Internal server error."

    def __init__(self, message: str | None = None, *, headers: Mapping[str, str] | None = None, **extra: Any):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.headers = dict(headers or {})
        self.extra = extra


class TryAgainLater(ZenzefiError):
    """An error the client may retry after some seconds: `Retry-After` and `retry_after` in the body agree."""

    def __init__(self, retry_after_seconds: float):
        seconds = max(1, math.ceil(retry_after_seconds))  # rounded up: a client retrying then is let in
        super().__init__(headers={"Retry-After": str(seconds)}, retry_after=seconds)


class RateLimited(TryAgainLater):
    code = 429
    message = "Too many requests; slow down."


class BadRequest(ZenzefiError):
    code = 400
    message = "Malformed request."


class Unauthorized(ZenzefiError):
    code = 401
    message = "Missing or invalid credentials."


class InvalidCredentials(Unauthorized):
    message = "Invalid e-mail or password."


class PaymentRequired(ZenzefiError):
    code = 402
    message = "Insufficient balance."


class Forbidden(ZenzefiError):
    code = 403
    message = "You are not allowed to do this."


class NotFound(ZenzefiError):
    code = 404
    message = "Not found."


class Conflict(ZenzefiError):
    code = 409
    message = "Conflict with the current state."


class ValidationFailed(ZenzefiError):
    """A 422 always names its fields, in `errors` and (unless the caller's message does) in `message`."""

    code = 422
    message = "Validation failed."

    def __init__(self, errors: Mapping[str, list[str]], message: str | None = None):
        super().__init__(message or _validation_summary(errors), errors=dict(errors))


class ServiceUnavailable(ZenzefiError):
    code = 503
    message = "A dependency is unavailable; try again shortly."


class DatabaseUnavailable(TryAgainLater):
    """The database cannot be reached (down, restarting, every pooled connection busy): 503 with `Retry-After`,
    never a 500. Nothing half-done stays behind: the request's transaction never committed."""

    code = 503
    message = "The database is unavailable; try again shortly."

    def __init__(self, retry_after_seconds: float = 0):
        super().__init__(retry_after_seconds or DATABASE_RETRY_AFTER_SECONDS)


# About how long PostgreSQL takes to restart or fail over; the pool reconnects by itself (pre-ping) after that.
DATABASE_RETRY_AFTER_SECONDS = 5
# SQLSTATE classes that mean "cannot reach the server now": 08 connection exception, 53 insufficient resources
# (too many connections), 57 operator intervention (shutdown, starting up, crash recovery, a cancelled query).
_UNREACHABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})


def database_unreachable(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached now, rather than that our code or data is wrong."""
    if isinstance(error, InternalServerError) and error.original_exception is not None:
        error = error.original_exception  # raised where Flask wraps it (an after-request hook)
    if isinstance(error, sa.exc.TimeoutError):
        return True  # no pooled connection came free within pool_timeout
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    driver_error = error.orig
    sqlstate = getattr(driver_error, "sqlstate", None)
    if sqlstate:
        return sqlstate[:2] in _UNREACHABLE_SQLSTATE_CLASSES
    if type(driver_error).__module__.startswith("psycopg"):
        # No SQLSTATE: psycopg's own verdict — the connection could not be made, or broke, or timed out.
        return isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError))
    # SQLite (the embedded default): another connection holds the lock longer than the busy timeout.
    return str(getattr(driver_error, "sqlite_errorname", "")).startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def unexpected_error_response(error: BaseException) -> Response:
    """What any error no handler expected becomes: 503 while the database is unreachable, otherwise a 500 (a bug)
    logged with its traceback. The Flask handler below and the proxy's WSGI fast path both answer with this."""
    if database_unreachable(error):
        original = getattr(error, "original_exception", None) or error
        driver_error = getattr(original, "orig", None)
        # The type and SQLSTATE only: the driver's message may quote the statement and its parameters.
        log.warning("database unreachable; answering 503", extra={
            "error_type": type(driver_error or original).__name__,
            "sqlstate": getattr(driver_error, "sqlstate", None)})
        unavailable = DatabaseUnavailable()
        return error_response(unavailable.code, unavailable.message, unavailable.headers, **unavailable.extra)
    log.exception("unhandled error", extra={"error_type": type(error).__name__}, exc_info=error)
    return error_response(500, "Internal server error.")


def _flatten_locations(messages: Mapping[str, Any]) -> dict[str, Any]:
    """webargs keys errors by location (`json`, `query`); clients want `{field: [messages]}`."""
    flat: dict[str, Any] = {}
    for location, errors in messages.items():
        if isinstance(errors, Mapping):
            flat.update(errors)
        else:
            flat[location] = errors
    return flat


def _validation_summary(errors: Mapping[str, Any]) -> str:
    fields_named = ", ".join(sorted(str(name) for name in errors))
    return f"Validation failed: {fields_named}." if fields_named else "Validation failed."


class ErrorSchema(SmorestErrorSchema):
    """The error body every endpoint returns (documented in OpenAPI)."""

    code = fields.Integer(required=True, metadata={"description": "HTTP status code"})
    status = fields.String(required=True, metadata={"description": "HTTP reason phrase"})
    message = fields.String(required=True, metadata={"description": "Human-readable explanation"})
    errors = fields.Dict(metadata={"description": "Validation errors keyed by field"})


class ZenzefiApi(Api):
    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException):
        code = error.code or 500
        data = getattr(error, "data", None) or {}
        headers = dict(data.get("headers") or {})
        errors = data.get("errors")
        if errors is None and "messages" in data:
            errors = _flatten_locations(data["messages"])
        if errors:
            message = data.get("message") or _validation_summary(errors)
        else:
            message = data.get("message") or error.description or HTTPStatus(code).phrase
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            headers["Allow"] = ", ".join(error.valid_methods)
        if code >= 500:
            message = HTTPStatus(code).phrase + "."
        return error_body(code, str(message), errors), code, headers


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ZenzefiError)
    def handle_domain_error(error: ZenzefiError):
        return error_response(error.code, error.message, error.headers, **error.extra)

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        return unexpected_error_response(error)
