"""The WSGI fast path: forwarded proxy requests served without Flask's per-request machinery.

Flask's request context, URL routing and the before/after hooks of every extension (flask-smorest, the limiter,
CORS, the HTTP metrics exporter) cost more than the proxy's own work on a warm request. This middleware sits
between ProxyFix (so REMOTE_ADDR is already the client's) and Flask, and serves `/api/v1/proxy` and
`/api/v1/proxy/<path>` itself with `forward_request` — the function the Flask route calls too, so the checks,
their order, forwarding and counting are one code. A warm request runs without any Flask context; the app
context is pushed only for what needs it (database, outbox, error bodies).

Flask keeps everything else: `/api/v1/proxy/status`, OPTIONS (CORS preflights) and methods the route does not
forward, and any request with an `Origin` header, whose CORS headers flask-cors writes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from ..errors import ZenzefiError, error_response, unexpected_error_response
from ..extensions import api
from ..metrics import proxy_requests
from .passage import forward_request
from .paths import PROXY_PREFIX
from .runtime import runtime_of

FORWARDED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
STATUS_PATH = PROXY_PREFIX + "/status"

WSGIApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]

_counters: dict[tuple[str, int], Any] = {}


def _counter(method: str, status: int):
    """proxy_requests_total{method, status}, the labelled child looked up once per pair."""
    child = _counters.get((method, status))
    if child is None:
        child = _counters.setdefault((method, status), proxy_requests.labels(method, str(status)))
    return child


def is_fast_path_request(environ: dict[str, Any]) -> bool:
    """Routed exactly like Flask's forwarding route (PATH_INFO, the route's methods), minus CORS requests."""
    path = environ.get("PATH_INFO", "")
    if not path.startswith(PROXY_PREFIX):
        return False
    if len(path) > len(PROXY_PREFIX) and path[len(PROXY_PREFIX)] != "/":
        return False  # /api/v1/proxyX
    return (path != STATUS_PATH and "HTTP_ORIGIN" not in environ
            and environ.get("REQUEST_METHOD", "GET").upper() in FORWARDED_METHODS)


class ProxyFastPath:
    """WSGI middleware in front of `app.wsgi_app`; see the module docstring."""

    def __init__(self, app: Flask, wsgi_app: WSGIApp):
        self.app = app
        self.wsgi_app = wsgi_app
        self.runtime = runtime_of(app)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if not is_fast_path_request(environ):
            return self.wsgi_app(environ, start_response)
        try:
            response = forward_request(self.runtime, environ)
        except Exception as error:  # every failure gets the JSON body the Flask route would give
            response = self._error_response(error)
        _counter(environ.get("REQUEST_METHOD", "GET").upper(), response.status_code).inc()
        return response(environ, start_response)

    def _error_response(self, error: Exception) -> Response:
        """The body, status and headers Flask's error handlers (errors.py, flask-smorest's) give the route."""
        with self.app.app_context():
            if isinstance(error, ZenzefiError):
                return error_response(error.code, error.message, error.headers, **error.extra)
            if isinstance(error, HTTPException):
                body, code, headers = api.handle_http_exception(error)
                response = jsonify(body)
                response.status_code = code
                response.headers.update(headers)
                return response
            return unexpected_error_response(error)
