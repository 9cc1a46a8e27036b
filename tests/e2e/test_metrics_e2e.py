"""`/metrics` under gunicorn with 2 workers: counters add up across workers (HTTP, business and proxy
counters), gauges agree whichever worker answers; the optional bearer token."""
from __future__ import annotations

from collections import Counter

import pytest

from tests.e2e.harness import PURCHASE, Gunicorn, Upstream, counted, real_services, wait_for

pytestmark = [pytest.mark.e2e, real_services]

REQUESTS = 40
METRICS_READS = 10
MAX_METRICS_READS = 60
LIVE_ENDPOINT = "health.Live"
METRICS_TOKEN = "s3cret-e2e-metrics-token-0123456789"
MIN_EVENTS = 6
MAX_EVENTS = 40
PROXIED = "/api/v1/proxy/certificates/filter"


def live_requests_counted(exposition: str) -> tuple[float, float]:
    """GET /health/live as the exporter sees it: the request counter, and the endpoint's own series.

    `flask_http_request_total` is labelled by method and status only (prometheus-flask-exporter),
    so the per-endpoint figure is the request-duration histogram's `_count`.
    """
    return (counted(exposition, "flask_http_request_total", method="GET", status="200"),
            counted(exposition, "flask_http_request_duration_seconds_count",
                    method="GET", status="200", endpoint=LIVE_ENDPOINT))


def read_metrics(server: Gunicorn) -> tuple[float, float]:
    response = server.get("/metrics")
    assert response.status == 200, server.describe(repr(response))
    assert response.headers["Content-Type"].startswith("text/plain"), response.headers
    return live_requests_counted(response.text)


def test_request_counter_sums_every_worker(services):
    with Gunicorn(services.database_url, services.redis_url) as server:
        # Start-up probes were counted too (some may have been answered to a client that had given up).
        before = read_metrics(server)
        connections = server.connection_to_each_worker()  # so that both workers count some of ours
        already_served = len(server.served("GET", "/health/live"))
        for index in range(REQUESTS):
            assert connections[index % len(connections)].call("GET", "/health/live").status == 200
        for connection in connections:
            connection.close()
        ours = wait_for(lambda: server.served("GET", "/health/live")[already_served:]
                        if len(server.served("GET", "/health/live")) >= already_served + REQUESTS else None,
                        5, lambda: server.describe("the access log does not show our requests"))
        workers = set(ours)
        assert len(workers) == 2, server.describe(
            f"all {len(ours)} requests went to one worker, so nothing is summed across workers")

        # Read until each worker has answered /metrics itself: the figure must not depend on which one does.
        readings = []
        for _ in range(MAX_METRICS_READS):
            readings.append(read_metrics(server))
            if len(readings) >= METRICS_READS and set(server.served("GET", "/metrics")) >= workers:
                break
        assert set(server.served("GET", "/metrics")) >= workers, server.describe(
            f"/metrics was not served by every worker in {len(readings)} reads")
        # /metrics itself is excluded from the counts, and ours were the only other requests made.
        expected = (before[0] + REQUESTS, before[1] + REQUESTS)
        assert readings == [expected] * len(readings), server.describe(
            f"before: {before}; {REQUESTS} requests served by workers {sorted(workers)} "
            f"({sorted(Counter(ours).items())}); /metrics said {readings} "
            f"(served by {server.served('GET', '/metrics')})")


def test_metrics_token_is_required_when_configured(services):
    with Gunicorn(services.database_url, services.redis_url, {"METRICS_TOKEN": METRICS_TOKEN}) as server:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic czNjcmV0"}):
            response = server.get("/metrics", headers=headers)
            assert response.status == 401, server.describe(f"{headers}: {response}")
            assert response.headers["Content-Type"].startswith("application/json"), response.headers
            body = response.json()
            assert body["code"] == 401 and body["message"], body
            assert "flask_http_request_total" not in response.text

        response = server.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert response.status == 200, server.describe(repr(response))
        assert live_requests_counted(response.text)[1] >= 1, response.text[:2000]


def until_both_workers(server: Gunicorn, method: str, path: str, action) -> int:
    """Repeat `action` (one request to `method path`) until both workers have served it; how many were made."""
    already = len(server.served(method, path))
    made = 0
    while made < MAX_EVENTS:
        action()
        made += 1
        if made >= MIN_EVENTS and len(set(server.served(method, path)[already:])) == 2:
            return made
    pytest.fail(server.describe(f"{made} × {method} {path} never reached both workers"))


def test_business_and_proxy_counters_sum_every_worker(services):
    with Upstream() as upstream, Gunicorn(services.database_url, services.redis_url,
                                          {"ZENZEFI_UPSTREAM_URL": upstream.url}) as server:
        user = server.sign_up()
        topped_up = server.call("POST", "/api/v1/currency/mock-purchase", {"amount": "1000.00"}, user["headers"])
        assert topped_up.status == 201, server.describe(repr(topped_up))
        tokens = []

        def buy() -> None:
            response = server.call("POST", PURCHASE, {"duration_hours": 1}, user["headers"])
            assert response.status == 201, server.describe(repr(response))
            tokens.append(response.json()["token"])

        bought = until_both_workers(server, "POST", PURCHASE, buy)
        device = {"X-Access-Token": tokens[0], "X-Device-ID": "e2e-metrics-device-01"}

        def proxy() -> None:
            response = server.call("GET", PROXIED, headers=device)
            assert response.status == 200 and response.body == b"upstream ok", server.describe(repr(response))

        proxied = until_both_workers(server, "GET", PROXIED, proxy)

        expected = {
            ("token_purchases_total", (("duration_hours", "1"),)): bought,
            ("znc_revenue_total", ()): bought * 1.0,  # TOKEN_PRICE_1H
            ("proxy_requests_total", (("method", "GET"), ("status", "200"))): proxied,
            ("balance_deposits_total", ()): 1,
            ("auth_attempts_total", (("result", "success"),)): 1,
            ("total_users", ()): 1,
            ("active_tokens", ()): 1,  # the token the proxy activated
        }
        readings = []
        for _ in range(MAX_METRICS_READS):
            response = server.get("/metrics")
            assert response.status == 200, server.describe(repr(response))
            readings.append({key: counted(response.text, key[0], **dict(key[1])) for key in expected})
            if len(readings) >= METRICS_READS and len(set(server.served("GET", "/metrics"))) == 2:
                break
        assert len(set(server.served("GET", "/metrics"))) == 2, server.describe("/metrics came from one worker")
        assert readings == [expected] * len(readings), server.describe(
            f"{bought} purchases by workers {sorted(Counter(server.served('POST', PURCHASE)).items())}, "
            f"{proxied} proxied by {sorted(Counter(server.served('GET', PROXIED)).items())}; /metrics said "
            f"{[r for r in readings if r != expected][:2]} (served by {server.served('GET', '/metrics')})")
