"""The tight forwarder (issue 15 item 4): requests' adapter pools used directly, the request head written once,
our own response-head reader and a WSGI answer of our own on the fast path — with every guarantee of the naive
one: keep-alive connections reused only when an answer was read to its end, bodies never passed short as whole,
URLs quoted as `requests` quotes them, the same answers as Flask's route, TLS verified."""
from __future__ import annotations

import datetime
import http.client
import ipaddress
import socket
import ssl
import string
import threading
import time
from collections.abc import Iterator

import pytest
import requests
import urllib3.response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from tests.fixtures.proxy import ProxyEnv, Reply, assert_error, flask_activity, flask_route_only, pattern
from zenzefi_backend.proxy import forwarding

# --- the shortest path: nothing of requests' per-request machinery ---------------------------------------------


def test_a_warm_request_builds_no_requests_objects_and_runs_no_email_parser(env, token, upstream, monkeypatch):
    assert env.get("certificates/filter", token=token).status_code == 200  # this thread's pool is made now

    def forbidden(*_args, **_kwargs):
        raise AssertionError("not on the warm path")

    # (http.client's own head parser runs in HTTPResponse.begin and HTTPConnection.getresponse; the recording
    # upstream's request parser still needs http.client.parse_headers.)
    for owner, name in ((requests.Session, "send"), (requests.Session, "request"),
                        (requests.PreparedRequest, "__init__"), (requests.Response, "__init__"),
                        (urllib3.response.HTTPResponse, "__init__"), (http.client.HTTPResponse, "begin"),
                        (http.client.HTTPConnection, "getresponse"), (http.client.HTTPConnection, "putrequest"),
                        (forwarding.UpstreamResponse, "__init__")):
        monkeypatch.setattr(owner, name, forbidden)
    upstream.reply("/moved", Reply(status=302, headers=[("Location", f"{upstream.origin}/next")], body=b""))
    with flask_activity(env) as seen:
        assert env.get("certificates/filter?page=2", token=token).get_data() == b"upstream ok"
        assert env.call("POST", "certificates/import", token=token, data=pattern(100_000)).status_code == 200
        assert env.call("HEAD", "certificates/details/1", token=token).status_code == 200
        assert env.get("moved", token=token).headers["Location"] == "/next"
    assert seen == {"requests": 0, "app_contexts": 0}
    assert [r.method for r in upstream.log[1:]] == ["GET", "POST", "HEAD", "GET"]
    assert len(upstream.log[2].body) == 100_000


# --- connections: reused after a whole answer, closed otherwise -----------------------------------------------


def test_one_keep_alive_connection_carries_request_after_request(env, token, upstream):
    upstream.reply("/blob", Reply(body=pattern(200_000)))
    assert env.get("certificates/filter", token=token).status_code == 200
    assert env.get("blob", token=token).get_data() == pattern(200_000)
    assert env.call("POST", "certificates/import", token=token, data=b"x" * 70_000).status_code == 200
    assert env.call("HEAD", "blob", token=token).status_code == 200
    assert env.call("DELETE", "certificates/remove/1", token=token).status_code == 200
    upstream.reply("/empty", Reply(status=204, headers=[], body=b""))
    assert env.get("empty", token=token).status_code == 204
    assert env.get("certificates/filter", token=token).status_code == 200
    assert len({r.peer for r in upstream.log}) == 1, [r.peer for r in upstream.log]


def test_an_answer_not_read_to_its_end_closes_its_connection(env, token, upstream):
    gate = threading.Event()
    upstream.reply("/export", Reply(stream_bytes=4 * 1024 * 1024, gate=gate))
    assert env.get("certificates/filter", token=token).status_code == 200
    response = env.get("export", token=token, buffered=False)
    try:
        assert next(chunk for chunk in response.response if chunk)  # the first bytes, then the client goes away
    finally:
        response.close()
        gate.set()
    used = upstream.last().peer
    assert upstream.closed(used)  # the rest of the body is never read into the next answer
    assert env.get("certificates/filter", token=token).get_data() == b"upstream ok"
    assert upstream.last().peer != used


def test_a_connection_the_upstream_closes_is_never_reused(env, token, upstream):
    upstream.reply("/bye", Reply(headers=[("Connection", "close")], body=b"bye", close=True))
    upstream.reply("/quiet-bye", Reply(body=b"quiet", close=True))  # closes without saying so
    response = env.get("bye", token=token)
    assert response.get_data() == b"bye" and "Connection" not in response.headers
    assert env.get("certificates/filter", token=token).status_code == 200
    assert env.get("quiet-bye", token=token).get_data() == b"quiet"
    assert upstream.closed(upstream.last().peer)
    # The pool finds the connection closed before it would send on it: no 502 for this request.
    assert env.get("certificates/filter", token=token).get_data() == b"upstream ok"
    assert len({r.peer for r in upstream.log}) == 3


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_the_upstream_cuts_short_is_never_passed_as_whole(env, token, upstream, framing):
    if framing == "content-length":
        upstream.reply("/cut", Reply(headers=[("Content-Length", "100")], body=b"x" * 10, close=True))
    else:
        upstream.reply("/cut", Reply(headers=[("Transfer-Encoding", "chunked")], body=b"5\r\nhello\r\n", close=True))
    with pytest.raises(http.client.IncompleteRead):
        env.get("cut", token=token)
    assert upstream.closed(upstream.last().peer)
    assert env.get("certificates/filter", token=token).get_data() == b"upstream ok"


def test_transfer_encoding_wins_over_content_length(env, token, upstream):
    """RFC 9112 §6.3: with both, the body is chunked and the Content-Length is not passed on."""
    upstream.reply("/both", Reply(headers=[("Content-Type", "text/plain"), ("Content-Length", "3")],
                                  body=b"the whole chunked body", chunked=True))
    response = env.get("both", token=token)
    assert response.get_data() == b"the whole chunked body" and "Content-Length" not in response.headers
    assert env.get("certificates/filter", token=token).status_code == 200
    assert len({r.peer for r in upstream.log}) == 1


# --- the response head -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["fast path", "Flask route"])
def test_upstream_fields_keep_their_order_spelling_and_duplicates(env, token, upstream, via):
    fields = [("Set-Cookie", "a=1; Path=/"), ("x-lower", "1"), ("Set-Cookie", "b=2"), ("X-MiXeD-case", "two  words"),
              ("Content-Type", "text/plain"), ("x-lower", "again")]
    upstream.reply("/fields", Reply(headers=fields, body=b"ok"))
    with flask_route_only(env) if via == "Flask route" else _nothing():
        response = env.get("fields", token=token)
    assert [(name, value) for name, value in response.headers if name != "Content-Length"] == fields


def test_a_head_line_that_is_no_field_is_skipped_and_the_fields_after_it_arrive(env, token, upstream):
    upstream.reply("/odd", Reply(headers=[("Content-Type", "text/plain"),
                                          ("X-A", "1\r\nthis line is no field\r\nX-B: 2")], body=b"odd"))
    response = env.get("odd", token=token)
    assert response.get_data() == b"odd"
    assert [name for name, _ in response.headers] == ["Content-Type", "X-A", "X-B", "Content-Length"]
    assert (response.headers["X-A"], response.headers["X-B"]) == ("1", "2")


def test_a_head_of_more_than_a_hundred_lines_is_a_502_as_with_http_client(env, token, upstream):
    upstream.reply("/full", Reply(headers=[(f"X-{i}", "v") for i in range(99)], body=b"ok"))  # + Content-Length
    upstream.reply("/over", Reply(headers=[(f"X-{i}", "v") for i in range(100)], body=b"ok"))
    assert env.get("full", token=token).headers["X-98"] == "v"
    assert_error(env.get("over", token=token), 502)


@pytest.mark.parametrize("case", ["no-content", "not-modified", "head", "locations", "chunked-with-length",
                                  "controls-and-folds"])
def test_the_fast_paths_answers_are_byte_for_byte_the_flask_routes(env, token, upstream, case):
    """Status line, every field in order, body: the fast path's own WSGI answer matches what werkzeug's Response
    makes of the same upstream answer (Location quoting, no Content-Length with 204, no entity fields with 304)."""
    method = "GET"
    if case == "no-content":
        reply = Reply(status=204, headers=[("X-A", "1"), ("Content-Length", "0")], body=b"")
    elif case == "not-modified":
        reply = Reply(status=304, headers=[("ETag", '"v1"'), ("Content-Type", "text/html"), ("Content-Length", "10"),
                                           ("Expires", "Wed, 21 Oct 2037 07:28:00 GMT"), ("Content-Encoding", "gzip"),
                                           ("Content-Location", "/a b")], body=b"")
    elif case == "head":
        method = "HEAD"
        reply = Reply(headers=[("Content-Type", "application/pdf")], body=b"%PDF" * 100)
    elif case == "locations":
        reply = Reply(status=302, headers=[("Location", f"{upstream.origin}/a b/\xe9?q=\xfc"), ("X-Between", "1"),
                                           ("Location", "/second one"), ("Content-Location", "/\xe9")], body=b"")
    elif case == "chunked-with-length":
        reply = Reply(headers=[("Content-Length", "2")], body=pattern(5000), chunked=True)
    else:
        reply = Reply(headers=[("X-Nul", "a\x00b"), ("X-Fold", "c\r\n d"), ("X-Lf", "e\n f"), ("X-Cr", "g\rh")],
                      body=b"ok")
    upstream.reply("/case", reply)
    assert env.call(method, "case", token=token).status_code == reply.status
    fast, flask = _both_ways(env, lambda: env.call(method, "case", token=token))
    assert fast == flask
    assert [r.method for r in upstream.log] == [method]  # (the fast path's was cleared)


def _both_ways(env: ProxyEnv, ask) -> tuple[tuple, tuple]:
    with flask_activity(env) as seen:
        response = ask()
        fast = (response.status, list(response.headers), response.get_data())
    assert seen["requests"] == 0
    env.upstream.clear()
    with flask_route_only(env), flask_activity(env) as seen:
        response = ask()
        flask = (response.status, list(response.headers), response.get_data())
    assert seen["requests"] == 1
    return fast, flask


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc) -> None:
        return None


# --- the request --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nX-Injected: 1", "a\rb", "a\x00b", "\u0101"],
                         ids=["crlf", "lf", "cr", "nul", "not-latin-1"])
def test_a_request_field_that_cannot_be_forwarded_is_a_400_and_reaches_nobody(env, token, upstream, value):
    """A WSGI server never hands these over; if one did, no second field may reach the upstream."""
    assert env.get("certificates/filter", token=token).status_code == 200
    upstream.clear()
    response = env.get("certificates/filter", token=token, environ_overrides={"HTTP_X_EVIL": value})
    assert_error(response, 400, "header")
    assert upstream.log == []
    assert env.get("certificates/filter", token=token).status_code == 200  # the connection is still good


def test_a_base_url_with_a_path_prefixes_every_target(make_env, upstream):
    env = make_env(ZENZEFI_UPSTREAM_URL=f"{upstream.origin}/zenzefi/app/")
    token = env.buy()
    assert env.get("certificates/filter?a=1&b=%20x", token=token).status_code == 200
    assert env.get("", token=token).status_code == 200
    assert [r.target for r in upstream.log] == ["/zenzefi/app/certificates/filter?a=1&b=%20x", "/zenzefi/app/"]


_TARGET_CHARACTERS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?%#[] \"<>\\^`{|}\t\xe9\u0101"


@pytest.mark.parametrize("base", ["http://upstream.example:8080", "http://Upstream.Example", "https://up.example/app",
                                  "http://up.example/a%41b/", "http://up.example/x y"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.text(alphabet=_TARGET_CHARACTERS, max_size=40), query=st.text(alphabet=_TARGET_CHARACTERS, max_size=30))
def test_request_targets_are_quoted_exactly_as_requests_quotes_them(base, raw, query):
    """The target sent is `PreparedRequest.path_url` of the URL re-quoted as before, whatever the path and query."""
    base = base.rstrip("/")
    url = f"{base}/{raw}" + (f"?{query}" if query else "")
    prepared = requests.PreparedRequest()
    prepared.url = forwarding.upstream_target(url)
    assert forwarding.upstream_adapter().upstream(base).target(raw, query) == prepared.path_url


@pytest.mark.parametrize("pool, expected", [
    (HTTPConnectionPool("127.0.0.1", 80), "127.0.0.1"),
    (HTTPConnectionPool("127.0.0.1", 8080), "127.0.0.1:8080"),
    (HTTPConnectionPool("Zenzefi.Example.COM", None), "zenzefi.example.com"),
    (HTTPConnectionPool("[::1]", 8443), "[::1]:8443"),
    (HTTPSConnectionPool("zenzefi.example", 443), "zenzefi.example"),
    (HTTPSConnectionPool("zenzefi.example", 80), "zenzefi.example:80"),
], ids=["ipv4-default-port", "ipv4-port", "no-port", "ipv6", "https-default-port", "https-port-80"])
def test_the_host_field_is_the_one_http_client_writes(pool, expected):
    connection = pool._new_conn()
    connection.putrequest("GET", "/")  # buffered, nothing is sent: the Host line http.client would write
    written = [line.decode() for line in connection._buffer if line.lower().startswith(b"host:")]
    assert written == [f"Host: {expected}"]
    assert forwarding.Upstream("http://x", pool).host == expected


def test_the_status_line_is_werkzeugs():
    for code in range(100, 1000):
        assert forwarding._status_line(code) == forwarding.UpstreamResponse(status=code).status


# --- TLS: verified as requests verifies -----------------------------------------------------------------------


@pytest.fixture
def untrusted_tls_upstream(tmp_path) -> Iterator[tuple[int, list[str]]]:
    """An HTTPS server on loopback whose self-signed certificate no CA bundle trusts; it logs handshakes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    seen: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            with client:
                client.settimeout(2)
                try:
                    with context.wrap_socket(client, server_side=True) as tls:
                        tls.recv(1024)
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ntrusted")
                        seen.append("served")
                except (ssl.SSLError, OSError) as error:
                    seen.append(f"refused: {type(error).__name__}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], seen
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_an_https_upstream_is_verified_as_requests_verifies_it(make_env, untrusted_tls_upstream):
    port, seen = untrusted_tls_upstream
    env = make_env(ZENZEFI_UPSTREAM_URL=f"https://127.0.0.1:{port}")
    token = env.buy()
    assert_error(env.get("certificates/filter", token=token), 502)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:  # the server notes the failed handshake after we gave up
        time.sleep(0.01)
    assert seen and seen[0].startswith("refused") and "served" not in seen  # the handshake was refused by us
    assert env.token_row(token).activated_at is None


# --- work done once, in bounded caches ------------------------------------------------------------------------


def test_path_verdicts_are_remembered_within_bounds(env, token, monkeypatch):
    """A path's verdict is judged once, and the same as judged afresh; paths are judged before the token is, so
    what anybody sends can fill the cache only so far: long paths are not kept, and a full cache starts over."""
    from zenzefi_backend.proxy import admission, paths

    judged: list[str] = []
    original = admission.canonical

    def counting(subpath: str) -> str:
        judged.append(subpath)
        return original(subpath)

    monkeypatch.setattr(admission, "canonical", counting)
    monkeypatch.setattr(admission, "_VERDICTS", {})
    monkeypatch.setattr(admission, "_VERDICTS_MAX", 8)
    for _ in range(3):
        assert env.get("certificates/filter", token=token).status_code == 200
        assert_error(env.get("a/%2e%2e/b", token=token), 400)
    assert judged == ["certificates/filter", "a/%2e%2e/b"]
    long_path = "x" * (admission._VERDICT_PATH_LENGTH + 1)
    for _ in range(2):
        assert env.get(long_path, token=token).status_code == 200
    assert judged.count(long_path) == 2 and long_path not in admission._VERDICTS
    for index in range(20):
        assert_error(env.get(f"p{index}", token="u" * 64), 401)  # an unknown token: its path is judged first
    assert len(admission._VERDICTS) <= 8
    for subpath, verdict in admission._VERDICTS.items():
        try:
            fresh = (True, paths.allowed_for_certificates_only(paths.canonical(subpath)))
        except paths.NotCanonical:
            fresh = (False, False)
        assert verdict == fresh


def test_cached_token_states_are_parsed_once_within_bounds(monkeypatch):
    from zenzefi_backend.proxy import cache

    monkeypatch.setattr(cache, "_PARSED", {})
    monkeypatch.setattr(cache, "_PARSED_MAX", 4)
    token = cache.TokenState("t", "u", "full", 1, 0, 0, 0)
    raw = token.dumps()
    assert cache.TokenState.cached(raw) == token and cache.TokenState.cached(raw) is cache.TokenState.cached(raw)
    assert cache.UserState.cached('{"active":1,"plan":"free"}') == cache.UserState(1, "free")
    for index in range(10):
        assert cache.TokenState.cached(cache.TokenState(f"t{index}", "u", "full", 1, 0, 0, 0).dumps()).id == f"t{index}"
    assert len(cache._PARSED) <= 4


def test_field_name_caches_keep_only_short_names(env, token, upstream, monkeypatch):
    monkeypatch.setattr(forwarding, "_HEADER_NAMES", {})
    monkeypatch.setattr(forwarding, "_NAMES", {})
    long_name = "X-" + "n" * forwarding._CACHED_NAME_LENGTH
    upstream.reply("/named", Reply(headers=[("Content-Type", "text/plain"), (long_name, "1")], body=b"ok"))
    response = env.get("named", token=token, headers={long_name: "2", "X-Short": "3"})
    assert response.headers[long_name] == "1"
    assert upstream.last().header(long_name) == "2" and upstream.last().header("X-Short") == "3"
    assert "HTTP_X_SHORT" in forwarding._HEADER_NAMES and "Content-Type" in forwarding._NAMES
    assert not [key for key in forwarding._HEADER_NAMES if len(key) > forwarding._CACHED_NAME_LENGTH]
    assert long_name not in forwarding._NAMES



def test_a_connection_whose_request_was_not_sent_whole_is_never_reused(env, token, upstream, monkeypatch):
    """A send that broke off (the upstream answered early and reset) still passes back the answer that came, but the
    connection never goes back to the pool: what it would carry next could be read as the rest of the body."""
    original = forwarding._Body.send

    def broken_off(body, sock, head) -> None:
        original(body, sock, head)
        raise BrokenPipeError("the upstream stopped reading")

    assert env.get("certificates/filter", token=token).status_code == 200
    monkeypatch.setattr(forwarding._Body, "send", broken_off)
    assert env.call("POST", "certificates/import", token=token, data=b"u" * 1000).get_data() == b"upstream ok"
    first = upstream.last().peer
    assert upstream.closed(first)
    monkeypatch.setattr(forwarding._Body, "send", original)
    assert env.call("POST", "certificates/import", token=token, data=b"v" * 1000).status_code == 200
    assert upstream.last().peer != first and upstream.last().body == b"v" * 1000
