"""`/health` and `/health/ready` under gunicorn (2 workers) while PostgreSQL, Redis or the upstream die or hang.

The app reaches PostgreSQL and Redis through TCP relays; stopping a relay looks like the server died
(connections reset, new connects refused), `hang()` like a server that accepts but never answers.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.harness import LOOPBACK, Gunicorn, Response, Upstream, real_services, wait_for

pytestmark = [pytest.mark.e2e, real_services]

# Refresh the cached check every second so state changes show within a few seconds, not 50.
HEALTH_ENV = {"HEALTH_REFRESH_SECONDS": "1", "HEALTH_TTL_SECONDS": "5"}
FAST_SECONDS = 0.1
TIMED_REQUESTS = 20
SETTLE_SECONDS = 10.0
# Both workers keep their own cache and the kernel picks the worker: several answers in a row must agree.
STREAK = 6


def checked_status(response: Response) -> str | None:
    """The status of a finished check; None for the placeholder answered while the first check runs."""
    assert response.status == 200, response
    body = response.json()
    assert body["status"] in {"healthy", "degraded", "unhealthy"}, body
    return None if "message" in body else body["status"]


def settle(server: Gunicorn, path: str, accept, timeout: float = SETTLE_SECONDS, streak: int = STREAK) -> list:
    """Poll `path` until `streak` answers in a row satisfy `accept`; fail with what was seen."""
    seen: list[Response] = []
    in_a_row = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = server.get(path)
        seen.append(response)
        in_a_row = in_a_row + 1 if accept(response) else 0
        if in_a_row >= streak:
            return seen[-streak:]
        time.sleep(0.05)
    pytest.fail(server.describe(f"{path} did not settle within {timeout} s; last answers: {seen[-streak:]}"))


def settle_health(server: Gunicorn, expected: str) -> None:
    settle(server, "/health", lambda response: checked_status(response) == expected)


def assert_health_fast(server: Gunicorn, allowed: set[str]) -> None:
    """`TIMED_REQUESTS` sequential `/health` calls, each answered 200 in under 100 ms (wall time).

    `allowed` includes the state before the change: each worker serves its cached report until that
    report is `HEALTH_REFRESH_SECONDS` old, and the kernel decides which worker answers.
    """
    answers = []
    for _ in range(TIMED_REQUESTS):
        try:
            answers.append(server.get("/health", timeout=3))
        except OSError as exc:
            pytest.fail(server.describe(f"/health did not answer within 3 s ({exc!r}) after {answers}"))
    slowest = max(answers, key=lambda response: response.seconds)
    assert slowest.seconds < FAST_SECONDS, server.describe(
        f"/health took {slowest.seconds * 1000:.1f} ms (limit {FAST_SECONDS * 1000:.0f} ms): "
        f"{[round(r.seconds * 1000, 1) for r in answers]}")
    for response in answers:
        assert response.status == 200 and response.json()["status"] in allowed, server.describe(repr(response))


def test_health_reports_upstream_then_redis_outage_and_stays_fast(services):
    database = services.database_relay()
    redis = services.redis_relay()
    with Upstream() as upstream:
        upstream_link = services.relay(LOOPBACK, upstream.port)
        upstream_link.stop()  # the upstream starts out down
        env = {**HEALTH_ENV, "ZENZEFI_UPSTREAM_URL": f"http://{upstream_link.address}"}
        with Gunicorn(services.database_url_via(database), services.redis_url_via(redis), env) as server:
            settle_health(server, "degraded")

            upstream_link.start()
            # Every worker must have seen the upstream come back, or one may still answer its cached "degraded".
            settle_on_every_worker(server, "/health", lambda response: checked_status(response) == "healthy")

            redis.stop()
            assert_health_fast(server, {"healthy", "unhealthy"})
            settle_health(server, "unhealthy")
            assert_health_fast(server, {"healthy", "unhealthy"})

            redis.start()
            settle_health(server, "healthy")


def test_health_is_degraded_when_the_configured_upstream_is_down(services):
    database = services.database_relay()
    redis = services.redis_relay()
    env = {**HEALTH_ENV, "ZENZEFI_UPSTREAM_URL": "http://127.0.0.1:9"}
    with Gunicorn(services.database_url_via(database), services.redis_url_via(redis), env) as server:
        settle_health(server, "degraded")
        assert_health_fast(server, {"degraded"})


def is_ready(response: Response) -> bool:
    return response.status == 200 and response.json()["status"] == "ready"


def not_ready_because_of(dependency: str):
    def accept(response: Response) -> bool:
        if response.status != 503:
            return False
        body = response.json()
        assert response.headers.get("Content-Type", "").startswith("application/json"), response
        assert body["code"] == 503, body
        assert dependency in body["message"].lower(), body
        assert body.get("checks", {}).get(dependency) == "down", body
        return True

    return accept


@pytest.mark.parametrize("dependency", ["database", "redis"])
def test_readiness_follows_a_dependency_that_dies_and_comes_back(services, dependency):
    database = services.database_relay()
    redis = services.redis_relay()
    relay = database if dependency == "database" else redis
    with Gunicorn(services.database_url_via(database), services.redis_url_via(redis), HEALTH_ENV) as server:
        master = server.pid
        settle(server, "/health/ready", is_ready)

        relay.stop()
        settle(server, "/health/ready", not_ready_because_of(dependency))
        assert_health_fast(server, {"degraded", "unhealthy"})

        relay.start()  # same port: the app must reconnect on its own, no restart
        settle(server, "/health/ready", is_ready)
        assert server.alive() and server.pid == master, server.describe("gunicorn restarted")


@pytest.mark.parametrize("dependency", ["database", "redis"])
def test_health_stays_fast_while_a_dependency_hangs(services, dependency):
    database = services.database_relay()
    redis = services.redis_relay()
    relay = database if dependency == "database" else redis
    with Gunicorn(services.database_url_via(database), services.redis_url_via(redis), HEALTH_ENV) as server:
        settle_health(server, "degraded")  # everything up but the upstream (127.0.0.1:9)

        relay.hang()
        assert_health_fast(server, {"degraded", "unhealthy"})
        # A hung dependency is a down one: the bounded check times out and the cache says so.
        settle_health(server, "unhealthy")
        assert_health_fast(server, {"degraded", "unhealthy"})

        relay.stop()
        relay.start()
        settle_health(server, "degraded")


def settle_on_every_worker(server: Gunicorn, path: str, accept) -> None:
    """`settle`, then keep asking until every worker has answered `path` (and so holds a pooled connection)."""
    settle(server, path, accept)
    wait_for(lambda: accept(server.get(path)) and len(set(server.served("GET", path))) >= server.workers,
             SETTLE_SECONDS, lambda: server.describe(f"not every worker answered {path}"))


READY_LIMIT_SECONDS = 5.0  # the readiness wait (1 s) plus slack


def test_readiness_answers_503_promptly_while_the_database_hangs(services):
    database = services.database_relay()
    redis = services.redis_relay()
    with Gunicorn(services.database_url_via(database), services.redis_url_via(redis), HEALTH_ENV) as server:
        settle_on_every_worker(server, "/health/ready", is_ready)
        try:
            database.hang()
            for _ in range(2 * server.workers):
                try:
                    response = server.get("/health/ready", timeout=READY_LIMIT_SECONDS + 2)
                except OSError as exc:
                    pytest.fail(f"/health/ready did not answer while the database hangs: {exc!r}")
                assert not_ready_because_of("database")(response), response
                assert response.seconds < READY_LIMIT_SECONDS, response
        finally:
            database.stop()  # frees the stuck gunicorn threads, so the server can shut down at once


def test_health_stays_fast_while_readiness_probes_pile_up_on_a_hung_database(services):
    database = services.database_relay()
    redis = services.redis_relay()
    with Gunicorn(services.database_url_via(database), services.redis_url_via(redis), HEALTH_ENV) as server:
        settle_health(server, "degraded")
        with ThreadPoolExecutor(32) as pool:  # each worker's pool now holds a connection per thread
            assert {response.status for response in pool.map(lambda _: server.get("/health/ready"), range(64))} \
                == {200}
        try:
            database.hang()

            def probe(_) -> int | None:  # like a load balancer: give up after 1 s, probe again later
                try:
                    return server.get("/health/ready", timeout=1).status
                except OSError:
                    return None

            with ThreadPoolExecutor(32) as pool:
                list(pool.map(probe, range(40)))
            assert_health_fast(server, {"degraded", "unhealthy"})
        finally:
            database.stop()
