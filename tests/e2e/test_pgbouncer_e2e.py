"""Behind PgBouncer in transaction pooling mode: what the app must not do there, and PgBouncer going away.

The money races (tests/money/test_concurrency.py) and the proxy end to end (tests/e2e/test_proxy_e2e.py) run a
second time through PgBouncer via `database_route`; this module holds what is specific to the pooler.
"""
from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.e2e.harness import (
    DEVICE_A,
    DEVICE_B,
    PROXY,
    DatabaseRoute,
    Gunicorn,
    PgBouncer,
    Upstream,
    real_services,
    require_real_services,
    wait_for,
)
from tests.money.helpers import assert_ledger_verifies, tokens
from zenzefi_backend.config import build_config

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, real_services]

ROUNDS = 8  # psycopg prepares a statement on the server from its 5th run on one connection


def engine_for(url: str, transaction_pooling: bool, tmp_path) -> sa.Engine:
    """An engine with exactly the options the app would use for this URL."""
    config = build_config(str(tmp_path), environ={"DATABASE_URL": url,
                                                  "DATABASE_TRANSACTION_POOLING": str(transaction_pooling)})
    return sa.create_engine(config["SQLALCHEMY_DATABASE_URI"], **config["SQLALCHEMY_ENGINE_OPTIONS"])


def alternate_transactions(engine: sa.Engine) -> None:
    """Two pooled connections take turns running the same query, each turn its own transaction."""
    first, second = engine.connect(), engine.connect()
    try:
        for round_number, connection in zip(range(2 * ROUNDS), itertools.cycle((first, second)), strict=False):
            with connection.begin():
                assert connection.execute(sa.text("SELECT CAST(:n AS integer) + 1"),
                                          {"n": round_number}).scalar_one() == round_number + 1
    finally:
        first.close()
        second.close()


def test_behind_transaction_pooling_prepared_statements_are_off(backends, tmp_path):
    """With one server connection for two clients, each client's transactions run on the connection the other
    one prepared its statements on: psycopg's default (prepare from the 5th run) fails; the switch makes it work."""
    require_real_services(backends)
    with PgBouncer(backends.database_url, pool_size=1) as bouncer:
        url = bouncer.url()
        plain = engine_for(url, transaction_pooling=False, tmp_path=tmp_path)
        try:
            with pytest.raises(sa.exc.DBAPIError, match="prepared statement"):
                alternate_transactions(plain)
        finally:
            plain.dispose()
        pooled = engine_for(url, transaction_pooling=True, tmp_path=tmp_path)
        try:
            alternate_transactions(pooled)
        finally:
            pooled.dispose()


@pytest.fixture
def bouncer(backends) -> Iterator[PgBouncer]:
    """A PgBouncer of this test's own (the session's one stays up for the other tests)."""
    require_real_services(backends)
    with PgBouncer(backends.database_url) as started:
        yield started


def proxied(server: Gunicorn, secret: str, device: str = DEVICE_A):
    return server.get(f"{PROXY}/certificates/{uuid.uuid4().hex[:8]}",
                      headers={"X-Access-Token": secret, "X-Device-ID": device})


def test_pgbouncer_refusing_connections_then_coming_back(services, bouncer, accounts, client):
    route = DatabaseRoute("pgbouncer", bouncer.url(services.database_url))
    user = accounts.signed_in()
    accounts.fund(user["id"], "100.00")
    admin = accounts.signed_in(superuser=True)
    with Upstream() as upstream, \
            Gunicorn(route.url, services.redis_url, {**route.env, "ZENZEFI_UPSTREAM_URL": upstream.url}) as server:
        bought = server.call("POST", "/api/v1/tokens/purchase", {"duration_hours": 24}, user["headers"])
        assert bought.status == 201, server.describe(repr(bought))
        secret = bought.json()["token"]
        for _ in range(6):  # on fresh connections: both workers have it warm
            assert proxied(server, secret).status == 200

        bouncer.stop()
        # While it lasts: readiness says why (a load balancer takes the host out), warm proxying goes on without
        # the database, and the device rule still holds (it lives in Redis).
        ready = server.get("/health/ready", timeout=5)
        assert ready.status == 503 and ready.headers["Content-Type"].startswith("application/json"), ready
        assert ready.json()["checks"]["database"] == "down" and "database" in ready.json()["message"], ready
        for _ in range(6):
            answer = proxied(server, secret)
            assert answer.status == 200, server.describe(repr(answer))
            busy = proxied(server, secret, DEVICE_B)
            assert busy.status == 409 and int(busy.headers["Retry-After"]) >= 1, busy
        # What needs the database says so: 503 JSON with Retry-After, never a 500, and nothing is bought.
        for method, path, body in (("POST", "/api/v1/tokens/purchase", {"duration_hours": 24}),
                                   ("GET", "/api/v1/currency/balance", None), ("GET", "/api/v1/users/me", None)):
            refused = server.call(method, path, body, user["headers"])
            assert refused.status == 503, server.describe(repr(refused))
            assert refused.headers["Content-Type"].startswith("application/json"), refused
            assert refused.json()["code"] == 503 and int(refused.headers["Retry-After"]) >= 1, refused

        bouncer.start()
        # Back by itself: the pooled connections that broke are replaced (pre-ping), no restart.
        wait_for(lambda: server.get("/health/ready").status == 200, 15,
                 lambda: server.describe("not ready again after PgBouncer came back"))
        again = server.call("POST", "/api/v1/tokens/purchase", {"duration_hours": 24}, user["headers"])
        assert again.status == 201, server.describe(repr(again))
        assert proxied(server, again.json()["token"], DEVICE_B).status == 200
    assert {token["id"] for token in tokens(client, user)} == {bought.json()["id"], again.json()["id"]}
    assert_ledger_verifies(client, admin)
