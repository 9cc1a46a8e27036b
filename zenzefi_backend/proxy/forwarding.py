"""Forwarding to the upstream: streamed both ways, bytes untouched, headers cleaned, redirects passed back."""
from __future__ import annotations

import http.cookiejar
import threading
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import requests
from flask import Request, Response
from requests.adapters import HTTPAdapter
from urllib3.util import SKIP_HEADER

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


class _SizedStream:
    """The request body as a file with a known length, so requests sends Content-Length, not chunks."""

    def __init__(self, stream, length: int):
        self._stream = stream
        self._length = length

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


def _stream_chunks(stream) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK_BYTES):
        yield chunk


_local = threading.local()


def upstream_session() -> requests.Session:
    """One pooled session per thread: connections are reused, cookies are never kept between users."""
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False
        session.headers.clear()  # no User-Agent, Accept or Accept-Encoding the client did not send
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _local.session = session
    return session


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


def request_body(request: Request):
    """Streamed: a sized file when the length is known, chunks when the client sent chunked."""
    length = request.content_length
    if length:
        return _SizedStream(request.stream, length)
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return _stream_chunks(request.stream)
    return None


def rewrite_location(location: str, upstream_base: str) -> str:
    """`<upstream origin>/a/b?q=1` → `/a/b?q=1`; anything else is left alone."""
    target, origin = urlsplit(location), urlsplit(upstream_base)
    if target.scheme.lower() == origin.scheme.lower() and target.netloc.lower() == origin.netloc.lower():
        path = target.path or "/"
        return path + (f"?{target.query}" if target.query else "") + (f"#{target.fragment}" if target.fragment else "")
    return location


def send(request: Request, url: str, *, client_address: str | None, connect_timeout: float,
         read_timeout: float) -> requests.Response:
    try:
        return upstream_session().request(
            request.method, url, data=request_body(request), headers=outgoing_headers(request, client_address),
            stream=True, allow_redirects=False, timeout=(connect_timeout, read_timeout),
        )
    except requests.exceptions.ConnectTimeout:
        raise UpstreamTimeout() from None
    except requests.exceptions.ReadTimeout:
        raise UpstreamTimeout() from None
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError):
        raise UpstreamUnreachable() from None


def relay(upstream: requests.Response, upstream_base: str, on_done: Callable[[int], None]) -> Response:
    """The upstream's status, headers (duplicates kept) and raw bytes (Content-Encoding untouched)."""
    raw_headers = upstream.raw.headers
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
            upstream.close()
            on_done(sent)

    def body() -> Iterator[bytes]:
        nonlocal sent
        try:
            for chunk in upstream.raw.stream(CHUNK_BYTES, decode_content=False):
                sent += len(chunk)
                yield chunk
        finally:
            finish()

    response = UpstreamResponse(body(), status=upstream.status_code, headers=headers, direct_passthrough=True)
    response.call_on_close(finish)  # also when the server never iterates the body (HEAD, a client gone early)
    return response
