"""What gunicorn itself refuses (before the app sees the request) is answered in the SPEC's JSON error shape,
and its limits let the upstream's long URLs and large cookies through. Raw sockets against a real gunicorn
(gunicorn.conf.py, 2 workers), so nothing between the test and the server tidies the bytes up.

No database or Redis is involved, so this runs on the embedded default too."""
from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.e2e.harness import LOOPBACK, Gunicorn, exchange

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server() -> Iterator[Gunicorn]:
    with Gunicorn(None, None) as running:
        yield running


def raw(server: Gunicorn, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; read the answer until the server closes the connection."""
    with socket.create_connection((LOOPBACK, server.port), timeout=timeout) as connection:
        return exchange(connection, data)


def request(target: str, *header_lines: str, method: str = "GET", body: bytes = b"") -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close", *header_lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def assert_json_error(answer: tuple[int, dict[str, str], bytes], status: int, *words: str) -> dict:
    code, headers, body = answer
    assert code == status, answer
    assert headers["content-type"].startswith("application/json"), answer
    assert b"<html" not in body.lower()
    parsed = json.loads(body)
    assert parsed["code"] == status and isinstance(parsed["status"], str) and parsed["message"], parsed
    for word in words:
        assert word in parsed["message"], parsed
    assert int(headers["content-length"]) == len(body)
    return parsed


def test_a_6000_character_proxied_path_reaches_the_app(server):
    answer = raw(server, request("/api/v1/proxy/certificates/details/" + "a" * 6000))
    assert_json_error(answer, 403, "X-Device-ID")  # the proxy's first check, so the app saw it


def test_a_request_line_over_the_limit_is_a_json_414(server):
    body = assert_json_error(raw(server, request("/api/v1/proxy/" + "a" * 9000)), 414, "8190 bytes")
    assert "aaaa" not in body["message"]  # the refused input is never echoed


def test_a_long_cookie_is_fine_and_an_oversized_header_is_a_json_431(server):
    status, _, _ = raw(server, request("/health/live", "Cookie: session=" + "c" * 15000))
    assert status == 200
    assert_json_error(raw(server, request("/health/live", "Cookie: session=" + "c" * 20000)), 431, "16384 bytes")


def test_too_many_header_fields_is_a_json_431(server):
    status, _, _ = raw(server, request("/health/live", *(f"X-Field-{index}: {index}" for index in range(150))))
    assert status == 200
    answer = raw(server, request("/health/live", *(f"X-Field-{index}: {index}" for index in range(250))))
    assert_json_error(answer, 431, "200 fields")


def test_a_nul_in_a_header_is_a_json_400(server):
    assert_json_error(raw(server, request("/health/live", "X-Device-ID: abc\x00def")), 400, "header")


def test_an_unknown_transfer_encoding_is_a_json_501(server):
    answer = raw(server, request("/api/v1/auth/login", "Transfer-Encoding: zstd, chunked",
                                 "Content-Type: application/json", method="POST"))
    assert_json_error(answer, 501, "Transfer-Encoding")


@pytest.mark.parametrize("data", [b"GARBAGE\r\n\r\n", b"GET /health/live HTTP/9.9\r\nHost: x\r\n\r\n",
                                  b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
                                  b"G(T /health/live HTTP/1.1\r\nHost: x\r\n\r\n"])
def test_a_malformed_request_is_a_json_400(server, data):
    assert_json_error(raw(server, data), 400, "Malformed HTTP request")


def test_a_bad_chunk_is_a_json_400(server):
    data = request("/api/v1/auth/login", "Transfer-Encoding: chunked", "Content-Type: application/json",
                   method="POST", body=b"zz\r\n{}\r\n0\r\n\r\n")
    status, headers, body = raw(server, data)
    assert status == 400 and headers["content-type"].startswith("application/json"), (status, body)


def test_a_chunked_json_body_over_the_limit_is_a_json_413(server):
    chunk = b"x" * 65536
    pieces = [b'{"email": "a@example.com", "password": "']
    pieces += [chunk] * 17  # over 1 MiB (MAX_JSON_BODY_BYTES), with no Content-Length to announce it
    pieces.append(b'"}')
    body = b"".join(b"%X\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    answer = raw(server, request("/api/v1/auth/login", "Transfer-Encoding: chunked",
                                 "Content-Type: application/json", method="POST", body=body))
    assert_json_error(answer, 413)
