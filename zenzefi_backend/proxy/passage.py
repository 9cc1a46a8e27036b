"""One forwarded request, start to end: every check, then upstream and back. The Flask route and the WSGI fast
path both call `forward_request`, so the rule lives here once; rejections are raised as ZenzefiError and each
caller renders them with the project's one error handler. It reads the WSGI environ only (no request object)."""
from __future__ import annotations

import time
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.utils import get_content_length
from werkzeug.wrappers import Request

from ..errors import ZenzefiError
from ..metrics import proxy_bytes, proxy_latency
from . import forwarding, services
from .paths import NotCanonical, raw_subpath
from .runtime import ProxyRuntime

_BYTES_IN, _BYTES_OUT = proxy_bytes.labels("in"), proxy_bytes.labels("out")


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
    admission = services.admit(
        runtime, environ.get("HTTP_X_ACCESS_TOKEN"), environ.get("HTTP_X_DEVICE_ID"), raw,
        ip_address=remote_addr, user_agent=environ.get("HTTP_USER_AGENT"), bytes_in=length,
    )
    max_length = config["MAX_CONTENT_LENGTH"]
    if length > max_length:
        raise RequestTooLarge()

    def done(sent: int) -> None:
        if sent:
            _BYTES_OUT.inc(sent)
        services.record_bytes_out(runtime, admission, sent)

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
    proxy_latency.observe(time.perf_counter() - started)
    if length:
        _BYTES_IN.inc(length)
    services.activate_if_first_use(runtime, admission)
    return relayed
