"""Test backends: where the suite's database and Redis live (see conftest)."""
from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from zenzefi_backend.config import normalise_database_url


@dataclass
class Backends:
    server_url: str | None
    redis_url: str | None
    database_url: str = ""

    @property
    def is_postgres(self) -> bool:
        return self.server_url is not None

    def describe_database(self) -> str:
        return "PostgreSQL" if self.is_postgres else "SQLite"

    def create(self, tmp: Path) -> None:
        if not self.is_postgres:
            self.database_url = f"sqlite:///{tmp / 'test.db'}"
            return
        name = f"zenzefi_test_{uuid.uuid4().hex[:12]}"
        with self._admin_engine().connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.database_url = make_url(self.server_url).set(database=name).render_as_string(hide_password=False)

    def drop(self) -> None:
        if not self.is_postgres or not self.database_url:
            return
        name = make_url(self.database_url).database
        with self._admin_engine().connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def _admin_engine(self) -> sa.Engine:
        return sa.create_engine(self.server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def make_backends() -> Backends:
    server = os.environ.get("TEST_DATABASE_URL") or None
    return Backends(
        server_url=normalise_database_url(server) if server else None,
        redis_url=os.environ.get("TEST_REDIS_URL") or None,
    )


def app_config(backends: Backends, instance: Path, **extra) -> dict:
    config = {
        "ZENZEFI_ENV": "testing",
        "DATABASE_URL": backends.database_url,
        "REDIS_URL": backends.redis_url,
        "PASSWORD_HASH_TIME_COST": 1,
        "PASSWORD_HASH_MEMORY_KIB": 1024,
        "RATELIMIT_REGISTER": "1000 per hour",
        "RATELIMIT_LOGIN_FAILED": "1000 per hour",
        # The per-user API limit by plan would throttle tests that make many requests; tests/plans lowers it.
        "RATELIMIT_API_FREE": 1_000_000,
        "RATELIMIT_API_PREMIUM": 2_000_000,
        "RATELIMIT_API_ENTERPRISE": 3_000_000,
        "ZENZEFI_UPSTREAM_URL": "http://127.0.0.1:9",
        "MAIL_FROM": "Zenzefi <no-reply@example.com>",
    }
    config.update(extra)
    return config


POSTGRES_ONLY_REASON = "needs PostgreSQL row locks and real concurrency (set TEST_DATABASE_URL)"
REAL_SERVICES_REASON = (
    "needs real PostgreSQL and Redis shared by several processes (set TEST_DATABASE_URL and TEST_REDIS_URL)"
)


@contextmanager
def balance_watch(database_url: str, user_id: str) -> Iterator[list[Decimal]]:
    """Poll the user's balance on a connection of its own while a race runs; yields every value seen."""
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    seen: list[Decimal] = []
    stop = threading.Event()

    def poll() -> None:
        with engine.connect() as connection:
            while not stop.is_set():
                seen.append(connection.execute(sa.text("SELECT balance FROM users WHERE id = :id"),
                                               {"id": uuid.UUID(user_id)}).scalar_one())

    watcher = threading.Thread(target=poll, name="balance-watch", daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        stop.set()
        watcher.join(timeout=10)
        engine.dispose()
    assert seen, "the watcher never read the balance"


class SmtpSink:
    """A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps what it receives. `refuse` makes it answer every
    RCPT with that SMTP reply (e.g. "550 5.1.1 No such user")."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Any] = []
        self.refuse: str | None = None
        sink = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
                if sink.refuse:
                    return sink.refuse
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):  # noqa: N802
                from email import message_from_bytes, policy

                sink.messages.append(message_from_bytes(envelope.content, policy=policy.default))
                return "250 Message accepted"

        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._controller.stop()


def dead_redis():
    """A Redis client for a port nobody listens on, without retries: every call fails at once (an outage)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


@contextmanager
def count_sql(app) -> Iterator[list[str]]:
    """Every SQL statement the app's engine executes inside the block."""
    from zenzefi_backend.extensions import db

    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


# A marker for tests that need PostgreSQL's row locks and real concurrency; they skip, saying why, on SQLite.
postgres_only = pytest.mark.skipif(not make_backends().is_postgres, reason=POSTGRES_ONLY_REASON)
