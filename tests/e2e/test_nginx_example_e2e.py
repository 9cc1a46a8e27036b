"""ops/nginx.example.conf as shipped (only its addresses and certificate swapped for local ones), in front of a
real gunicorn: the limits it documents hold, and what nginx or gunicorn refuses reaches the client as JSON.

Needs Debian's `nginx-light` (.ci/run installs it for the second pass); skips with that reason without it."""
from __future__ import annotations

import datetime
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import LOOPBACK, Gunicorn, exchange, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "ops" / "nginx.example.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(NGINX is None, reason="needs nginx (apt-get install nginx-light; .ci/run does)")]


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def local_copy(directory: Path, https_port: int, http_port: int, backend_port: int) -> Path:
    """The example with local addresses: every directive that matters here is left exactly as shipped."""
    cert, key = self_signed(directory)
    site = EXAMPLE.read_text()
    for old, new in [("server 127.0.0.1:8000;", f"server 127.0.0.1:{backend_port};"),
                     ("listen 80;", f"listen 127.0.0.1:{http_port};"), ("listen [::]:80;", ""),
                     ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"), ("listen [::]:443 ssl;", ""),
                     ("/etc/ssl/certs/zenzefi.example.com.crt", str(cert)),
                     ("/etc/ssl/private/zenzefi.example.com.key", str(key))]:
        assert old in site, f"the example no longer has {old!r}: update this test"
        site = site.replace(old, new)
    (directory / "site.conf").write_text(site)
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    conf = directory / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {directory / 'nginx.pid'};
error_log {directory / 'error.log'};
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp['body']}; proxy_temp_path {temp['proxy']}; fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']}; scgi_temp_path {temp['scgi']};
    include {directory / 'site.conf'};
}}
""")
    return conf


@pytest.fixture(scope="module")
def front(tmp_path_factory) -> Iterator[int]:
    """nginx on a loopback TLS port in front of gunicorn (embedded backends: no database is needed here)."""
    directory = tmp_path_factory.mktemp("nginx")
    with Gunicorn(None, None) as server:
        https_port = free_port()
        conf = local_copy(directory, https_port, free_port(), server.port)
        check = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(directory)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        process = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(directory), "-g", "daemon off;"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: _accepts(https_port), 10, lambda: f"nginx did not listen: {process.poll()}")
            yield https_port
        finally:
            process.terminate()
            process.wait(timeout=10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((LOOPBACK, port), timeout=10) as plain, \
            context.wrap_socket(plain, server_hostname="localhost") as connection:
        return exchange(connection, data, gone=(ConnectionResetError, ssl.SSLError))


def get(target: str, *header_lines: str) -> bytes:
    return ("\r\n".join([f"GET {target} HTTP/1.1", "Host: localhost", "Connection: close", *header_lines])
            + "\r\n\r\n").encode("latin-1")


def assert_json(answer: tuple[int, dict[str, str], bytes], status: int) -> dict:
    code, headers, body = answer
    assert code == status, answer
    assert headers.get("content-type", "").startswith("application/json"), answer
    parsed = json.loads(body)
    assert parsed["code"] == status and parsed["status"] and parsed["message"], parsed
    return parsed


def test_a_6000_character_proxied_path_passes_both(front):
    assert_json(raw(front, get("/api/v1/proxy/certificates/details/" + "a" * 6000)), 403)  # the app's first check


def test_a_request_line_gunicorn_refuses_is_its_json_414(front):
    body = assert_json(raw(front, get("/api/v1/proxy/" + "a" * 10_000)), 414)
    assert "8190 bytes" in body["message"]  # gunicorn's answer, passed through


def test_a_request_line_nginx_refuses_is_json_too(front):
    assert_json(raw(front, get("/api/v1/proxy/" + "a" * 20_000)), 414)


def test_an_oversized_header_is_a_json_431(front):
    status, _, _ = raw(front, get("/health/live", "Cookie: s=" + "c" * 15_000))
    assert status == 200
    assert_json(raw(front, get("/health/live", "Cookie: s=" + "c" * 20_000)), 431)


def test_a_body_over_the_limit_is_a_json_413(front):
    data = (b"POST /api/v1/auth/login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n")
    assert_json(raw(front, data), 413)


def test_a_malformed_request_is_a_json_400(front):
    assert_json(raw(front, b"GARBAGE\r\n\r\n"), 400)
