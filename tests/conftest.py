"""Fixtures: one app per run on SQLite + in-process Redis by default, or on real PostgreSQL + Redis.

Set TEST_DATABASE_URL (a PostgreSQL server; a fresh database is created on it for the run and dropped
afterwards) and TEST_REDIS_URL (a DB index that is flushed between tests) to run on the real thing.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade

from tests.support import Backends, app_config, make_backends

BACKENDS: Backends = make_backends()
# `accounts` (user actions); `upstream`, `make_env`, `env`, `token` (the in-process proxy); `receiver`,
# `resolver`, `timeline` (webhooks); `services`, `smtp_sink`, `redis_client` (e2e); `mailbox`, `mailbox_files`,
# `smtp`; `browser` (headless Chromium); `fake_yookassa`; `fake_stripe` (localstripe); `pgbouncer`,
# `database_route` for every test; `own_postgres` (a cluster a test may restart); `fresh_rate_window`
pytest_plugins = ["tests.fixtures.actions", "tests.fixtures.proxy", "tests.fixtures.webhooks",
                  "tests.fixtures.services", "tests.fixtures.mailbox", "tests.fixtures.browser",
                  "tests.fixtures.fake_yookassa", "tests.fixtures.fake_stripe", "tests.fixtures.pgbouncer",
                  "tests.fixtures.postgres_cluster", "tests.fixtures.rate_window"]


def pytest_report_header(config):
    return f"backends: database={BACKENDS.describe_database()} redis={BACKENDS.redis_url or 'in-process stand-in'}"


@pytest.fixture(scope="session")
def backends(tmp_path_factory) -> Iterator[Backends]:
    BACKENDS.create(tmp_path_factory.mktemp("db"))
    yield BACKENDS
    BACKENDS.drop()


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
