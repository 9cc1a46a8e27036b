"""Fixtures: one app per run on SQLite + in-process Redis by default, or on real PostgreSQL + Redis.

Set TEST_DATABASE_URL (a PostgreSQL server; a fresh database is created on it for the run and dropped
afterwards) and TEST_REDIS_URL (a DB index that is flushed between tests) to run on the real thing.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade

from tests.support import Backends, make_backends

BACKENDS: Backends = make_backends()
# `mailbox`, `mailbox_files`, `smtp`; `browser` (headless Chromium); `fake_yookassa`; `fake_stripe` (localstripe);
# `pgbouncer`, `database_route` for every test; `own_postgres` (a cluster a test may restart)
pytest_plugins = ["tests.notifications.mailbox", "tests.fixtures.browser", "tests.fixtures.fake_yookassa",
                  "tests.fixtures.fake_stripe", "tests.fixtures.pgbouncer", "tests.fixtures.postgres_cluster",
                  "tests.fixtures.rate_window"]


def pytest_report_header(config):
    return f"backends: database={BACKENDS.describe_database()} redis={BACKENDS.redis_url or 'in-process stand-in'}"


@pytest.fixture(scope="session")
def backends(tmp_path_factory) -> Iterator[Backends]:
    BACKENDS.create(tmp_path_factory.mktemp("db"))
    yield BACKENDS
    BACKENDS.drop()


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


@pytest.fixture(scope="session")
def app(backends, tmp_path_factory) -> Iterator[Flask]:
    instance = tmp_path_factory.mktemp("instance")
    os.environ["ZENZEFI_INSTANCE_PATH"] = str(instance)
    from zenzefi_backend import create_app

    application = create_app(app_config(backends, instance))
    with application.app_context():
        upgrade()
    yield application


@pytest.fixture(autouse=True)
def clean_state(request) -> Iterator[None]:
    """Every test starts with empty tables, an empty Redis DB and fresh rate-limit counters."""
    yield
    if "app" not in request.fixturenames:
        return
    application: Flask = request.getfixturevalue("app")
    from zenzefi_backend.extensions import db, get_redis, limiter

    with application.app_context():
        db.session.remove()
        with db.engine.begin() as connection:
            for table in reversed(db.metadata.sorted_tables):
                connection.execute(table.delete())
        get_redis().flushdb()
        limiter.reset()


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def app_ctx(app) -> Iterator[None]:
    with app.app_context():
        yield


class Accounts:
    """Creates users through the real API and hands back their credentials."""

    def __init__(self, app: Flask, client: FlaskClient):
        self.app = app
        self.client = client

    def register(self, **overrides) -> dict:
        suffix = uuid.uuid4().hex[:10]
        body = {"email": f"user{suffix}@example.com", "username": f"user_{suffix}", "password": "correct horse 1"}
        body.update(overrides)
        response = self.client.post("/api/v1/auth/register", json=body)
        assert response.status_code == 201, response.get_json()
        return {**response.get_json(), "password": body["password"]}

    def login(self, email: str, password: str) -> dict:
        response = self.client.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def signed_in(self, superuser: bool = False, **overrides) -> dict:
        user = self.register(**overrides)
        if superuser:
            self.set_flags(user["id"], is_superuser=True)
        tokens = self.login(user["email"], user["password"])
        return {**user, **tokens, "headers": {"Authorization": f"Bearer {tokens['access_token']}"}}

    def fund(self, user_id: str, amount: str) -> None:
        """Credit a user through the ledger (an `adjustment` entry), as a superuser would."""
        from decimal import Decimal

        from zenzefi_backend.extensions import db
        from zenzefi_backend.ledger import services as ledger

        with self.app.app_context():
            ledger.apply(uuid.UUID(user_id), Decimal(amount), "adjustment", "test funding")
            db.session.commit()

    def set_flags(self, user_id: str, **flags) -> None:
        from zenzefi_backend.accounts.models import User
        from zenzefi_backend.extensions import db

        with self.app.app_context():
            db.session.execute(sa.update(User).where(User.id == uuid.UUID(user_id)).values(**flags))
            db.session.commit()


@pytest.fixture
def accounts(app, client) -> Accounts:
    return Accounts(app, client)
