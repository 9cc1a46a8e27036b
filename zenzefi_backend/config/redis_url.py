"""Where Redis is: the one parser of `REDIS_URL` and the one place that builds Redis clients from it.

Two forms are accepted:

    redis://[[user]:password@]host[:port][/db]        one server, exactly as redis-py reads it
    rediss://…  unix://…                              (TLS, a Unix socket; the same)

    redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service[/db][?sentinel_password=…]

The Sentinel form names the Sentinels (port 26379 unless given), the monitored service (`mymaster`) and the
database index (0 unless given). The credentials before `@` are those of the Redis servers (primary and
replicas, `requirepass`/ACL user); Sentinels with a password of their own (`requirepass` in sentinel.conf) take
it from `sentinel_password` (and `sentinel_username`) in the query. Every part is percent-decoded, so a
password may contain any character (`@` is `%40`). IPv6 addresses go in brackets: `[fd00::7]:26379`.

Everything that talks to Redis — the app's client (caches, device holder, queues, the scheduler lease, the RQ
worker) and Flask-Limiter's storage — is built here from one `RedisTarget`, so they all follow the primary
that the Sentinels name and go where the Sentinels point after a failover.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
DIRECT_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


class RedisUrlError(ValueError):
    """`REDIS_URL` cannot be used; the message says why (and never repeats a password)."""


def _no_retries() -> Retry:
    # One attempt per call: the callers have their own fallbacks (database, a retry a second later), and a
    # Sentinel that does not answer is skipped for the next one rather than retried with backoff.
    return Retry(NoBackoff(), 0)


@dataclass(frozen=True)
class RedisTarget:
    """A parsed `REDIS_URL`. `url` is the configured text (it may carry a password: never log it)."""

    url: str = field(repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        """Where Redis is, without credentials (for logs and error messages)."""
        if not self.is_sentinel:
            parts = urlsplit(self.url)
            return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels)
        return f"{SENTINEL_SCHEME}://{hosts}/{self.service_name}/{self.db}"

    def _credentials(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password}

    def _sentinel_options(self, socket_timeout: float, socket_connect_timeout: float) -> dict[str, Any]:
        # Explicit, so the servers' password is never sent to Sentinels (a Sentinel without one refuses AUTH).
        return {"username": self.sentinel_username, "password": self.sentinel_password,
                "socket_timeout": socket_timeout, "socket_connect_timeout": socket_connect_timeout,
                "retry": _no_retries()}

    def client(self, *, socket_timeout: float, socket_connect_timeout: float, **options: Any) -> redis.Redis:
        """A client of the primary: this server, or whichever one the Sentinels name at each new connection."""
        if not self.is_sentinel:
            return redis.Redis.from_url(self.url, socket_timeout=socket_timeout,
                                        socket_connect_timeout=socket_connect_timeout, **options)
        sentinel = Sentinel(list(self.sentinels),
                            sentinel_kwargs=self._sentinel_options(socket_timeout, socket_connect_timeout))
        return sentinel.master_for(self.service_name, db=self.db, socket_timeout=socket_timeout,
                                   socket_connect_timeout=socket_connect_timeout, retry=_no_retries(),
                                   **self._credentials(), **options)

    def limiter_storage(self, *, socket_timeout: float, socket_connect_timeout: float) -> tuple[str, dict[str, Any]]:
        """Flask-Limiter's `RATELIMIT_STORAGE_URI` and `RATELIMIT_STORAGE_OPTIONS` for the same Redis.

        `limits` reads Sentinel URIs as `redis+sentinel://host:port,…/service` (no database index, one password
        for servers and Sentinels alike), so the rest goes in as options; counters are read from the primary
        only (a replica may lag behind the count)."""
        timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_connect_timeout}
        if not self.is_sentinel:
            uri = "redis+unix" + self.url[len("unix"):] if self.url.startswith("unix:") else self.url
            return uri, timeouts
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels)
        options = {**timeouts, "db": self.db, **self._credentials(), "use_replicas": False,
                   "sentinel_kwargs": self._sentinel_options(socket_timeout, socket_connect_timeout)}
        return f"{SENTINEL_SCHEME}://{hosts}/{self.service_name}", options


def _text(value: str | None) -> str | None:
    return unquote(value) if value else None


def _sentinel_hosts(hosts: str) -> tuple[tuple[str, int], ...]:
    found = []
    for location in hosts.split(","):
        location = location.strip()
        if not location:
            raise RedisUrlError("an empty Sentinel address in the list")
        try:
            parts = urlsplit(f"//{location}")
            host, port = parts.hostname, parts.port or DEFAULT_SENTINEL_PORT
        except ValueError as exc:
            raise RedisUrlError(f"the Sentinel address {location!r} is not host[:port] ({exc})") from None
        if not host:
            raise RedisUrlError(f"the Sentinel address {location!r} has no host")
        found.append((host, port))
    return tuple(found)


def _parse_sentinel(url: str) -> RedisTarget:
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise RedisUrlError("a Sentinel URL needs at least one Sentinel: redis+sentinel://host:26379/service")
    username, _, password = userinfo.partition(":") if at else ("", "", "")
    segments = [unquote(segment) for segment in parts.path.split("/")[1:]]
    if not segments or not segments[0]:
        raise RedisUrlError("a Sentinel URL needs the service name after the hosts: …/mymaster[/db]")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise RedisUrlError("the path of a Sentinel URL is /<service>[/<db index>]")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(SENTINEL_OPTIONS))
    if unknown:
        raise RedisUrlError(f"unknown option(s) {', '.join(unknown)}; only {', '.join(SENTINEL_OPTIONS)}")
    if parts.fragment:
        raise RedisUrlError("a Sentinel URL has no fragment")
    return RedisTarget(
        url=url,
        sentinels=_sentinel_hosts(hosts),
        service_name=segments[0],
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=_text(username),
        password=_text(password),
        sentinel_username=_text(query.get("sentinel_username", [""])[-1]),
        sentinel_password=_text(query.get("sentinel_password", [""])[-1]),
    )


def parse_redis_url(url: str) -> RedisTarget:
    """The one reading of `REDIS_URL`; `RedisUrlError` names what is wrong."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == SENTINEL_SCHEME:
        return _parse_sentinel(url)
    if scheme not in DIRECT_SCHEMES:
        raise RedisUrlError(f"use redis://, rediss://, unix:// or {SENTINEL_SCHEME}:// (got {scheme or 'no'} scheme)")
    try:
        parsed = redis.connection.parse_url(url)
    except ValueError as exc:
        raise RedisUrlError(str(exc).replace(url, "<REDIS_URL>")) from None
    return RedisTarget(url=url, db=int(parsed.get("db") or 0), username=parsed.get("username"),
                       password=parsed.get("password"))
