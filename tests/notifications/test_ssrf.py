"""The SSRF guard: with private targets disallowed (production) only public http(s) targets can be registered,
the address is checked again on every attempt, and the connection goes to the very address that was checked —
with the right Host header and, over https, the right SNI and a certificate verified against the host name."""
from __future__ import annotations

import ipaddress
import ssl
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fixtures.webhooks import Receiver, verify_signature
from zenzefi_backend.clock import now
from zenzefi_backend.extensions import db
from zenzefi_backend.notifications import ssrf
from zenzefi_backend.notifications.models import OutboxEvent, WebhookDelivery
from zenzefi_backend.notifications.webhooks import deliver, fan_out

ENDPOINTS = "/api/v1/webhooks/endpoints"
PUBLIC_IP = "93.184.215.14"

REFUSED = [
    "http://127.0.0.1:8080/hooks", "http://127.8.9.10/hooks", "http://10.1.2.3/hooks", "http://172.16.0.1/hooks",
    "http://172.31.255.254/hooks", "http://192.168.1.1/hooks", "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/hooks", "http://0.0.0.0/hooks", "http://224.0.0.1/hooks", "http://255.255.255.255/hooks",
    "http://198.18.0.1/hooks", "http://[::1]:8080/hooks", "http://[::]/hooks", "http://[fc00::1]/hooks",
    "http://[fd12:3456:789a::1]/hooks", "http://[fe80::1]/hooks", "http://[ff02::1]/hooks",
    "http://[::ffff:127.0.0.1]/hooks", "http://[::ffff:10.0.0.1]/hooks", "http://[::ffff:a9fe:a9fe]/hooks",
    "http://[64:ff9b::a00:1]/hooks", "http://[2002:a00:1::1]/hooks", "http://[2001::1]/hooks",
    "http://2130706433/", "http://0177.0.0.1/", "http://0x7f.0.0.1/", "http://0x7f000001/", "http://127.1/",
    "http://localhost:8080/hooks",
    f"ftp://{PUBLIC_IP}/hooks", "file:///etc/passwd", f"gopher://{PUBLIC_IP}:70/_", "javascript:alert(1)",
    f"http://user:password@{PUBLIC_IP}/hooks", f"http://user@{PUBLIC_IP}/hooks", f"http://{PUBLIC_IP}/hooks#frag",
    f"http://{PUBLIC_IP}:22/hooks", f"http://{PUBLIC_IP}:25/hooks", f"http://{PUBLIC_IP}:0/hooks",
    f"http://{PUBLIC_IP}:99999/hooks", "http:///hooks", "http://exa mple.com/", "http://-bad-.example.com/",
    "http://bücher.example/hooks", "hooks.example.com/no-scheme",
]


def register(client, user, url: str):
    return client.post(ENDPOINTS, json={"url": url, "events": ["token.purchased"]}, headers=user["headers"])


def publish(user_id: str) -> uuid.UUID:
    event = OutboxEvent(id=uuid.uuid4(), event_type="token.purchased", user_id=uuid.UUID(user_id),
                        payload={"token_id": "t"}, created_at=now())
    db.session.add(event)
    assert fan_out(event) == 1
    db.session.commit()
    return db.session.scalar(sa.select(WebhookDelivery.id).where(WebhookDelivery.message_id == f"msg_{event.id.hex}"))


def last_error(delivery_id: uuid.UUID) -> str:
    db.session.expire_all()
    return db.session.get(WebhookDelivery, delivery_id).last_error


@pytest.fixture
def user(accounts) -> dict:
    return accounts.signed_in()


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_or_malformed_targets_are_refused_at_registration(client, user, public_targets_only, url):
    response = register(client, user, url)
    assert response.status_code == 422, response.get_json()
    assert list(response.get_json()["errors"]) == ["url"]
    assert client.get(ENDPOINTS, headers=user["headers"]).get_json()["total"] == 0


def test_each_refusal_says_why(client, user, public_targets_only):
    reasons = {url: register(client, user, url).get_json()["errors"]["url"][0] for url in (
        "http://10.0.0.1/", "ftp://example.com/", "http://a:b@example.com/", "http://example.com/#x",
        "http://2130706433/", f"http://{PUBLIC_IP}:22/")}
    assert reasons == {
        "http://10.0.0.1/": "The host is, or resolves to, an address that is not public (private, loopback, "
                            "link-local, multicast or reserved).",
        "ftp://example.com/": "Only http:// and https:// URLs are allowed.",
        "http://a:b@example.com/": "The URL must not contain credentials (user:password@).",
        "http://example.com/#x": "The URL must not have a fragment (#…).",
        "http://2130706433/": "Write an IPv4 address as four decimal numbers (like 203.0.113.7).",
        f"http://{PUBLIC_IP}:22/": "Port 22 is not allowed: use 80, 443 or a port from 1024 to 65535.",
    }


@pytest.mark.parametrize("answers", [["10.0.0.5"], ["192.168.0.10"], ["169.254.169.254"], ["::1"],
                                     ["fd00::5"], [PUBLIC_IP, "127.0.0.1"], ["::ffff:127.0.0.1"], []])
def test_a_host_name_that_resolves_to_a_private_address_is_refused(client, user, resolver, public_targets_only,
                                                                   answers):
    resolver.set("hooks.example.test", answers)
    response = register(client, user, "https://hooks.example.test/hooks")
    assert response.status_code == 422, response.get_json()
    assert resolver.lookups == ["hooks.example.test"]


@pytest.mark.parametrize("url", [f"https://{PUBLIC_IP}/hooks", f"http://{PUBLIC_IP}:8080/hooks",
                                 "https://[2606:4700:4700::1111]:8443/hooks", "https://hooks.example.test/a?b=c",
                                 "HTTPS://Hooks.Example.Test./x"])
def test_public_targets_are_accepted(client, user, resolver, public_targets_only, url):
    resolver.set("hooks.example.test", [PUBLIC_IP, "2606:4700:4700::1111"])
    assert register(client, user, url).status_code == 201


def test_a_patch_to_a_private_url_is_refused(client, user, resolver, public_targets_only):
    resolver.set("hooks.example.test", PUBLIC_IP)
    endpoint = register(client, user, "https://hooks.example.test/hooks").get_json()
    response = client.patch(f"{ENDPOINTS}/{endpoint['id']}", json={"url": "http://192.168.0.1:8080/"},
                            headers=user["headers"])
    assert response.status_code == 422 and "url" in response.get_json()["errors"]
    assert client.get(f"{ENDPOINTS}/{endpoint['id']}", headers=user["headers"]).get_json()["url"] == \
        "https://hooks.example.test/hooks"


def test_development_and_tests_may_use_private_targets(app, client, user):
    assert app.config["WEBHOOK_ALLOW_PRIVATE_TARGETS"] is True  # not production
    assert register(client, user, "http://127.0.0.1:9/hooks").status_code == 201
    assert register(client, user, "http://user:pw@127.0.0.1:8080/").status_code == 422  # form rules still apply


def test_the_address_is_checked_again_when_sending(app_ctx, client, user, resolver, receiver, public_targets_only):
    # Public when registered; when the attempt resolves it, the name points at us (DNS rebinding).
    resolver.set("rebind.example.test", PUBLIC_IP, "127.0.0.1")
    assert register(client, user, f"http://rebind.example.test:{receiver.port}/hooks").status_code == 201
    delivery_id = publish(user["id"])
    assert deliver(delivery_id).startswith("failed (refused: The host is, or resolves to, an address that is not")
    assert receiver.requests == []
    assert last_error(delivery_id).startswith("refused: ")
    assert resolver.lookups == ["rebind.example.test", "rebind.example.test"]


def test_the_connection_goes_to_the_address_that_was_checked(app_ctx, client, user, resolver, receiver):
    # Any later lookup would answer an unroutable address: the request still arrives, so it used the first one.
    resolver.set("pinned.example.test", "127.0.0.1", "10.255.255.1")
    endpoint = register(client, user, f"http://pinned.example.test:{receiver.port}/hooks?x=1").get_json()
    delivery_id = publish(user["id"])
    assert deliver(delivery_id) == "succeeded"
    (request,) = receiver.requests
    assert request.path == "/hooks?x=1"
    assert request.headers["host"] == f"pinned.example.test:{receiver.port}"
    verify_signature(endpoint["secret"], request)
    assert resolver.lookups == ["pinned.example.test"]  # one lookup, to check and to connect


def test_a_default_port_is_left_out_of_the_host_header():
    assert ssrf.parse("https://Hooks.Example.Test:443/x").host_header == "hooks.example.test"
    assert ssrf.parse("http://hooks.example.test/").host_header == "hooks.example.test"
    assert ssrf.parse("http://[2606:4700::1]:8080").host_header == "[2606:4700::1]:8080"
    assert ssrf.parse("http://[2606:4700::1]:8080").path == "/"


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("::ffff:8.8.8.8", True), ("2002:808:808::1", True),
    ("127.0.0.1", False), ("::ffff:127.0.0.1", False), ("::ffff:169.254.169.254", False), ("2002:7f00:1::1", False),
    ("64:ff9b::7f00:1", False), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False), ("fec0::1", False),
    ("192.88.99.1", False), ("240.0.0.1", False), ("192.0.2.1", False), ("2001:db8::1", False),
])
def test_which_addresses_count_as_public(address, public):
    assert ssrf.is_public(ipaddress.ip_address(address)) is public


class Certificates:
    """A throwaway CA and server certificates it signs, as PEM files."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Zenzefi test CA")])
        self.ca = self._build(name, name, self.key.public_key(), ca=True)
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def _build(self, subject, issuer, public_key, *, ca: bool, dns_name: str | None = None) -> x509.Certificate:
        moment = datetime.now(UTC)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(moment - timedelta(days=1))
                   .not_valid_after(moment + timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        else:
            builder = (builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                      critical=False))
        return builder.sign(self.key, hashes.SHA256())

    def server_context(self, dns_name: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]), self.ca.subject,
                           key.public_key(), ca=False, dns_name=dns_name)
        cert_file, key_file = self.folder / f"{dns_name}.pem", self.folder / f"{dns_name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context


@pytest.fixture
def certificates(tmp_path) -> Certificates:
    return Certificates(tmp_path)


@pytest.fixture
def tls_receiver(certificates):
    started: list[Receiver] = []

    def start(dns_name: str) -> Receiver:
        started.append(Receiver(tls=certificates.server_context(dns_name)).start())
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()


def test_https_sends_the_host_name_as_sni_and_verifies_the_certificate_against_it(
        app_ctx, client, user, resolver, certificates, tls_receiver, monkeypatch):
    monkeypatch.setattr(ssrf, "CA_CERTS", str(certificates.ca_file))
    receiver = tls_receiver("secure.example.test")
    resolver.set("secure.example.test", "127.0.0.1")
    endpoint = register(client, user, f"https://secure.example.test:{receiver.port}/hooks").get_json()
    delivery_id = publish(user["id"])
    assert deliver(delivery_id) == "succeeded"
    (request,) = receiver.requests
    assert receiver.server_names == ["secure.example.test"]
    assert request.headers["host"] == f"secure.example.test:{receiver.port}"
    verify_signature(endpoint["secret"], request)


def test_https_refuses_a_certificate_for_another_name(app_ctx, client, user, resolver, certificates, tls_receiver,
                                                      monkeypatch):
    monkeypatch.setattr(ssrf, "CA_CERTS", str(certificates.ca_file))
    receiver = tls_receiver("other.example.test")
    resolver.set("secure.example.test", "127.0.0.1")
    register(client, user, f"https://secure.example.test:{receiver.port}/hooks")
    delivery_id = publish(user["id"])
    assert deliver(delivery_id).startswith("failed (TLS error: ")
    assert receiver.requests == []
    assert last_error(delivery_id) == "TLS error: hostname 'secure.example.test' doesn't match 'other.example.test'"


def test_https_refuses_a_certificate_from_an_unknown_authority(app_ctx, client, user, resolver, tls_receiver):
    receiver = tls_receiver("secure.example.test")  # signed by the throwaway CA, which the sender does not trust
    resolver.set("secure.example.test", "127.0.0.1")
    register(client, user, f"https://secure.example.test:{receiver.port}/hooks")
    delivery_id = publish(user["id"])
    assert deliver(delivery_id).startswith("failed (TLS error: ")
    assert receiver.requests == []
