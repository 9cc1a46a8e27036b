"""Forwarding fidelity (SPEC §3.6 "Forwarding"): bytes, queries, bodies, cookies, header hygiene, redirects,
statuses — checked on both sides: what the client got, and what the upstream's own log says it received."""
from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from urllib.parse import unquote

import pytest

from tests.fixtures.proxy import (
    CLIENT_ADDRESS,
    DEVICE_A,
    DEVICE_B,
    Reply,
    closed_port,
    flask_route_only,
    gzipped,
    pattern,
    streamed,
)

HOP_BY_HOP_REQUEST = [
    ("Connection", "keep-alive, X-Secret, upgrade"),
    ("Keep-Alive", "timeout=5, max=100"),
    ("TE", "trailers, deflate"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),  # (a websocket upgrade is refused by Werkzeug routing with 400 before any check)
    ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
    ("Proxy-Connection", "keep-alive"),
    ("X-Secret", "only-for-the-next-hop"),
]
HOP_BY_HOP_RESPONSE = [
    ("Connection", "X-Secret"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("Proxy-Authenticate", "Basic realm=upstream"),
    ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
    ("Proxy-Connection", "keep-alive"),
    ("X-Secret", "only-for-the-next-hop"),
]


# --- bodies ---------------------------------------------------------------------------------------


def test_response_body_is_byte_exact(env, token, upstream):
    body = pattern(300_000)
    upstream.reply("/blob", Reply(headers=[("Content-Type", "application/octet-stream")], body=body))
    response = env.get("blob", token=token)
    assert response.status_code == 200
    assert response.get_data() == body
    assert response.headers["Content-Length"] == str(len(body))
    assert response.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_gzip_body_passes_through_untouched(env, token, upstream, chunked):
    plain = b"certificate list " * 4000
    compressed = gzipped(plain)
    upstream.reply("/list", Reply(headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
                                           ("Vary", "Accept-Encoding")], body=compressed, chunked=chunked))
    response = env.get("list", token=token, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.get_data() == compressed  # the raw compressed bytes, not the decoded text
    assert response.headers["Content-Encoding"] == "gzip"
    if chunked:
        assert "Content-Length" not in response.headers  # none invented from the decoded size
    else:
        assert response.headers["Content-Length"] == str(len(compressed))
    assert upstream.last().header("Accept-Encoding") == "gzip"


def test_a_big_body_is_streamed_not_buffered(env, token, upstream):
    """The first bytes reach the client while the upstream is still holding back the rest."""
    gate = threading.Event()
    size = 8 * 1024 * 1024
    upstream.reply("/export", Reply(headers=[("Content-Type", "application/octet-stream")], stream_bytes=size,
                                    chunk_size=64 * 1024, gate=gate))
    response = env.get("export", token=token, buffered=False)
    try:
        assert response.status_code == 200 and response.headers["Content-Length"] == str(size)
        chunks = iter(response.response)
        first = next(chunks)
        while not first:
            first = next(chunks)
        assert not gate.is_set() and 0 < len(first) <= 64 * 1024
        gate.set()
        digest, received = hashlib.sha256(first), len(first)
        for chunk in chunks:
            digest.update(chunk)
            received += len(chunk)
    finally:
        gate.set()
        response.close()
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(streamed(size)).hexdigest()


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_request_bodies_are_byte_exact(env, token, upstream, method):
    body = pattern(70_000, offset=3) + b"\x00\r\n\r\n--boundary--\xff"
    response = env.call(method, "certificates/import?mode=replace", token=token, data=body,
                        headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200
    received = upstream.last()
    assert received.method == method and received.target == "/certificates/import?mode=replace"
    assert received.body == body
    assert received.header("Content-Length") == str(len(body))
    assert received.header("Content-Type") == "application/octet-stream"


def test_a_chunked_request_body_is_streamed_byte_exact(env, token, upstream):
    """As gunicorn hands it over: no Content-Length, the body ends with the input (wsgi.input_terminated)."""
    body = pattern(200_000, offset=11)
    response = env.call("POST", "certificates/import", token=token, input_stream=io.BytesIO(body),
                        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/x-pem-file"},
                        environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 200
    assert upstream.last().body == body


def test_empty_request_bodies_stay_empty(env, token, upstream):
    assert env.call("POST", "certificates/remove", token=token).status_code == 200
    assert upstream.last().body == b""
    assert env.get("certificates/filter", token=token).status_code == 200
    assert upstream.last().body == b"" and upstream.last().header("Transfer-Encoding") is None


# --- query strings --------------------------------------------------------------------------------


@pytest.mark.parametrize("query", [
    "a=1&a=2&b=",
    "a=1&a=2&b=&c=%20x+y&d=%2F&e=%26%3D&a=3",
    "flag&flag&=x&&",
    "q=%D0%BF%D1%80%D0%B8%D0%B2%D0%B5%D1%82&sort=-date",
])
def test_query_strings_arrive_exactly_as_sent(env, token, upstream, query):
    assert env.get(f"certificates/filter?{query}", token=token).status_code == 200
    assert upstream.last().target == f"/certificates/filter?{query}"


def test_query_strings_needing_normalisation_keep_their_meaning(env, token, upstream):
    query = "x=%2e%2e%2fadmin&pct=100%25&curly={a}"
    assert env.get(f"certificates/filter?{query}", token=token).status_code == 200
    assert unquote(upstream.last().query) == unquote(query)


def test_no_query_means_no_question_mark(env, token, upstream):
    env.get("certificates/filter", token=token)
    assert upstream.last().target == "/certificates/filter"


# --- cookies and credentials ----------------------------------------------------------------------


def test_several_set_cookie_headers_stay_several(env, token, upstream):
    cookies = ["JSESSIONID=abc123; Path=/; HttpOnly", "XSRF-TOKEN=x%2Cy; Path=/",
               "lang=en; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/"]
    upstream.reply("/login", Reply(headers=[("Content-Type", "text/plain")] + [("Set-Cookie", c) for c in cookies]))
    response = env.call("POST", "login", token=token, data=b"user=a&password=b")
    assert response.headers.getlist("Set-Cookie") == cookies


def test_the_clients_authorization_and_cookie_reach_the_upstream(env, token, upstream):
    headers = {"Authorization": "Bearer upstream-app-session-token", "Cookie": "JSESSIONID=abc123; lang=en"}
    assert env.get("certificates/filter", token=token, headers=headers).status_code == 200
    received = upstream.last()
    assert received.header("Authorization") == "Bearer upstream-app-session-token"
    assert received.header("Cookie") == "JSESSIONID=abc123; lang=en"


def test_upstream_cookies_are_never_replayed_for_someone_else(env, upstream):
    """The pooled upstream session must not keep a cookie jar shared between users."""
    upstream.reply("/login", Reply(headers=[("Set-Cookie", "JSESSIONID=user-a-session; Path=/")]))
    first, second = env.buy(), env.buy()
    assert env.call("POST", "login", token=first).status_code == 200
    assert env.get("certificates/filter", token=second, device=DEVICE_B).status_code == 200
    assert env.get("certificates/filter", token=first).status_code == 200
    assert [r.header("Cookie") for r in upstream.log] == [None, None, None]


def test_our_credentials_never_reach_the_upstream(env, token, upstream):
    assert env.call("POST", "certificates/import", token=token, data=b"{}").status_code == 200
    received = upstream.last()
    assert received.header("X-Access-Token") is None and received.header("X-Device-ID") is None
    everything = received.target + "\n" + "\n".join(f"{k}: {v}" for k, v in received.headers)
    assert token["token"] not in everything and DEVICE_A not in everything


def test_connection_cannot_be_used_to_smuggle_our_credentials_through(env, token, upstream):
    response = env.get("certificates/filter", token=token,
                       headers={"Connection": "X-Access-Token, X-Device-ID, X-Forwarded-For"})
    assert response.status_code == 200
    received = upstream.last()
    assert received.header("X-Access-Token") is None and received.header("X-Device-ID") is None
    assert received.header("X-Forwarded-For") == CLIENT_ADDRESS


# --- header hygiene -------------------------------------------------------------------------------


def test_hop_by_hop_request_headers_are_stripped(env, token, upstream):
    headers = HOP_BY_HOP_REQUEST + [("Transfer-Encoding", "gzip"), ("X-End-To-End", "kept")]
    assert env.get("certificates/filter", token=token, headers=headers).status_code == 200
    received = upstream.last()
    for name in ("Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization", "Proxy-Connection", "X-Secret",
                 "Transfer-Encoding"):
        assert received.header(name) is None, (name, received.headers)
    # The upstream connection may carry its own Connection header, never the client's.
    for value in received.all("Connection"):
        assert "x-secret" not in value.lower() and "upgrade" not in value.lower()
    assert received.header("X-End-To-End") == "kept"


def test_hop_by_hop_response_headers_are_stripped(env, token, upstream):
    upstream.reply("/page", Reply(headers=[("Content-Type", "text/html"), *HOP_BY_HOP_RESPONSE,
                                           ("X-End-To-End", "kept")], body=b"<html>ok</html>", chunked=True))
    response = env.get("page", token=token)
    assert response.status_code == 200 and response.get_data() == b"<html>ok</html>"
    for name, _ in HOP_BY_HOP_RESPONSE + [("Transfer-Encoding", "")]:
        assert name not in response.headers, (name, dict(response.headers))
    assert response.headers["X-End-To-End"] == "kept"


# Upstream header fields that a lenient parser would read as more than one field, or that a server must not send
# (RFC 9112 §2.2, RFC 9110 §5.5): (name, value as written on the wire, value the client gets).
BROKEN_RESPONSE_HEADERS = {
    "bare-cr": ("X-Note", "a\rSet-Cookie: evil=1", "a Set-Cookie: evil=1"),
    "bare-cr-location": ("X-Note", "b\rLocation: https://evil.example/", "b Location: https://evil.example/"),
    "bare-cr-at-the-end": ("X-Note", "c\r", "c"),
    "nul": ("X-Note", "d\x00Set-Cookie: evil=1", "d Set-Cookie: evil=1"),
    "bare-lf-fold": ("X-Note", "e\n Set-Cookie: evil=1", "e  Set-Cookie: evil=1"),
    "crlf-fold": ("X-Note", "f\r\n Set-Cookie: evil=1", "f Set-Cookie: evil=1"),
    "other-controls": ("X-Note", "g\x01\x0b\x0c\x1b\x7fh", "g     h"),
    "tab-stays": ("X-Note", "i\tj", "i\tj"),
    "latin-1-stays": ("X-Note", "caf\xe9", "caf\xe9"),
}


@pytest.mark.parametrize("via", ["fast path", "Flask route"])
@pytest.mark.parametrize("name, sent, shown", [pytest.param(*case, id=key)
                                               for key, case in BROKEN_RESPONSE_HEADERS.items()])
def test_control_characters_in_upstream_headers_never_make_a_second_header(env, token, upstream, via, name, sent,
                                                                          shown):
    """A bare CR (or NUL, an LF fold, any other control) inside an upstream header is replaced with a space: the
    client gets exactly the fields the upstream meant, never an injected `Set-Cookie` or `Location`."""
    upstream.reply("/page", Reply(headers=[("Content-Type", "text/plain"), (name, sent), ("X-After", "kept")],
                                  body=b"page"))
    with flask_route_only(env) if via == "Flask route" else contextlib.nullcontext():
        response = env.get("page", token=token)
    assert response.status_code == 200 and response.get_data() == b"page"
    assert [key for key, _ in response.headers if key.lower() not in ("content-length",)] == [
        "Content-Type", name, "X-After"]
    assert response.headers[name] == shown
    assert "Set-Cookie" not in response.headers and "Location" not in response.headers
    assert response.headers["X-After"] == "kept"


def test_upstream_header_fields_with_invalid_names_are_dropped(env, token, upstream):
    """A name that is not an RFC 9110 token cannot be forwarded (gunicorn would answer 500): the field is dropped."""
    upstream.reply("/page", Reply(headers=[("Content-Type", "text/plain"), ("X(Bad)", "1"), ('X"Quoted"', "2"),
                                           ("X-Good", "3")], body=b"page"))
    response = env.get("page", token=token)
    assert response.status_code == 200 and response.get_data() == b"page"
    names = [key for key, _ in response.headers]
    assert "X(Bad)" not in names and 'X"Quoted"' not in names and response.headers["X-Good"] == "3"


def test_host_is_the_upstreams(env, token, upstream):
    env.get("certificates/filter", token=token, headers={"Host": "evil.example"})
    assert upstream.last().header("Host") == f"127.0.0.1:{upstream.port}"


def test_x_forwarded_for_gets_the_client_address(env, token, upstream):
    env.get("certificates/filter", token=token)
    assert upstream.last().header("X-Forwarded-For") == CLIENT_ADDRESS
    env.get("certificates/filter", token=token, headers={"X-Forwarded-For": "203.0.113.1, 10.0.0.7"})
    assert upstream.last().header("X-Forwarded-For") == f"203.0.113.1, 10.0.0.7, {CLIENT_ADDRESS}"


def test_behind_a_trusted_proxy_the_client_is_the_forwarded_address(make_env, upstream):
    env = make_env(TRUSTED_PROXY_HOPS=1)
    token = env.buy()
    response = env.get("certificates/filter", token=token, headers={"X-Forwarded-For": "203.0.113.7"},
                       environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert response.status_code == 200
    assert env.sessions(token)[0].ip_address == "203.0.113.7"
    assert upstream.last().header("X-Forwarded-For").startswith("203.0.113.7")


# --- redirects, statuses, content types ------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_to_the_upstream_origin_are_passed_back_as_paths(env, token, upstream, status):
    upstream.reply("/start", Reply(status=status, headers=[("Location", f"{upstream.origin}/a/b?q=1")], body=b""))
    response = env.get("start", token=token)
    assert response.status_code == status
    assert response.headers["Location"] == "/a/b?q=1"
    assert [r.target for r in upstream.log] == ["/start"]  # never followed


@pytest.mark.parametrize("location", [
    "https://login.example.com/sso?return=/a",
    "http://127.0.0.1:{other}/a/b",
    "/relative/path?x=1",
    "other/relative",
], ids=["foreign-host", "same-host-other-port", "absolute-path", "relative"])
def test_other_locations_are_left_alone(env, token, upstream, location):
    location = location.format(other=closed_port())
    upstream.reply("/start", Reply(status=302, headers=[("Location", location)], body=b""))
    response = env.get("start", token=token)
    assert response.status_code == 302
    assert response.headers["Location"] == location
    assert len(upstream.log) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 413, 418, 429, 500, 502, 503, 504])
def test_upstream_error_statuses_pass_through_unchanged(env, token, upstream, status):
    body = f"<html>upstream says {status}</html>".encode()
    upstream.reply("/x", Reply(status=status, headers=[("Content-Type", "text/html"), ("X-Upstream", "1")],
                               body=body))
    response = env.get("x", token=token)
    assert response.status_code == status
    assert response.get_data() == body
    assert response.headers["Content-Type"] == "text/html" and response.headers["X-Upstream"] == "1"


def test_no_content_type_is_invented(env, token, upstream):
    upstream.reply("/raw", Reply(headers=[], body=b"\x00\x01raw"))
    upstream.reply("/empty", Reply(status=204, headers=[], body=b""))
    response = env.get("raw", token=token)
    assert response.get_data() == b"\x00\x01raw" and "Content-Type" not in response.headers
    response = env.get("empty", token=token)
    assert response.status_code == 204 and "Content-Type" not in response.headers and response.get_data() == b""


def test_head_keeps_the_upstreams_content_length(env, token, upstream):
    upstream.reply("/file", Reply(headers=[("Content-Type", "application/pdf")], body=b"%PDF" * 1000))
    response = env.call("HEAD", "file", token=token)
    assert response.status_code == 200 and response.get_data() == b""
    assert response.headers["Content-Length"] == "4000"
    assert upstream.last().method == "HEAD"


# --- upstream failures (SPEC: 502 / 504 JSON, never starting the clock) ----------------------------


def test_upstream_down_is_502_json_and_does_not_activate(make_env):
    env = make_env(ZENZEFI_UPSTREAM_URL=f"http://127.0.0.1:{closed_port()}")
    token = env.buy()
    response = env.get("certificates/filter", token=token)
    assert response.status_code == 502 and response.mimetype == "application/json"
    body = response.get_json()
    assert body["code"] == 502 and body["status"] == "Bad Gateway" and len(body["message"]) <= 200
    assert env.token_row(token).activated_at is None
    assert env.status(token).get_json()["status"] == "ready"
    assert env.events("token.activated", token) == []


def test_upstream_slower_than_the_read_timeout_is_504_json_and_does_not_activate(make_env, upstream):
    import time

    env = make_env(PROXY_READ_TIMEOUT=0.5)
    token = env.buy()
    upstream.reply("/slow", Reply(delay=2.0))
    started = time.monotonic()
    response = env.get("slow", token=token)
    elapsed = time.monotonic() - started
    assert response.status_code == 504 and response.mimetype == "application/json"
    body = response.get_json()
    assert body["code"] == 504 and body["status"] == "Gateway Timeout" and len(body["message"]) <= 200
    assert 0.4 < elapsed < 1.9
    assert env.token_row(token).activated_at is None
    assert env.events("token.activated", token) == []
    # The clock starts with the first answered request, not the timed-out one.
    assert env.get("fast", token=token).status_code == 200
    assert env.token_row(token).activated_at is not None


def test_body_over_max_content_length_is_413_and_reaches_nobody(make_env, upstream):
    env = make_env(MAX_CONTENT_LENGTH=4096)
    token = env.buy()
    response = env.call("POST", "certificates/import", token=token, data=pattern(4097))
    body = response.get_json()
    assert response.status_code == 413 and body["code"] == 413 and body["status"] == "Request Entity Too Large"
    assert upstream.log == []
    assert env.token_row(token).activated_at is None
    assert env.call("POST", "certificates/import", token=token, data=pattern(4096)).status_code == 200
    assert len(upstream.last().body) == 4096


def test_a_chunked_body_over_max_content_length_is_413_and_no_request_completes_upstream(make_env, upstream):
    env = make_env(MAX_CONTENT_LENGTH=4096)
    token = env.buy()
    response = env.call("POST", "certificates/import", token=token, input_stream=io.BytesIO(pattern(50_000)),
                        headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413 and response.get_json()["code"] == 413
    assert upstream.log == []
    assert env.token_row(token).activated_at is None


def test_no_request_headers_are_invented(env, token, upstream):
    """The upstream sees the client's end-to-end headers plus Host and X-Forwarded-For, nothing else of ours."""
    assert env.get("certificates/filter", token=token, headers={"X-Client": "1"}).status_code == 200
    received = upstream.last()
    sent_by_the_test_client = {"user-agent", "x-client"}
    ours = {"host", "x-forwarded-for", "connection"}  # Connection: the upstream hop's own, if any
    assert received.names() - ours == sent_by_the_test_client, received.headers
    assert received.header("User-Agent").startswith("Werkzeug/")  # the client's, not python-requests'


@pytest.fixture
def unanswered_port():
    """A loopback listener whose accept queue is full: new connects get no SYN-ACK and time out."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=1)
    yield port
    queued.close()
    listener.close()


def test_upstream_connect_timeout_is_504_json_and_does_not_activate(make_env, unanswered_port):
    env = make_env(ZENZEFI_UPSTREAM_URL=f"http://127.0.0.1:{unanswered_port}", PROXY_CONNECT_TIMEOUT=0.3)
    token = env.buy()
    response = env.get("certificates/filter", token=token)
    assert response.status_code == 504 and response.get_json()["code"] == 504
    assert env.token_row(token).activated_at is None
