"""While PostgreSQL cannot be reached, every route answers 503 JSON with `Retry-After` (or the 4xx it would give
before needing the database), never a 500; once it is back, requests succeed again without a restart.

The app under test reaches the run's database through a TCP relay; stopping the relay resets every pooled
connection and refuses new ones, as a database that went away does. The e2e twin
(tests/e2e/test_database_restart_e2e.py) restarts a real server under load against gunicorn."""
from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.exceptions import InternalServerError

from tests.e2e.harness import TcpRelay
from zenzefi_backend.errors import DATABASE_RETRY_AFTER_SECONDS, database_unreachable

SKIPPED_RULES = ("/static/", "/dashboard/static/")
PASSWORD = "correct horse 1"
PLACEHOLDER = re.compile(r"<(?:(\w+):)?\w+>")


@dataclass
class Outage:
    app: Flask
    relay: TcpRelay
    admin_headers: dict[str, str]
    user: dict
    token: dict


@pytest.fixture
def outage(app, backends, accounts) -> Iterator[Outage]:
    """An app on the run's database through a relay (up), a superuser and a user with a token."""
    if not backends.is_postgres:
        pytest.skip("needs PostgreSQL (TEST_DATABASE_URL): the relay stands in front of a database server")
    from zenzefi_backend import create_app

    url = sa.engine.make_url(backends.database_url)
    relay = TcpRelay(url.host or "127.0.0.1", url.port or 5432).start()
    config = {name: app.config[name] for name in ("ZENZEFI_ENV", "REDIS_URL", "PASSWORD_HASH_TIME_COST",
                                                  "PASSWORD_HASH_MEMORY_KIB", "ZENZEFI_UPSTREAM_URL", "MAIL_FROM")}
    relayed = create_app({**config, "RATELIMIT_ENABLED": False,
                          "DATABASE_URL": url.set(host="127.0.0.1", port=relay.port).render_as_string(
                              hide_password=False)})
    admin = accounts.signed_in(superuser=True)
    user = accounts.signed_in()
    accounts.fund(user["id"], "100.00")
    client = relayed.test_client()
    bought = client.post("/api/v1/tokens/purchase", json={"duration_hours": 24}, headers=user["headers"])
    assert bought.status_code == 201, bought.get_json()
    try:
        yield Outage(relayed, relay, admin["headers"], user, bought.get_json())
    finally:
        relay.stop()
        with relayed.app_context():
            from zenzefi_backend.extensions import db

            db.engine.dispose()


def concrete_path(rule: str) -> str:
    """The rule with a fresh UUID for each `<uuid:…>` and an upstream path for the proxy's `<anypath:…>`."""
    return PLACEHOLDER.sub(lambda found: str(uuid.uuid4()) if found[1] == "uuid" else "certificates/list", rule)


def every_route(app: Flask) -> list[tuple[str, str]]:
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(SKIPPED_RULES):
            continue
        path = "/api/v1/proxy/certificates/list" if rule.rule == "/api/v1/proxy" else concrete_path(rule.rule)
        assert "<" not in path, path
        routes.extend((method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"}))
    return routes


def assert_unavailable_or_client_error(response, what: str) -> None:
    assert response.status_code != 500, (what, response.get_data(as_text=True)[:500])
    if response.status_code >= 400:  # pages that need no database (docs, dashboards, /metrics) still serve
        assert response.is_json, (what, response.status_code, response.get_data(as_text=True)[:200])
    if response.status_code == 503:
        body = response.get_json()
        assert body["code"] == 503 and body["status"] == "Service Unavailable", (what, body)
        retry_after = str(DATABASE_RETRY_AFTER_SECONDS)
        assert response.headers.get("Retry-After") == retry_after == str(body.get("retry_after")), \
            (what, dict(response.headers), body)


def test_every_route_answers_503_not_500_while_the_database_is_away_and_recovers(outage):
    client = outage.app.test_client()
    proxy_headers = {"X-Access-Token": outage.token["token"], "X-Device-ID": "a" * 20}
    unknown_token = {"X-Access-Token": uuid.uuid4().hex * 2, "X-Device-ID": "b" * 20}
    assert client.get("/api/v1/users/me", headers=outage.user["headers"]).status_code == 200

    outage.relay.stop()
    answered: dict[tuple[str, str, str], int] = {}
    for method, path in every_route(outage.app):
        for who, headers in (("superuser", {**outage.admin_headers, **unknown_token}), ("anonymous", {})):
            body = {} if method in ("POST", "PUT", "PATCH") else None
            response = client.open(path, method=method, json=body, headers=headers)
            assert_unavailable_or_client_error(response, f"{who} {method} {path}")
            answered[(who, method, path)] = response.status_code

    # The requests that get past validation reach the database: the money paths, the logins, the proxy.
    user_headers = outage.user["headers"]
    meaningful = {
        "login": client.post("/api/v1/auth/login", json={"email": outage.user["email"], "password": PASSWORD}),
        "register": client.post("/api/v1/auth/register", json={"email": "new@example.com", "username": "newbie",
                                                               "password": PASSWORD}),
        "me (is_revoked)": client.get("/api/v1/users/me", headers=user_headers),
        "purchase": client.post("/api/v1/tokens/purchase", json={"duration_hours": 1}, headers=user_headers),
        "purchase, idempotent": client.post("/api/v1/tokens/purchase", json={"duration_hours": 1},
                                            headers={**user_headers, "Idempotency-Key": "k-1"}),
        "revoke": client.delete(f"/api/v1/tokens/{outage.token['id']}", headers=user_headers),
        "adjustment": client.post(f"/api/v1/admin/users/{outage.user['id']}/balance-adjustments",
                                  json={"amount": "5.00", "reason": "outage"}, headers=outage.admin_headers),
        "proxy, unknown token (fast path)": client.get("/api/v1/proxy/certificates/list", headers=unknown_token),
        "proxy status": client.get("/api/v1/proxy/status", headers={"X-Access-Token": uuid.uuid4().hex * 2}),
        "webhook endpoint": client.post("/api/v1/webhooks/endpoints", json={"url": "https://example.com/hook",
                                                                            "events": ["token.purchased"]},
                                        headers=user_headers),
    }
    for what, response in meaningful.items():
        assert_unavailable_or_client_error(response, what)
        assert response.status_code == 503, (what, response.status_code, response.get_json())
    superuser_routes = [key for key in answered if key[0] == "superuser" and key[2].startswith("/api/v1/")]
    assert sum(answered[key] == 503 for key in superuser_routes) >= len(superuser_routes) - 10, answered

    outage.relay.start()
    recovered = {
        "me": client.get("/api/v1/users/me", headers=user_headers).status_code,
        "proxy status": client.get("/api/v1/proxy/status", headers=proxy_headers).status_code,
        "adjustment": client.post(f"/api/v1/admin/users/{outage.user['id']}/balance-adjustments",
                                  json={"amount": "5.00", "reason": "after"}, headers=outage.admin_headers).status_code,
        "purchase": client.post("/api/v1/tokens/purchase", json={"duration_hours": 1},
                                headers=user_headers).status_code,
    }
    assert recovered == {"me": 200, "proxy status": 200, "adjustment": 201, "purchase": 201}, recovered


def _wrapped(driver_error: Exception, kind: type[sa.exc.DBAPIError] = sa.exc.OperationalError, **flags):
    return kind("SELECT 1", {}, driver_error, **flags)


@pytest.mark.parametrize(("error", "unreachable"), [
    (_wrapped(psycopg.OperationalError("connection failed: Connection refused")), True),
    (_wrapped(psycopg.errors.AdminShutdown("terminating connection due to administrator command")), True),
    (_wrapped(psycopg.errors.CannotConnectNow("the database system is starting up")), True),
    (_wrapped(psycopg.errors.TooManyConnections("sorry, too many clients already")), True),
    (_wrapped(psycopg.InterfaceError("the connection is closed"), sa.exc.InterfaceError), True),
    (_wrapped(psycopg.errors.UndefinedTable("relation does not exist"), sa.exc.ProgrammingError), False),
    (_wrapped(psycopg.errors.UniqueViolation("duplicate key"), sa.exc.IntegrityError), False),
    (_wrapped(psycopg.errors.DivisionByZero("division by zero"), sa.exc.DataError), False),
    (_wrapped(sqlite3.OperationalError("no such table: users")), False),
    (sa.exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached"), True),
    (RuntimeError("a bug"), False),
    (InternalServerError(original_exception=_wrapped(psycopg.OperationalError("server closed the connection"))), True),
    (InternalServerError(original_exception=KeyError("a bug")), False),
])
def test_what_counts_as_the_database_being_unreachable(error, unreachable):
    assert database_unreachable(error) is unreachable


def test_an_invalidated_connection_counts_whatever_the_driver_said():
    assert database_unreachable(_wrapped(psycopg.errors.UndefinedTable("x"), sa.exc.ProgrammingError,
                                         connection_invalidated=True))


def test_a_busy_sqlite_database_counts():
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorname = "SQLITE_BUSY"
    assert database_unreachable(_wrapped(busy))


def test_no_pooled_connection_free_within_the_pool_timeout_is_a_503(app, backends, accounts):
    """Every connection of the process's pool is busy (a stuck query, a burst): the request that waited
    `pool_timeout` for one gets a 503, and the next one, once connections are free, is served."""
    if not backends.is_postgres:
        pytest.skip("needs PostgreSQL (TEST_DATABASE_URL): the pool sizes and timeout are PostgreSQL's")
    from zenzefi_backend import create_app
    from zenzefi_backend.extensions import db

    config = {name: app.config[name] for name in ("ZENZEFI_ENV", "DATABASE_URL", "REDIS_URL", "ZENZEFI_UPSTREAM_URL",
                                                  "PASSWORD_HASH_TIME_COST", "PASSWORD_HASH_MEMORY_KIB")}
    busy = create_app({**config, "RATELIMIT_ENABLED": False})
    user = accounts.signed_in()
    options = busy.config["SQLALCHEMY_ENGINE_OPTIONS"]
    with busy.app_context():
        held = [db.engine.connect() for _ in range(options["pool_size"] + options["max_overflow"])]
        try:
            waited = busy.test_client().get("/api/v1/users/me", headers=user["headers"])
        finally:
            for connection in held:
                connection.close()
        assert waited.status_code == 503, waited.get_json()
        assert waited.headers["Retry-After"] == str(DATABASE_RETRY_AFTER_SECONDS)
        assert busy.test_client().get("/api/v1/users/me", headers=user["headers"]).status_code == 200
        db.engine.dispose()


def test_a_connection_dropped_before_the_end_of_request_rollback_is_not_a_500(app, backends, accounts):
    """PostgreSQL terminates the request's connection (57P01, as a restart does) after the last query but before
    the app context's teardown rolls the session back: the answer already made stands — that ROLLBACK has nothing
    to undo on a connection the server dropped — instead of the teardown's error escaping Flask as a 500 (seen
    under load in tests/e2e/test_database_restart_e2e.py), and the dropped connection goes back to no one."""
    if not backends.is_postgres:
        pytest.skip("needs PostgreSQL (TEST_DATABASE_URL): the server terminates the connection")
    from zenzefi_backend import create_app
    from zenzefi_backend.extensions import db

    config = {name: app.config[name] for name in ("ZENZEFI_ENV", "DATABASE_URL", "REDIS_URL", "ZENZEFI_UPSTREAM_URL",
                                                  "PASSWORD_HASH_TIME_COST", "PASSWORD_HASH_MEMORY_KIB")}
    dropping = create_app({**config, "RATELIMIT_ENABLED": False})
    killer = sa.create_engine(sa.engine.make_url(backends.database_url).set(drivername="postgresql+psycopg"),
                              poolclass=sa.pool.NullPool)

    @dropping.after_request
    def terminate_the_request_connection(response):
        backend_pid = db.session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with killer.begin() as connection:
            assert connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend_pid}).scalar()
        return response

    user = accounts.signed_in()
    try:
        answered = dropping.test_client().get("/api/v1/currency/balance", headers=user["headers"])
        assert answered.status_code == 200, answered.get_json()
        assert answered.get_json()["balance"] == "0.00"
        with dropping.app_context():
            assert db.engine.pool.checkedout() == 0  # the dropped connection did not leak out of the pool
            dropping.after_request_funcs[None].remove(terminate_the_request_connection)
            again = dropping.test_client().get("/api/v1/currency/balance", headers=user["headers"])
            assert again.status_code == 200, again.get_json()
    finally:
        killer.dispose()
        with dropping.app_context():
            db.engine.dispose()
