"""Fixtures for the end-to-end tests: the migrated shared database and Redis, and relays in front of them."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from sqlalchemy.engine import make_url

from tests.e2e.harness import TcpRelay, require_real_services
from tests.support import SmtpSink


@dataclass
class Services:
    """Where the real PostgreSQL (already migrated for this run) and Redis are, and relays in front of them."""

    database_url: str
    redis_url: str
    relays: list[TcpRelay] = field(default_factory=list)

    def database_relay(self) -> TcpRelay:
        url = make_url(self.database_url)
        return self._relay(url.host or "127.0.0.1", url.port or 5432)

    def redis_relay(self) -> TcpRelay:
        parts = urlsplit(self.redis_url)
        return self._relay(parts.hostname or "127.0.0.1", parts.port or 6379)

    def database_url_via(self, relay: TcpRelay) -> str:
        return make_url(self.database_url).set(host="127.0.0.1", port=relay.port).render_as_string(
            hide_password=False)

    def redis_url_via(self, relay: TcpRelay) -> str:
        parts = urlsplit(self.redis_url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@{relay.address}" if credentials else relay.address
        return urlunsplit(parts._replace(netloc=netloc))

    def relay(self, host: str, port: int) -> TcpRelay:
        """A started relay to any loopback service (e.g. the fake upstream), stopped after the test."""
        return self._relay(host, port)

    def _relay(self, host: str, port: int) -> TcpRelay:
        relay = TcpRelay(host, port).start()
        self.relays.append(relay)
        return relay


@pytest.fixture
def services(backends, request) -> Iterator[Services]:
    """Real PostgreSQL + Redis for processes under test; skips (with the reason) on the embedded backends."""
    require_real_services(backends)
    request.getfixturevalue("app")  # the schema is migrated once per run, tables/Redis emptied after each test
    found = Services(database_url=backends.database_url, redis_url=backends.redis_url)
    yield found
    for relay in found.relays:
        relay.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A real SMTP server on 127.0.0.1 for the processes under test."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def redis_client(services) -> Iterator[redis.Redis]:
    """A client of the run's real Redis, for looking at queues and jobs the processes under test share."""
    client = redis.Redis.from_url(services.redis_url)
    yield client
    client.close()
