"""One forwarded request, start to end: every check, then upstream and back. The Flask route and the WSGI fast
path both call `forward_request`, so the rule lives here once; rejections are raised as ZenzefiError and each
caller renders them with the project's one error handler."""
from __future__ import annotations

import time

from flask import Request, Response
from werkzeug.exceptions import RequestEntityTooLarge

from ..errors import ZenzefiError
from ..metrics import proxy_bytes, proxy_latency
from . import forwarding, services
from .paths import NotCanonical, raw_subpath
from .runtime import ProxyRuntime

_BYTES_IN, _BYTES_OUT = proxy_bytes.labels("in"), proxy_bytes.labels("out")


class RequestTooLarge(ZenzefiError):
    code = 413
    message = "The request body is too large."


def forward_request(runtime: ProxyRuntime, request: Request) -> Response:
    """Checks in SPEC §3.6's order, the 413, then the upstream's answer streamed back. The token's clock starts
    with the first request the upstream answers; the answer's bytes are counted when it has been sent."""
    started = time.perf_counter()
    config = runtime.config
    environ = request.environ
    try:
        raw = raw_subpath(environ.get("RAW_URI") or request.full_path)
    except NotCanonical:
        raw = "\\"  # the route matched, but the raw target is odd: let the path check refuse it in order
    length = request.content_length or 0
    admission = services.admit(
        runtime, request.headers.get("X-Access-Token"), request.headers.get("X-Device-ID"), raw,
        ip_address=request.remote_addr, user_agent=environ.get("HTTP_USER_AGENT"), bytes_in=length,
    )
    if length > config["MAX_CONTENT_LENGTH"]:
        raise RequestTooLarge()
    base = config["ZENZEFI_UPSTREAM_URL"].rstrip("/")
    query = request.query_string.decode("latin-1")
    url = f"{base}/{raw}" + (f"?{query}" if query else "")
    # Like every proxy, append the address this connection came from (the trusted front proxy, if any).
    peer = environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR", request.remote_addr)
    try:
        upstream = forwarding.send(request, url, client_address=peer, connect_timeout=config["PROXY_CONNECT_TIMEOUT"],
                                   read_timeout=config["PROXY_READ_TIMEOUT"])
    except RequestEntityTooLarge:  # a chunked body went over MAX_CONTENT_LENGTH while it was being sent
        raise RequestTooLarge() from None
    proxy_latency.observe(time.perf_counter() - started)
    _BYTES_IN.inc(length)
    services.activate_if_first_use(runtime, admission)

    def done(sent: int) -> None:
        _BYTES_OUT.inc(sent)
        services.record_bytes_out(runtime, admission, sent)

    return forwarding.relay(upstream, base, done)
