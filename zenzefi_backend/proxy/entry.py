"""The WSGI entry: one forwarded request, top to bottom.

`forward_request` is the whole journey: the checks (admission.py), the 413, the upstream's answer streamed back
(forwarding.py), the counts (counters.py) and the token's first use. Rejections are raised as ZenzefiError and
rendered with the project's one error handler. It reads the WSGI environ only (no request object), so two callers
share it:

- `ProxyFastPath`, WSGI middleware between ProxyFix (so REMOTE_ADDR is already the client's) and Flask, serves
  `/api/v1/proxy` and `/api/v1/proxy/<path>` itself. Flask's request context, URL routing and the before/after
  hooks of every extension (flask-smorest, the limiter, CORS, the HTTP metrics exporter) cost more than the
  proxy's own work on a warm request, which runs without any Flask context; the app context is pushed only for
  what needs it (database, outbox, error bodies).
- Flask's forwarding route (routes.py) keeps `/api/v1/proxy/status`, OPTIONS (CORS preflights) and methods it
  does not forward, and any request with an `Origin` header, whose CORS headers flask-cors writes.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.sansio.utils import get_content_length
from werkzeug.wrappers import Request

from ..errors import ZenzefiError, error_response, unexpected_error_response
from ..extensions import api
from . import admission, counters, forwarding
from .paths import PROXY_PREFIX, NotCanonical, raw_subpath
from .runtime import ProxyRuntime, runtime_of

FORWARDED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
STATUS_PATH = PROXY_PREFIX + "/status"

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]


class RequestTooLarge(ZenzefiError):
    code = 413
    message = "The request body is too large."


def forward_request(runtime: ProxyRuntime, environ: dict[str, Any]) -> forwarding.Relayed:
    """Checks in SPEC §3.6's order, the 413, then the upstream's answer streamed back. The token's clock starts
    with the first request the upstream answers; the answer's bytes are counted when it has been sent."""
    started = time.perf_counter()
    config = runtime.config
    try:
        # gunicorn and werkzeug give the raw target; another server, the path as Flask's request shows it.
        raw = raw_subpath(environ.get("RAW_URI") or Request(environ, shallow=True).full_path)
    except NotCanonical:
        raw = "\\"  # the route matched, but the raw target is odd: let the path check refuse it in order
    length = get_content_length(environ.get("CONTENT_LENGTH"), environ.get("HTTP_TRANSFER_ENCODING")) or 0
    remote_addr = environ.get("REMOTE_ADDR")
    admitted = admission.admit(
        runtime, environ.get("HTTP_X_ACCESS_TOKEN"), environ.get("HTTP_X_DEVICE_ID"), raw,
        ip_address=remote_addr, user_agent=environ.get("HTTP_USER_AGENT"), bytes_in=length,
    )
    max_length = config["MAX_CONTENT_LENGTH"]
    if length > max_length:
        raise RequestTooLarge()

    def done(sent: int) -> None:
        runtime.bytes_out.response_sent(admitted.session_id, admitted.via_redis, sent)

    # Like every proxy, append the address this connection came from (the trusted front proxy, if any).
    proxied = environ.get("werkzeug.proxy_fix.orig")
    peer = proxied.get("REMOTE_ADDR", remote_addr) if proxied else remote_addr
    try:
        relayed = forwarding.send(
            environ, config["ZENZEFI_UPSTREAM_URL"].rstrip("/"), raw, environ.get("QUERY_STRING", ""),
            method=environ.get("REQUEST_METHOD", "GET").upper(), length=length, max_length=max_length,
            client_address=peer, connect_timeout=config["PROXY_CONNECT_TIMEOUT"],
            read_timeout=config["PROXY_READ_TIMEOUT"], on_done=done)
    except RequestEntityTooLarge:  # a chunked body went over MAX_CONTENT_LENGTH while it was being sent
        raise RequestTooLarge() from None
    counters.request_forwarded(time.perf_counter() - started, length)
    admission.activate_if_first_use(runtime, admitted)
    return relayed


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
        counters.count_request(environ.get("REQUEST_METHOD", "GET").upper(), response.status_code)
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
