"""Forwarding to the upstream: streamed both ways, bytes untouched, headers cleaned, redirects passed back."""
from __future__ import annotations

import http.client
import http.cookiejar
import os
import re
import threading
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import requests
from flask import Request, Response
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar
from requests.hooks import default_hooks
from requests.structures import CaseInsensitiveDict
from requests.utils import requote_uri
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError, LocationValueError
from urllib3.util import SKIP_HEADER, parse_url

from ..errors import ZenzefiError

CHUNK_BYTES = 64 * 1024
# RFC 9110 §7.6.1 plus the historical ones still seen in the wild.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
OUR_CREDENTIALS = frozenset({"x-access-token", "x-device-id"})
# Recomputed for the upstream connection.
REQUEST_ONLY = frozenset({"host", "content-length"})
# Idle upstream connections each thread keeps: a thread forwards one request at a time.
THREAD_POOL_MAXSIZE = 2
# RFC 9110 §5.1: a field name is a token. RFC 9110 §5.5: CR, LF and NUL (and the other controls but HTAB, which
# gunicorn would refuse with a 500) must not be forwarded in a field value.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


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


class NoCookies(RequestsCookieJar):
    """A cookie jar that never stores anything: one user's upstream `Set-Cookie` can never be sent for another.
    The client's own `Cookie` header is forwarded as sent and upstream `Set-Cookie` headers go back raw."""

    def __init__(self) -> None:
        super().__init__(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    def set_cookie(self, cookie, *args, **kwargs) -> None:
        return None

    def extract_cookies(self, response, request) -> None:  # also skips parsing Set-Cookie for nothing
        return None


class _HeadLines:
    """The upstream socket's file while the response head is read: a bare CR (RFC 9112 §2.2) becomes a space.
    Python's e-mail parser, which http.client uses for the header block, ends a line at a bare CR, so
    `X: a<CR>Set-Cookie: b` would otherwise come out as two fields."""

    __slots__ = ("_fp",)

    def __init__(self, fp) -> None:
        self._fp = fp

    def readline(self, limit: int = -1) -> bytes:
        line = self._fp.readline(limit)
        if line.find(b"\r", 0, len(line) - 2) != -1 or line.endswith(b"\r"):
            ending = b"\r\n" if line.endswith(b"\r\n") else b"\n" if line.endswith(b"\n") else b""
            content = line[:len(line) - len(ending)].replace(b"\r", b" ")
            # Trailing spaces are no part of a value; but a line of spaces stays one (an empty line ends the head).
            line = (content.rstrip(b" \t") or content) + ending
        return line


class _UpstreamHTTPResponse(http.client.HTTPResponse):
    def begin(self) -> None:
        fp = self.fp
        self.fp = _HeadLines(fp)
        try:
            super().begin()
        finally:
            self.fp = fp


class _UpstreamConnection(HTTPConnection):
    response_class = _UpstreamHTTPResponse


class _UpstreamTLSConnection(HTTPSConnection):
    response_class = _UpstreamHTTPResponse


class _UpstreamPool(HTTPConnectionPool):
    ConnectionCls = _UpstreamConnection


class _UpstreamTLSPool(HTTPSConnectionPool):
    ConnectionCls = _UpstreamTLSConnection


class ForwardingAdapter(HTTPAdapter):
    """requests' adapter minus what a direct connection to a fixed upstream never needs: the proxy lookups
    (done twice per request) and the per-response cookie jar filled from `Set-Cookie` (nobody reads it)."""

    def _thread_pools(self) -> PoolManager:
        """This thread's connection pools: gunicorn's threads never wait on each other's pool locks."""
        local = self.__dict__.setdefault("_local", threading.local())
        pools = getattr(local, "pools", None)
        if pools is None:
            pools = local.pools = PoolManager(num_pools=self._pool_connections, maxsize=THREAD_POOL_MAXSIZE,
                                              block=False)
            pools.pool_classes_by_scheme = {"http": _UpstreamPool, "https": _UpstreamTLSPool}
        return pools

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        if proxies:
            return super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        try:
            host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
            return self._thread_pools().connection_from_host(**host_params, pool_kwargs=pool_kwargs)
        except (ValueError, LocationValueError) as error:
            raise requests.exceptions.InvalidURL(error, request=request) from None

    def request_url(self, request, proxies) -> str:
        return super().request_url(request, proxies) if proxies else request.path_url

    def build_response(self, req, resp) -> requests.Response:
        response = requests.Response()
        response.status_code = resp.status
        response.headers = resp.headers  # urllib3's HTTPHeaderDict: case-insensitive, duplicates kept
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url
        response.request = req
        response.connection = self
        return response


class ForwardingSession(requests.Session):
    """A `requests.Session` that never follows a redirect, not even to prepare one (`Session.send` with
    `allow_redirects=False` would otherwise read a 3xx body to its end to build the next request)."""

    def get_redirect_target(self, resp) -> None:
        return None


def _new_session() -> requests.Session:
    session = ForwardingSession()
    # The upstream is one fixed, configured URL: no proxy from HTTP(S)_PROXY/NO_PROXY, no .netrc credentials,
    # no CA bundle from REQUESTS_CA_BUNDLE, and no environment lookups on every request.
    session.trust_env = False
    session.headers.clear()  # no User-Agent, Accept or Accept-Encoding the client did not send
    session.cookies = NoCookies()
    # Shared by every thread, with connection pools per thread (see ForwardingAdapter._thread_pools: one pool
    # shared by gunicorn's 8 threads cost ~200 µs of CPU per request in lock hand-offs, measured with
    # bench/proxy.py). Never blocking: a connection beyond the pool's size is opened, then closed.
    adapter = ForwardingAdapter(pool_connections=2, pool_maxsize=THREAD_POOL_MAXSIZE, max_retries=0,
                                pool_block=False)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


_session: requests.Session | None = None
_session_lock = threading.Lock()


def upstream_session() -> requests.Session:
    """The process's one pooled session, shared by every thread (made on first use, so in the worker)."""
    global _session
    if _session is None:
        with _session_lock:
            if _session is None:
                _session = _new_session()
    return _session


def _forget_session_after_fork() -> None:
    """Connections must not cross fork(): a child makes its own session."""
    global _session, _session_lock
    _session, _session_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_session_after_fork)


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
    # urllib3 and http.client would otherwise add their own User-Agent and Accept-Encoding (SKIP_HEADER: none).
    for name in ("User-Agent", "Accept-Encoding"):
        headers.setdefault(name, SKIP_HEADER)
    if client_address:
        previous = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{previous}, {client_address}" if previous else client_address
    return headers


def request_body(request: Request, headers: dict[str, str]) -> object | None:
    """Streamed: the input as a file with its Content-Length when the length is known, chunks when the client
    sent chunked (no Content-Length, so requests' adapter sends them chunked); else no body (and
    `Content-Length: 0` for methods that carry one)."""
    length = request.content_length
    if length:
        headers["Content-Length"] = str(length)
        return request.stream
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return _stream_chunks(request.stream)
    if request.method not in ("GET", "HEAD"):
        headers["Content-Length"] = "0"
    return None


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


def prepared(request: Request, url: str, client_address: str | None) -> requests.PreparedRequest:
    """The upstream request, prepared here rather than by `Session.request`: no environment merge, no session
    headers or cookies, no auth; the URL re-quoted as `PreparedRequest.prepare_url` does."""
    headers = outgoing_headers(request, client_address)
    body = request_body(request, headers)
    upstream = requests.PreparedRequest()
    upstream.method = request.method
    upstream.url = upstream_target(url)
    upstream.headers = CaseInsensitiveDict(headers)
    upstream.body = body
    upstream.hooks = default_hooks()
    return upstream


def send(request: Request, url: str, *, client_address: str | None, connect_timeout: float,
         read_timeout: float) -> requests.Response:
    """The upstream's answer, its body not yet read. Never retried, never redirected."""
    try:
        return upstream_session().send(
            prepared(request, url, client_address), stream=True, allow_redirects=False,
            timeout=(connect_timeout, read_timeout), verify=True, proxies={},
        )
    except requests.Timeout:  # connect or read (a refused connection is a ConnectionError)
        raise UpstreamTimeout() from None
    except (requests.RequestException, HTTPError, OSError):  # refused, reset, closed early, a broken answer
        raise UpstreamUnreachable() from None


def relay(answer: requests.Response, upstream_base: str, on_done: Callable[[int], None]) -> Response:
    """The upstream's status, headers (duplicates kept) and raw bytes (Content-Encoding untouched)."""
    upstream = answer.raw  # urllib3's response: its HTTPHeaderDict keeps several Set-Cookie several
    raw_headers = upstream.headers
    dropped = HOP_BY_HOP | _connection_listed(raw_headers)
    headers = []
    for name, value in raw_headers.items():
        lowered = name.lower()
        if lowered in dropped or not _FIELD_NAME.fullmatch(name):
            continue
        if not value.isprintable() and _CONTROL.search(value):  # NUL, an LF fold, any other control but HTAB
            value = _CONTROL.sub(" ", value).strip(" ")
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
