"""Forwarding to the upstream: streamed both ways, bytes untouched, headers cleaned, redirects passed back."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import urllib3
from flask import Request, Response
from requests.utils import DEFAULT_CA_BUNDLE_PATH, requote_uri
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError
from urllib3.util import SKIP_HEADER, Timeout, parse_url

from ..errors import ZenzefiError

CHUNK_BYTES = 64 * 1024
# RFC 9110 §7.6.1 plus the historical ones still seen in the wild.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
OUR_CREDENTIALS = frozenset({"x-access-token", "x-device-id"})
# Recomputed for the upstream connection by requests.
REQUEST_ONLY = frozenset({"host", "content-length"})


class UpstreamUnreachable(ZenzefiError):
    code = 502
    message = "The Zenzefi server cannot be reached right now."


class UpstreamTimeout(ZenzefiError):
    code = 504
    message = "The Zenzefi server did not answer in time."


class UpstreamResponse(Response):
    """No default Content-Type: a response carries exactly the headers the upstream sent."""

    default_mimetype = None


def _stream_chunks(stream) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK_BYTES):
        yield chunk


_local = threading.local()


def upstream_pool() -> urllib3.PoolManager:
    """One connection pool per thread: connections are reused; there is no cookie jar, so nothing one user's
    answer set is ever sent for another. (urllib3 directly: `requests` on top of it cost more CPU per request
    than everything else the proxy does.)"""
    pool = getattr(_local, "pool", None)
    if pool is None:
        # HTTPS upstreams are verified against the same CA bundle `requests` used (certifi's).
        pool = urllib3.PoolManager(num_pools=4, maxsize=4, retries=False, cert_reqs="CERT_REQUIRED",
                                   ca_certs=DEFAULT_CA_BUNDLE_PATH)
        _local.pool = pool
    return pool


def _connection_listed(headers) -> set[str]:
    listed = set()
    for value in headers.getlist("Connection"):
        listed.update(name.strip().lower() for name in value.split(",") if name.strip())
    return listed


def outgoing_headers(request: Request, client_address: str | None) -> dict[str, str]:
    dropped = HOP_BY_HOP | OUR_CREDENTIALS | REQUEST_ONLY | _connection_listed(request.headers)
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered in dropped:
            continue
        headers[name] = value
    # urllib3 and http.client would otherwise add their own User-Agent and Accept-Encoding.
    for name in ("User-Agent", "Accept-Encoding"):
        headers.setdefault(name, SKIP_HEADER)
    if client_address:
        previous = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{previous}, {client_address}" if previous else client_address
    return headers


def request_body(request: Request, headers: dict[str, str]) -> tuple[object | None, bool]:
    """(body, chunked), streamed: the input as a file with its Content-Length when the length is known, chunks
    when the client sent chunked; else no body (and `Content-Length: 0` for methods that carry one)."""
    length = request.content_length
    if length:
        headers["Content-Length"] = str(length)
        return request.stream, False
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return _stream_chunks(request.stream), True
    if request.method not in ("GET", "HEAD"):
        headers["Content-Length"] = "0"
    return None, False


def upstream_target(url: str) -> str:
    """The URL normalised and re-quoted as before (the way `requests` prepares one): illegal characters
    percent-encoded, escapes of unreserved characters decoded (`%41` → `A`), everything else untouched."""
    return requote_uri(parse_url(url).url)


def rewrite_location(location: str, upstream_base: str) -> str:
    """`<upstream origin>/a/b?q=1` → `/a/b?q=1`; anything else is left alone."""
    target, origin = urlsplit(location), urlsplit(upstream_base)
    if target.scheme.lower() == origin.scheme.lower() and target.netloc.lower() == origin.netloc.lower():
        path = target.path or "/"
        return path + (f"?{target.query}" if target.query else "") + (f"#{target.fragment}" if target.fragment else "")
    return location


def send(request: Request, url: str, *, client_address: str | None, connect_timeout: float,
         read_timeout: float) -> urllib3.BaseHTTPResponse:
    """The upstream's answer, its body not yet read. Never retried, never redirected."""
    headers = outgoing_headers(request, client_address)
    body, chunked = request_body(request, headers)
    try:
        return upstream_pool().urlopen(
            request.method, upstream_target(url), body=body, headers=headers, chunked=chunked, redirect=False,
            retries=False, preload_content=False, decode_content=False,
            timeout=Timeout(connect=connect_timeout, read=read_timeout),
        )
    except NewConnectionError:  # refused (a subclass of ConnectTimeoutError, so first)
        raise UpstreamUnreachable() from None
    except (ConnectTimeoutError, ReadTimeoutError):
        raise UpstreamTimeout() from None
    except (HTTPError, OSError):  # reset, closed early, a broken answer
        raise UpstreamUnreachable() from None


def relay(upstream: urllib3.BaseHTTPResponse, upstream_base: str, on_done: Callable[[int], None]) -> Response:
    """The upstream's status, headers (duplicates kept) and raw bytes (Content-Encoding untouched)."""
    raw_headers = upstream.headers
    dropped = HOP_BY_HOP | _connection_listed(raw_headers)
    headers = []
    for name, value in raw_headers.items():
        lowered = name.lower()
        if lowered in dropped:
            continue
        if lowered == "location":
            value = rewrite_location(value, upstream_base)
        headers.append((name, value))

    sent, finished = 0, False

    def finish() -> None:
        nonlocal finished
        if not finished:
            finished = True
            # Closes the connection if the body was not read to its end (urllib3 then already gave it back).
            upstream.close()
            upstream.release_conn()
            on_done(sent)

    def body() -> Iterator[bytes]:
        nonlocal sent
        try:
            for chunk in upstream.stream(CHUNK_BYTES, decode_content=False):
                sent += len(chunk)
                yield chunk
        finally:
            finish()

    response = UpstreamResponse(body(), status=upstream.status, headers=headers, direct_passthrough=True)
    response.call_on_close(finish)  # also when the server never iterates the body (HEAD, a client gone early)
    return response
