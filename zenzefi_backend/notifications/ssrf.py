"""The SSRF guard of outgoing webhooks: which URLs may be registered, and a POST that can only reach them.

A URL is checked when it is registered and again on every attempt. The attempt resolves the host once,
checks every address, and connects to the first of them: the connection is pinned to the address that was
checked (a DNS answer that changes between the check and the connect — DNS rebinding — cannot redirect it),
while the `Host` header, the TLS SNI and the certificate check still use the name from the URL.
With `WEBHOOK_ALLOW_PRIVATE_TARGETS` (development and tests) the port and address checks are skipped, nothing else.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import urllib3

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = {"http": 80, "https": 443}
# Below 1024 only HTTP's own ports: a POST must not be aimed at SMTP, SSH or the like on a public host.
LOWEST_FREE_PORT = 1024
CA_CERTS = certifi.where()

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# A last label made of digits (or 0x…) means an IPv4 literal; only the dotted-decimal form is accepted, so
# 2130706433, 0177.0.0.1, 0x7f.1 or 127.1 — all 127.0.0.1 to some resolver — never reach one.
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
_6TO4_RELAY = ipaddress.ip_network("192.88.99.0/24")


class UnsafeTarget(Exception):
    """The URL may not be used as a webhook target; the message says why (shown to the user)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lower-case ASCII (IDNA) name or IP literal, without brackets
    port: int
    path: str  # path and query, never empty

    @property
    def is_https(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == SCHEMES[self.scheme] else f"{host}:{self.port}"


def parse(url: str) -> Target:
    """The URL's parts, or UnsafeTarget for anything that is not a plain http(s) URL."""
    if any(char <= " " or char == "\x7f" for char in url):
        raise UnsafeTarget("The URL must not contain spaces or control characters.")
    if not url.isascii():
        raise UnsafeTarget("Percent-encode non-ASCII characters in the path and query (IDN hosts in punycode).")
    if "#" in url:
        raise UnsafeTarget("The URL must not have a fragment (#…).")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget(f"Not a valid URL: {exc}.") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsafeTarget("Only http:// and https:// URLs are allowed.")
    if "@" in parts.netloc:
        raise UnsafeTarget("The URL must not contain credentials (user:password@).")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeTarget("The URL has no host.")
    if port is None:
        port = SCHEMES[scheme]
    if port == 0:
        raise UnsafeTarget("Port 0 is not a port.")
    _check_host(host)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme, host, port, path)


def _check_host(host: str) -> None:
    if ":" in host:  # urlsplit only lets a colon through inside [brackets]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UnsafeTarget("Not a valid IPv6 address.") from None
        return
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise UnsafeTarget("Write an IPv4 address as four decimal numbers (like 203.0.113.7).") from None
        return
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise UnsafeTarget("Not a valid host name.")


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast; IPv6 forms that embed an IPv4 address are judged by that address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in network for network in _NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
        if address.teredo is not None or address in _SITE_LOCAL:
            return False
    elif address in _6TO4_RELAY:
        return False
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified or address.is_loopback
        or address.is_link_local or address.is_private
    )


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the host resolves to (an IP literal resolves to itself), in the resolver's order."""
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeTarget("The host cannot be resolved.") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in answers:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeTarget("The host cannot be resolved.")
    return addresses


def _checked_addresses(target: Target, allow_private: bool) -> list[IPAddress]:
    """The host's addresses; unless private targets are allowed, only if the port and every address may be used."""
    if not (allow_private or target.port in SCHEMES.values() or target.port >= LOWEST_FREE_PORT):
        raise UnsafeTarget(f"Port {target.port} is not allowed: use 80, 443 or a port from {LOWEST_FREE_PORT} to "
                           "65535.")
    addresses = resolve(target.host, target.port)
    if not allow_private and not all(is_public(address) for address in addresses):
        raise UnsafeTarget("The host is, or resolves to, an address that is not public (private, loopback, "
                           "link-local, multicast or reserved).")
    return addresses


def check_url(url: str, *, allow_private: bool) -> None:
    """Registration: the URL's form always; its port and addresses (one DNS lookup) unless private targets are
    allowed (then the host is not even resolved: nothing would be refused)."""
    target = parse(url)
    if not allow_private:
        _checked_addresses(target, allow_private)


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, allow_private: bool) -> int:
    """POST `body` to `url` over a connection pinned to a checked address; the answer's status code.

    Redirects are not followed. At most `timeout` seconds to connect and to receive the answer's head (each
    socket read waits at most what is left); the answer's body is not read. Raises UnsafeTarget before
    connecting anywhere, or urllib3's HTTPError / OSError when the connection or the exchange fails."""
    target = parse(url)
    address = str(_checked_addresses(target, allow_private)[0])
    options = {"timeout": urllib3.Timeout(total=timeout), "retries": False, "maxsize": 1}
    if target.is_https:
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            address, target.port, server_hostname=target.host, assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED", ca_certs=CA_CERTS, **options)
    else:
        pool = urllib3.HTTPConnectionPool(address, target.port, **options)
    try:
        response = pool.urlopen("POST", target.path, body=body, headers={**headers, "Host": target.host_header},
                                redirect=False, assert_same_host=False, preload_content=False)
        response.close()
        return response.status
    finally:
        pool.close()
