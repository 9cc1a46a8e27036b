"""Forwarding to the upstream: streamed both ways, bytes untouched, headers cleaned, redirects passed back.

The shortest path through `requests`: its HTTPAdapter (in the process's one `requests.Session`) owns the urllib3
connection pools — one set per thread, TLS verified as requests sets it up — and a request takes a connection
from its thread's pool directly. No PreparedRequest, Session.send, Response, header dicts or cookie jar per
request: the request head is written once as bytes from the WSGI environ, the response head is parsed by our own
reader (no e-mail parser), and http.client's response reads the body (Content-Length, chunked or until close).
The connection goes back to the pool when the body was read to its end, else it is closed.
"""
from __future__ import annotations

import http.client
import http.cookiejar
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Response
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar
from requests.utils import requote_uri
from urllib3 import PoolManager
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError, LocationValueError, NewConnectionError
from urllib3.util import parse_url
from werkzeug.datastructures import Headers
from werkzeug.exceptions import ClientDisconnected
from werkzeug.http import HTTP_STATUS_CODES, remove_entity_headers
from werkzeug.urls import iri_to_uri
from werkzeug.wsgi import get_input_stream

from ..errors import BadRequest, ZenzefiError

CHUNK_BYTES = 64 * 1024
# RFC 9110 §7.6.1 plus the historical ones still seen in the wild.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
OUR_CREDENTIALS = frozenset({"x-access-token", "x-device-id"})
# Recomputed for the upstream connection (X-Forwarded-For gets the client's address appended).
REQUEST_ONLY = frozenset({"host", "content-length", "x-forwarded-for"})
# Idle upstream connections each thread keeps: a thread forwards one request at a time.
THREAD_POOL_MAXSIZE = 2
# Upstream base URLs each thread keeps a pool for.
UPSTREAMS_PER_THREAD = 8
# RFC 9110 §5.1: a field name is a token. RFC 9110 §5.5: CR, LF and NUL (and the other controls but HTAB, which
# gunicorn would refuse with a 500) must not be forwarded in a field value.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# An obsolete line fold ending in CRLF becomes one space, as urllib3 joins it (RFC 9112 §5.2).
_OBSOLETE_FOLD = re.compile(r"(?:(?<![ \t])[ \t]+)?\r\n[ \t]+")
# http.client's limits for a response head.
_MAX_LINE = 65536
_MAX_HEAD_LINES = 100
# Valid response field names seen so far → their lowered form. Bounded, like every cache here, in entries and
# in the length of what it keeps.
_NAMES: dict[str, str] = {}
_NAMES_MAX = 1024
_CACHED_NAME_LENGTH = 64
# A path and a query made only of these characters are what `requests` sends unchanged (see upstream_target).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_PLAIN_QUERY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*")
# Statuses whose answer has no body (werkzeug sends none for them either); after 1xx the connection is not reused.
_NO_BODY_STATUSES = frozenset({204, 304})


class UpstreamUnreachable(ZenzefiError):
    code = 502
    message = "The Zenzefi server cannot be reached right now."


class UpstreamTimeout(ZenzefiError):
    code = 504
    message = "The Zenzefi server did not answer in time."


class UnforwardableHeader(BadRequest):
    message = "A request header cannot be forwarded (control characters or not Latin-1)."


class UpstreamResponse(Response):
    """No default Content-Type: a response carries exactly the headers the upstream sent."""

    default_mimetype = None


class NoCookies(RequestsCookieJar):
    """A cookie jar that never stores anything: one user's upstream `Set-Cookie` can never be sent for another.
    The client's own `Cookie` header is forwarded as sent and upstream `Set-Cookie` headers go back raw."""

    def __init__(self) -> None:
        super().__init__(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    def set_cookie(self, cookie, *args, **kwargs) -> None:
        return None

    def extract_cookies(self, response, request) -> None:
        return None


# --- the response head ---------------------------------------------------------------------------------------


def _head_line(raw: bytes) -> tuple[str, str]:
    """(content, line ending) of one head line. A bare CR (RFC 9112 §2.2) becomes a space and the trailing spaces
    it leaves go (a line of spaces stays one: an empty line would end the head), so `X: a<CR>Set-Cookie: b` stays
    one field."""
    text = raw.decode("latin-1")
    if text.endswith("\r\n"):
        content, ending = text[:-2], "\r\n"
    elif text.endswith("\n"):
        content, ending = text[:-1], "\n"
    else:
        content, ending = text, ""
    if "\r" in content:
        replaced = content.replace("\r", " ")
        content = replaced.rstrip(" \t") or replaced
    return content, ending


def _fields_of(lines: list[bytes]) -> list[tuple[str, str, str]]:
    """The fields of head lines that are not all plain `name: value` CRLF: a bare CR a space, folds joined as
    http.client's parser and urllib3 join them, lines without a colon skipped."""
    fields: list[tuple[str, str, str]] = []
    name: str | None = None
    parts: list[str] = []
    previous_ending = ""
    for raw in lines:
        content, ending = _head_line(raw)
        if content[:1] in (" ", "\t"):  # an obsolete line fold: the previous field goes on
            if name is not None:
                parts.append(previous_ending + content)
            previous_ending = ending
            continue
        if name is not None and (field := _field(name, parts)) is not None:
            fields.append(field)
        name, colon, value = content.partition(":")
        if not colon:
            name = None  # not a field at all: skipped
        else:
            parts = [value.lstrip(" \t")]
        previous_ending = ending
    if name is not None and (field := _field(name, parts)) is not None:
        fields.append(field)
    return fields


def _field(name: str, parts: list[str]) -> tuple[str, str, str] | None:
    """(name, lowered name, value) of a field whose lines were `parts` (value, then ending + folded line each)."""
    if not _FIELD_NAME.fullmatch(name):
        return None  # not a token: cannot be forwarded (gunicorn would answer 500)
    value = "".join(parts).rstrip("\r\n") if len(parts) > 1 else parts[0]
    if "\r\n" in value:
        value = _OBSOLETE_FOLD.sub(" ", value)
    return name, name.lower(), value


class UpstreamAnswer(http.client.HTTPResponse):
    """http.client's response, for its body framing (Content-Length, chunked, until close), with a head reader of
    ours: `fields` in the upstream's order and spelling, duplicates kept, no e-mail parser on the way."""

    fields: list[tuple[str, str, str]]  # (name, lowered name, value)

    def begin(self) -> None:
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            self._read_head()  # a 100 Continue's fields are skipped, as http.client does
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.fields = fields = self._read_head()
        first: dict[str, str] = {}  # the first value of each framing field, as http.client reads them
        for _, lowered, value in fields:
            if lowered in ("transfer-encoding", "content-length", "connection", "keep-alive", "proxy-connection"):
                first.setdefault(lowered, value)
        self.chunked = first.get("transfer-encoding", "").lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._closes(first)
        self.length = None
        length = first.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in _NO_BODY_STATUSES or 100 <= status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True

    def _read_head(self) -> list[tuple[str, str, str]]:
        readline = self.fp.readline
        lines: list[bytes] = []
        while True:
            raw = readline(_MAX_LINE + 1)
            if len(raw) > _MAX_LINE:
                raise http.client.LineTooLong("header line")
            if raw in (b"\r\n", b"\n", b""):
                break
            lines.append(raw)
            if len(lines) > _MAX_HEAD_LINES:
                raise http.client.HTTPException(f"got more than {_MAX_HEAD_LINES} headers")
        if not lines:
            return []
        block = b"".join(lines).decode("latin-1")
        count = len(lines)
        if (block.count("\r\n") != count or block.count("\r") != count or block.count("\n") != count
                or "\n " in block or "\n\t" in block or block[0] in " \t"):
            return _fields_of(lines)  # a bare CR or LF, a line fold, the head cut short: line by line
        # Every line is `name: value` CRLF (or no field at all).
        fields = []
        names = _NAMES
        for line in block[:-2].split("\r\n"):
            name, colon, value = line.partition(":")
            if not colon:
                continue  # not a field at all: skipped
            lowered = names.get(name)
            if lowered is None:
                if not _FIELD_NAME.fullmatch(name):
                    continue  # a name that is no token (gunicorn would answer 500): dropped
                lowered = name.lower()
                if len(names) < _NAMES_MAX and len(name) <= _CACHED_NAME_LENGTH:
                    names[name] = lowered
            fields.append((name, lowered, value.lstrip(" \t")))
        return fields

    def _closes(self, first: dict[str, str]) -> bool:
        """http.client's `_check_close` on the fields just read."""
        connection = first.get("connection", "").lower()
        if self.version == 11:
            return "close" in connection
        if first.get("keep-alive") or "keep-alive" in connection:
            return False
        return "keep-alive" not in first.get("proxy-connection", "").lower()


# --- the upstream: requests' adapter and this thread's pool --------------------------------------------------


class Upstream:
    """This thread's connection pool for one upstream base URL, and what never changes for it: the Host header
    and the path prefix of every request target."""

    __slots__ = ("base", "pool", "host", "prefix", "plain")

    def __init__(self, base: str, pool: HTTPConnectionPool):
        self.base = base
        self.pool = pool
        self.host = _host_header(pool)
        parts = urlsplit(base)
        self.prefix = parts.path
        # A base that requests would re-quote (or with a query) takes the general path for every request.
        self.plain = (not parts.query and not parts.fragment and "#" not in base and "?" not in base
                      and "/." not in self.prefix + "/" and bool(_PLAIN_PATH.fullmatch(self.prefix)))

    def target(self, raw: str, query: str) -> str:
        """The request target: the path and query `requests` would send for `<base>/<raw>?<query>`."""
        if self.plain and _PLAIN_PATH.fullmatch(raw) and "/." not in f"/{raw}/" and _PLAIN_QUERY.fullmatch(query):
            return f"{self.prefix}/{raw}?{query}" if query else f"{self.prefix}/{raw}"  # nothing to re-quote
        return path_url(upstream_target(f"{self.base}/{raw}?{query}" if query else f"{self.base}/{raw}"))


def _host_header(pool: HTTPConnectionPool) -> str:
    """The Host header http.client would write for the pool's connections."""
    host = pool.host
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        host = host.encode("idna").decode("ascii")
    if ":" in host:  # IPv6, in brackets and without a zone
        host = f"[{host.partition('%')[0]}]"
    default_port = 443 if pool.scheme == "https" else 80
    return host if pool.port in (None, default_port) else f"{host}:{pool.port}"


class ForwardingAdapter(HTTPAdapter):
    """requests' adapter, used for its connection pools only: per thread (gunicorn's threads never wait on each
    other's pool locks), made with requests' TLS settings (`verify=True`), never retrying, never blocking (a
    connection beyond the pool's size is opened, then closed)."""

    def _thread_local(self) -> threading.local:
        return self.__dict__.setdefault("_local", threading.local())

    def _thread_pools(self) -> PoolManager:
        """This thread's connection pools."""
        local = self._thread_local()
        pools = getattr(local, "pools", None)
        if pools is None:
            pools = local.pools = PoolManager(num_pools=self._pool_connections, maxsize=THREAD_POOL_MAXSIZE,
                                              block=False)
        return pools

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        if proxies:
            return super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        try:
            host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
            return self._thread_pools().connection_from_host(**host_params, pool_kwargs=pool_kwargs)
        except (ValueError, LocationValueError) as error:
            raise requests.exceptions.InvalidURL(error, request=request) from None

    def upstream(self, base: str) -> Upstream:
        """This thread's pool for `base`, made by requests' PoolManager once per thread and kept here (a pool the
        manager lets go of stays usable; one somebody closed is replaced)."""
        local = self._thread_local()
        upstreams = getattr(local, "upstreams", None)
        if upstreams is None:
            upstreams = local.upstreams = {}
        found = upstreams.get(base)
        if found is None or found.pool.pool is None:
            request = requests.PreparedRequest()
            request.prepare_url(base + "/", None)
            if len(upstreams) >= UPSTREAMS_PER_THREAD:  # one configured upstream in production; tests use many
                upstreams.clear()
            found = upstreams[base] = Upstream(base, self.get_connection_with_tls_context(request, verify=True))
        return found


class ForwardingSession(requests.Session):
    """The process's session: its adapter is looked up once, not per request."""

    adapter: ForwardingAdapter


def _new_session() -> ForwardingSession:
    session = ForwardingSession()
    # The upstream is one fixed, configured URL: no proxy from HTTP(S)_PROXY/NO_PROXY, no .netrc credentials,
    # no CA bundle from REQUESTS_CA_BUNDLE.
    session.trust_env = False
    session.headers.clear()  # no User-Agent, Accept or Accept-Encoding the client did not send
    session.cookies = NoCookies()
    adapter = session.adapter = ForwardingAdapter(pool_connections=4, pool_maxsize=THREAD_POOL_MAXSIZE, max_retries=0,
                                                  pool_block=False)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


_session: ForwardingSession | None = None
_session_lock = threading.Lock()


def upstream_session() -> ForwardingSession:
    """The process's one session, shared by every thread (made on first use, so in the worker)."""
    global _session
    if _session is None:
        with _session_lock:
            if _session is None:
                _session = _new_session()
    return _session


def upstream_adapter() -> ForwardingAdapter:
    session = _session
    return (session if session is not None else upstream_session()).adapter


def _forget_session_after_fork() -> None:
    """Connections must not cross fork(): a child makes its own session."""
    global _session, _session_lock
    _session, _session_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_session_after_fork)


# --- the request ---------------------------------------------------------------------------------------------

# WSGI environ key → the header name forwarded upstream ("" = not a header, or one we never forward), learnt once.
_HEADER_NAMES: dict[str, str] = {}
_HEADER_NAMES_MAX = 1024


def _header_name(key: str) -> str:
    """As werkzeug's EnvironHeaders names it, or "" when it is not forwarded as sent."""
    if key.startswith("HTTP_") and key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        name = key[5:].replace("_", "-").title()
    elif key == "CONTENT_TYPE":
        name = "Content-Type"
    else:
        return ""
    lowered = name.lower()
    if lowered in HOP_BY_HOP or lowered in OUR_CREDENTIALS or lowered in REQUEST_ONLY:
        return ""
    if not _FIELD_NAME.fullmatch(name):
        return ""
    return name


def _connection_listed(values: list[str]) -> set[str]:
    listed = set()
    for value in values:
        listed.update(name.strip().lower() for name in value.split(",") if name.strip())
    return listed


def request_head(environ: dict[str, Any], method: str, target: str, host: str, client_address: str | None,
                 framing: str | None) -> bytes:
    """The request line and fields for the upstream: the client's end-to-end fields (hop-by-hop ones, those its
    `Connection` lists and our credentials dropped), Host, X-Forwarded-For and the body's framing."""
    connection = environ.get("HTTP_CONNECTION")
    listed = _connection_listed([connection]) if connection else None
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    names = _HEADER_NAMES
    for key, value in environ.items():
        name = names.get(key)
        if name is None:
            name = _header_name(key)
            if len(names) < _HEADER_NAMES_MAX and len(key) <= _CACHED_NAME_LENGTH:
                names[key] = name
        if not name or (listed and name.lower() in listed) or (not value and key == "CONTENT_TYPE"):
            continue
        lines.append(f"{name}: {value}")
    previous = environ.get("HTTP_X_FORWARDED_FOR")
    if client_address:  # like every proxy, append the address this connection came from
        lines.append(f"X-Forwarded-For: {previous}, {client_address}" if previous else
                     f"X-Forwarded-For: {client_address}")
    elif previous is not None and not (listed and "x-forwarded-for" in listed):
        lines.append(f"X-Forwarded-For: {previous}")
    if framing:
        lines.append(framing)
    head = "\r\n".join(lines) + "\r\n\r\n"
    # A CR, LF or NUL inside a value would make another field upstream (a WSGI server never passes one).
    ends = len(lines) + 1
    if head.count("\n") != ends or head.count("\r") != ends or "\0" in head:
        raise UnforwardableHeader()
    try:
        return head.encode("latin-1")
    except UnicodeEncodeError:
        raise UnforwardableHeader() from None


class _Body:
    """The request body, streamed: `length` bytes, or chunks until the input ends when the client sent chunked."""

    __slots__ = ("stream", "length")

    def __init__(self, stream, length: int | None):
        self.stream = stream
        self.length = length

    def send(self, sock: socket.socket, head: bytes) -> None:
        read = self.stream.read
        if self.length is None:  # chunked: werkzeug's stream raises RequestEntityTooLarge past the limit
            sock.sendall(head)
            while chunk := read(CHUNK_BYTES):
                sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
            return
        left = self.length
        pending = head  # the head goes out with the first piece of the body
        while left:
            chunk = read(min(left, CHUNK_BYTES))
            if not chunk:
                raise ClientDisconnected()  # the upstream must never take a short body for a whole one
            left -= len(chunk)
            sock.sendall(pending + chunk if pending else chunk)
            pending = b""
        if pending:
            sock.sendall(pending)


def request_body(environ: dict[str, Any], method: str, length: int, max_length: int) -> tuple[_Body | None, str | None]:
    """(body, framing field): the input with its Content-Length when the length is known, chunks when the client
    sent chunked (no Content-Length), else no body (and `Content-Length: 0` for methods that carry one)."""
    if length:
        return _Body(get_input_stream(environ, max_content_length=max_length), length), f"Content-Length: {length}"
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return _Body(get_input_stream(environ, max_content_length=max_length), None), "Transfer-Encoding: chunked"
    if method not in ("GET", "HEAD"):
        return None, "Content-Length: 0"
    return None, None


def upstream_target(url: str) -> str:
    """The URL normalised and re-quoted as `requests` prepares one: illegal characters percent-encoded, escapes of
    unreserved characters decoded (`%41` → `A`), everything else untouched."""
    return requote_uri(parse_url(url).url)


def path_url(url: str) -> str:
    """The request target `requests` sends for a prepared URL (`PreparedRequest.path_url`)."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def rewrite_location(location: str, upstream_base: str) -> str:
    """`<upstream origin>/a/b?q=1` → `/a/b?q=1`; anything else is left alone."""
    target, origin = urlsplit(location), urlsplit(upstream_base)
    if target.scheme.lower() == origin.scheme.lower() and target.netloc.lower() == origin.netloc.lower():
        path = target.path or "/"
        return path + (f"?{target.query}" if target.query else "") + (f"#{target.fragment}" if target.fragment else "")
    return location


def send(environ: dict[str, Any], base: str, raw: str, query: str, *, method: str, length: int, max_length: int,
         client_address: str | None, connect_timeout: float, read_timeout: float,
         on_done: Callable[[int], None]) -> Relayed:
    """The upstream's answer, its head read and its body not yet. Never retried, never redirected."""
    try:
        upstream = upstream_adapter().upstream(base)
    except (requests.RequestException, HTTPError, ValueError):  # a base URL that is no URL
        raise UpstreamUnreachable() from None
    body, framing = request_body(environ, method, length, max_length)
    head = request_head(environ, method, upstream.target(raw, query), upstream.host, client_address, framing)
    pool = upstream.pool
    try:
        conn = pool._get_conn()
    except HTTPError:
        raise UpstreamUnreachable() from None
    try:
        sock = conn.sock
        if sock is None:
            conn.timeout = connect_timeout
            conn.connect()
            sock = conn.sock
        if sock.gettimeout() != read_timeout:  # between any two bytes, both ways, once connected
            sock.settimeout(read_timeout)
        sent_whole = True
        try:
            if body is None:
                sock.sendall(head)
            else:
                body.send(sock, head)
        except (BrokenPipeError, ConnectionResetError):
            sent_whole = False  # the upstream may have answered and closed (an early 413): its answer is still read
        answer = UpstreamAnswer(sock, method=method)
        answer.begin()
        if not sent_whole:
            answer.will_close = True  # never reused: the rest of the request was never sent
    except BaseException as error:
        conn.close()
        pool._put_conn(None)
        if isinstance(error, NewConnectionError):  # refused, unresolvable (a subclass of the connect timeout)
            raise UpstreamUnreachable() from None
        if isinstance(error, (ConnectTimeoutError, TimeoutError)):  # connect or read
            raise UpstreamTimeout() from None
        if isinstance(error, (HTTPError, OSError, http.client.HTTPException)):  # reset, closed early, a broken answer
            raise UpstreamUnreachable() from None
        raise
    return Relayed(answer, conn, pool, base, method, on_done)


# --- the answer ----------------------------------------------------------------------------------------------

def _status_line(status: int) -> str:
    """werkzeug's status line for a code (`404 NOT FOUND`), as a Response with that status sends it."""
    phrase = HTTP_STATUS_CODES.get(status)
    return f"{status} {phrase.upper()}" if phrase else f"{status} UNKNOWN"


class Relayed:
    """The upstream's answer on its way back: its status, its fields cleaned (duplicates kept, Content-Encoding
    untouched) and its raw body bytes streamed from the connection. A WSGI application itself (the fast path
    calls it) or, for Flask's route, a werkzeug Response (`response()`). Either way `close()` ends it once: the
    connection goes back to the pool if the body was read to its end, else it is closed; then `on_done(bytes)`."""

    __slots__ = ("status_code", "headers", "_answer", "_conn", "_pool", "_on_done", "_sent", "_finished",
                 "_complete", "_no_body")

    def __init__(self, answer: UpstreamAnswer, conn, pool: HTTPConnectionPool, upstream_base: str, method: str,
                 on_done: Callable[[int], None]):
        self._answer, self._conn, self._pool, self._on_done = answer, conn, pool, on_done
        self._sent, self._finished = 0, False
        status = self.status_code = answer.status
        self._no_body = method == "HEAD" or status in _NO_BODY_STATUSES or 100 <= status < 200
        self._complete = method == "HEAD" or status in _NO_BODY_STATUSES  # nothing more on the wire
        self.headers = _client_headers(answer, status, upstream_base)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Relayed:
        start_response(_status_line(self.status_code), self.headers)
        return self

    def __iter__(self) -> Iterator[bytes]:
        if self._no_body:
            return
        answer = self._answer
        read1 = answer.read1
        try:
            while answer.fp is not None:
                chunk = read1(CHUNK_BYTES)
                if not chunk:
                    break
                self._sent += len(chunk)
                yield chunk
            if answer.length:  # the upstream closed before its Content-Length: never pass a short body as whole
                raise http.client.IncompleteRead(b"", answer.length)
            self._complete = True
        finally:
            self.close()

    def close(self) -> None:
        if self._finished:
            return
        self._finished = True
        answer = self._answer
        answer.close()  # its file only: the socket stays with the connection
        if self._complete and not answer.will_close:
            self._pool._put_conn(self._conn)
        else:
            self._conn.close()
            self._pool._put_conn(None)
        self._on_done(self._sent)

    def response(self) -> UpstreamResponse:
        response = UpstreamResponse(iter(self), status=self.status_code, headers=self.headers,
                                    direct_passthrough=True)
        response.call_on_close(self.close)  # also when the server never iterates the body (HEAD, a client gone)
        return response


def _client_headers(answer: UpstreamAnswer, status: int, upstream_base: str) -> list[tuple[str, str]]:
    """The upstream's fields for the client, in its order: hop-by-hop ones and those its `Connection` lists dropped,
    control characters spaces, the upstream's origin cut off `Location`; then what werkzeug's Response would do to
    them (IRIs in Location and Content-Location quoted, one of each; no Content-Length with 1xx, 204 or chunked;
    a 304 without entity fields), so the fast path and Flask's route send the same."""
    fields = answer.fields
    connection = [value for _, lowered, value in fields if lowered == "connection"]
    dropped = HOP_BY_HOP | _connection_listed(connection) if connection else HOP_BY_HOP
    if answer.chunked or 100 <= status < 200 or status == 204:  # RFC 9112 §6.3: Transfer-Encoding wins
        dropped = dropped | {"content-length"}
    headers: list[tuple[str, str]] = []
    located: dict[str, int] = {}
    for name, lowered, value in fields:
        if lowered in dropped:
            continue
        if not value.isprintable() and _CONTROL.search(value):  # NUL, an LF fold, any other control but HTAB
            value = _CONTROL.sub(" ", value).strip(" ")
        if lowered == "location" or lowered == "content-location":
            value = iri_to_uri(rewrite_location(value, upstream_base) if lowered == "location" else value)
            if lowered in located:  # werkzeug keeps one, in the first one's place, with the last one's value
                headers[located[lowered]] = (headers[located[lowered]][0], value)
                continue
            located[lowered] = len(headers)
        headers.append((name, value))
    if status == 304:
        kept = Headers(headers)
        remove_entity_headers(kept)
        headers = kept.to_wsgi_list()
    return headers
