"""`/api/v1/proxy/status` and the catch-all that forwards the desktop client's traffic upstream."""
from __future__ import annotations

import time

from flask import current_app, request

from ..errors import ZenzefiError
from ..extensions import limiter
from ..metrics import proxy_bytes, proxy_latency, proxy_requests
from ..openapi import ACCESS_TOKEN, Blueprint, errors
from . import forwarding, services
from .paths import NotCanonical, raw_subpath
from .schemas import ProxyStatusSchema

blp = Blueprint("proxy", __name__, url_prefix="/api/v1/proxy",
                description="The desktop client's traffic, checked and forwarded to the Zenzefi server.")
limiter.exempt(blp)  # the proxy has its own per-token limit, counted in the same Redis round trip

FORWARDED_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
DEVICE_HEADER = {"name": "X-Device-ID", "in": "header", "required": True,
                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{8,255}$"},
                 "description": "Hardware fingerprint of the client device (20 hex characters from the client)."}


class RequestTooLarge(ZenzefiError):
    code = 413
    message = "The request body is too large."


@blp.after_request
def count(response):
    proxy_requests.labels(request.method, str(response.status_code)).inc()
    return response


@blp.route("/status")
@blp.doc(security=ACCESS_TOKEN)
@blp.response(200, ProxyStatusSchema)
@errors(401)
def status():
    """Is this access token usable? Never starts the token's clock and never claims the device"""
    return services.status_of(request.headers.get("X-Access-Token"))


@blp.route("", methods=FORWARDED_METHODS, defaults={"subpath": ""}, endpoint="forward_root", merge_slashes=False)
@blp.route("/<anypath:subpath>", methods=FORWARDED_METHODS, endpoint="forward", merge_slashes=False)
@blp.doc(security=ACCESS_TOKEN, parameters=[DEVICE_HEADER],
         responses={"200": {"description": "Whatever the Zenzefi server answered (any status, headers, bytes)"}})
@errors(400, 401, 403, 409, 413, 429, 502, 504)
def forward(subpath: str):
    """Forward to `ZENZEFI_UPSTREAM_URL/<path>?<query>` after every check

    Checks, in order: X-Device-ID missing → 403, malformed → 400; X-Access-Token missing → 401; token
    unknown, revoked, expired or owner inactive → 401; path not canonical → 400; scope forbids the path →
    403; another device holds the token → 409 with Retry-After; rate limit → 429. The token's clock
    starts with the first request the upstream answers. Redirects are passed back, never followed.
    """
    started = time.perf_counter()
    config = current_app.config
    try:
        raw = raw_subpath(request.environ.get("RAW_URI") or request.full_path)
    except NotCanonical:
        raw = "\\"  # the route matched, but the raw target is odd: let the path check refuse it in order
    admission = services.admit(
        request.headers.get("X-Access-Token"), request.headers.get("X-Device-ID"), raw,
        ip_address=request.remote_addr, user_agent=request.user_agent.string, bytes_in=request.content_length or 0,
    )
    if request.content_length and request.content_length > config["MAX_CONTENT_LENGTH"]:
        raise RequestTooLarge()
    base = config["ZENZEFI_UPSTREAM_URL"].rstrip("/")
    query = request.query_string.decode("latin-1")
    url = f"{base}/{raw}" + (f"?{query}" if query else "")
    # Like every proxy, append the address this connection came from (the trusted front proxy, if any).
    peer = request.environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR", request.remote_addr)
    upstream = forwarding.send(request, url, client_address=peer,
                               connect_timeout=config["PROXY_CONNECT_TIMEOUT"],
                               read_timeout=config["PROXY_READ_TIMEOUT"])
    proxy_latency.observe(time.perf_counter() - started)
    proxy_bytes.labels("in").inc(request.content_length or 0)
    services.activate_if_first_use(admission)
    app = current_app._get_current_object()

    def done(sent: int) -> None:
        proxy_bytes.labels("out").inc(sent)
        with app.app_context():
            services.record_bytes_out(admission, sent)

    return forwarding.relay(upstream, base, done)
