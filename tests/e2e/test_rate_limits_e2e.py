"""The per-user API limit under gunicorn with 2 workers on real Redis: one counter for both workers.

With per-process (memory) counters each worker would let LIMIT requests through, 2 × LIMIT in all; here
exactly LIMIT pass, `X-RateLimit-Remaining` counts down through both workers without a repeat, and every
request over the limit is a 429 whichever worker answers it. (Recovery after the window is shown in-process
with a moved clock: tests/plans/test_rate_limits.py.)
"""
from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from tests.e2e.harness import Gunicorn, real_services

pytestmark = [pytest.mark.e2e, real_services]

LIMIT = 30
ME = "/api/v1/users/me"
PLANS = "/api/v1/plans"


def make_superuser(database_url: str, user_id: str) -> None:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE users SET is_superuser = true WHERE id = :id"),
                               {"id": uuid.UUID(user_id)})
    finally:
        engine.dispose()


def exhaust_and_overrun(server: Gunicorn, path: str, headers: dict[str, str] | None = None) -> None:
    """LIMIT requests pass with one shared countdown; then 429 on both workers. The requests take turns over one
    keep-alive connection to each worker, so both workers count (the kernel may hand new connections to one)."""
    connections = server.connection_to_each_worker()
    already = len(server.served("GET", path))
    remaining = []
    for index in range(LIMIT):
        response = connections[index % len(connections)].call("GET", path, headers=headers)
        assert response.status == 200, server.describe(repr(response))
        assert response.headers["X-RateLimit-Limit"] == str(LIMIT)
        assert "Retry-After" not in response.headers, server.describe(repr(response))
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == list(range(LIMIT - 1, -1, -1)), server.describe(f"not one counter: {remaining}")
    allowed_by = set(server.served("GET", path)[already:])
    assert len(allowed_by) == 2, server.describe(f"all {LIMIT} requests went to one worker: {allowed_by}")

    for connection in connections:
        response = connection.call("GET", path, headers=headers)
        assert response.status == 429, server.describe(repr(response))
        assert response.json()["code"] == 429 and 0 < int(response.headers["Retry-After"]) <= 60
        assert response.headers["X-RateLimit-Remaining"] == "0"
        connection.close()
    refused_by = set(server.served("GET", path)[already + LIMIT:])
    assert refused_by == allowed_by, server.describe(f"429s only from {refused_by}, not from {allowed_by}")


def test_a_users_limit_is_one_counter_for_both_workers(services):
    with Gunicorn(services.database_url, services.redis_url, {"RATELIMIT_API_FREE": str(LIMIT)}) as server:
        user = server.sign_up()
        exhaust_and_overrun(server, ME, user["headers"])
        other = server.sign_up()  # another user has a budget of their own
        assert server.call("GET", ME, headers=other["headers"]).status == 200


def test_the_anonymous_limit_per_ip_is_shared_and_a_superuser_is_never_limited(services):
    env = {"RATELIMIT_API_FREE": str(LIMIT), "TRUSTED_PROXY_HOPS": "1"}
    with Gunicorn(services.database_url, services.redis_url, env) as server:
        admin = server.sign_up()
        make_superuser(services.database_url, admin["id"])
        login = server.call("POST", "/api/v1/auth/login", {"email": admin["email"], "password": "correct horse 1"})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        # Anonymous requests count against the client's address (here as a trusted reverse proxy reports it).
        client = {"X-Forwarded-For": "203.0.113.9"}
        exhaust_and_overrun(server, PLANS, client)
        assert server.call("GET", PLANS, headers={"X-Forwarded-For": "203.0.113.10"}).status == 200
        for _ in range(LIMIT + 10):
            response = server.call("GET", ME, headers=headers)
            assert response.status == 200, server.describe(repr(response))
            assert "X-RateLimit-Limit" not in response.headers
