"""`/api/v1/proxy/status` and the catch-all that forwards the desktop client's traffic upstream."""
from __future__ import annotations

from flask import current_app, request

from ..extensions import limiter
from ..openapi import ACCESS_TOKEN, Blueprint, errors
from .admission import DEVICE_ID_PATTERN, status_of
from .counters import count_request
from .entry import FORWARDED_METHODS, forward_request
from .runtime import runtime_of
from .schemas import ProxyStatusSchema

blp = Blueprint("proxy", __name__, url_prefix="/api/v1/proxy",
                description="The desktop client's traffic, checked and forwarded to the Zenzefi server.")
limiter.exempt(blp)  # the proxy has its own per-token limit, counted in the same Redis round trip

DEVICE_HEADER = {"name": "X-Device-ID", "in": "header", "required": True,
                 "schema": {"type": "string", "pattern": f"^{DEVICE_ID_PATTERN}$"},
                 "description": "Hardware fingerprint of the client device (20 hex characters from the client)."}


@blp.after_request
def count(response):
    count_request(request.method, response.status_code)
    return response


@blp.route("/status")
@blp.doc(security=ACCESS_TOKEN, parameters=[{
    **DEVICE_HEADER, "required": False,
    "description": "Optional: also say whether this device can use the token now (`device_can_use`, "
                   "`held_by_other_device`, `retry_after_seconds`, `available_at`). Malformed → 400."}])
@blp.response(200, ProxyStatusSchema)
@errors(400, 401)
def status():
    """Is this access token usable (and, with X-Device-ID, by this device now)? Never starts the token's clock and
    never claims the device"""
    return status_of(request.headers.get("X-Access-Token"), request.headers.get("X-Device-ID"))


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
    # Reached only by requests with an `Origin` (CORS is Flask's) or when the fast path is not installed:
    # entry.py's fast path serves the others with the same forward_request.
    return forward_request(runtime_of(current_app._get_current_object()), request.environ).response()
