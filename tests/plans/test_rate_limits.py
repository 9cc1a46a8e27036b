"""The per-user API limit by plan (SPEC §3.8): counted per user (per client IP without a valid JWT) over every
/api/v1 route, by the user's current plan; superusers, health, docs, metrics, proxy and the payment webhook
are exempt; 429 in the error shape with `Retry-After`; `X-RateLimit-*` on every limited response.

Time is moved, never slept: `limit_clock` gives the limiter a fresh in-memory storage for the test and
replaces the `time` module that the `limits` storage, its strategies and Flask-Limiter's header code read
with a clock the test advances. (The Redis storage expires windows by Redis's own clock, which a test cannot
move; that the counters are shared through Redis by several gunicorn workers is shown by
tests/e2e/test_rate_limits_e2e.py.)
"""
from __future__ import annotations

import time as real_time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from flask_jwt_extended import create_access_token
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from zenzefi_backend import clock
from zenzefi_backend.accounts.models import User
from zenzefi_backend.extensions import db, limiter
from zenzefi_backend.limit_headers import in_words

from .helpers import MY_PLAN, PLANS, buy, set_plan

LIMITS = {"free": 3, "premium": 5, "enterprise": 7}
LIMITED_ROUTES = ("/api/v1/users/me", "/api/v1/currency/balance", MY_PLAN, "/api/v1/tokens/my-tokens")


@pytest.fixture(autouse=True)
def api_limits(app, monkeypatch):
    for plan, per_minute in LIMITS.items():
        monkeypatch.setitem(app.config, f"RATELIMIT_API_{plan.upper()}", per_minute)


@contextmanager
def unlimited(app) -> Iterator[None]:
    """Sign-ups and logins (counted by client IP) made meanwhile do not draw on the low limits: the
    limiter's counter key includes the limit, so they count against another, very high one."""
    saved = {f"RATELIMIT_API_{plan.upper()}": app.config[f"RATELIMIT_API_{plan.upper()}"] for plan in LIMITS}
    app.config.update(dict.fromkeys(saved, 1_000_000))
    try:
        yield
    finally:
        app.config.update(saved)


def signed_in(app, accounts, **overrides) -> dict:
    with unlimited(app):
        return accounts.signed_in(**overrides)


class LimitClock:
    """Stands in for the `time` module: `time()` is the test's, everything else is the real module's."""

    def __init__(self) -> None:
        self.now = real_time.time()

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str):
        return getattr(real_time, name)


@pytest.fixture
def limit_clock(monkeypatch) -> LimitClock:
    fake = LimitClock()
    for module in ("limits.storage.memory", "limits.strategies", "flask_limiter._extension",
                   "zenzefi_backend.limit_headers"):
        monkeypatch.setattr(f"{module}.time", fake)
    storage = MemoryStorage()
    monkeypatch.setattr(limiter, "_storage", storage)
    monkeypatch.setattr(limiter, "_limiter", FixedWindowRateLimiter(storage))
    return fake


def exhaust(client, user: dict, limit: int) -> None:
    for index in range(limit):
        route = LIMITED_ROUTES[index % len(LIMITED_ROUTES)]  # every route draws on the same budget
        response = client.get(route, headers=user["headers"])
        assert response.status_code == 200, (index, response.get_json())
        assert response.headers["X-RateLimit-Limit"] == str(limit)
        assert response.headers["X-RateLimit-Remaining"] == str(limit - index - 1)
        assert int(response.headers["X-RateLimit-Reset"]) > 0


def assert_limited(response, limit: int, plan: str | None) -> None:
    """429 in the error shape; `plan=None` for a request counted by its address."""
    assert response.status_code == 429
    whose = f"on the {plan} plan" if plan else "from this address without signing in"
    body = response.get_json()
    retry_after = int(response.headers["Retry-After"])
    assert 0 < retry_after <= 60 and body["retry_after"] == retry_after
    assert body == {"code": 429, "status": "Too Many Requests", "retry_after": retry_after,
                    "message": f"Too many API requests {whose} (at most {limit} per minute). "
                               f"Try again in {in_words(retry_after)}."}
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert response.headers["X-RateLimit-Remaining"] == "0"


def test_a_free_user_is_limited_across_every_route_and_recovers_after_the_window(app, client, accounts, limit_clock):
    user = signed_in(app, accounts)
    exhaust(client, user, LIMITS["free"])
    for route in LIMITED_ROUTES:
        assert_limited(client.get(route, headers=user["headers"]), 3, "free")
    limit_clock.advance(30)
    assert_limited(client.get(LIMITED_ROUTES[0], headers=user["headers"]), 3, "free")
    limit_clock.advance(31)  # the minute that began with the first request is over
    exhaust(client, user, LIMITS["free"])
    assert_limited(client.get(LIMITED_ROUTES[0], headers=user["headers"]), 3, "free")


def test_users_are_counted_apart(app, client, accounts):
    first, second = signed_in(app, accounts), signed_in(app, accounts)
    exhaust(client, first, 3)
    assert client.get(MY_PLAN, headers=first["headers"]).status_code == 429
    exhaust(client, second, 3)


@pytest.mark.parametrize("plan", ["premium", "enterprise"])
def test_each_plan_has_its_own_limit(app, client, accounts, plan):
    user = signed_in(app, accounts)
    set_plan(app, user["id"], plan, clock.now() + timedelta(days=1))
    exhaust(client, user, LIMITS[plan])
    assert_limited(client.get(MY_PLAN, headers=user["headers"]), LIMITS[plan], plan)


def test_a_plan_bought_applies_from_the_next_request_and_its_expiry_at_once(app, client, accounts):
    user = signed_in(app, accounts)
    accounts.fund(user["id"], "10.00")
    assert buy(client, user, "premium").headers["X-RateLimit-Limit"] == "3"
    exhaust(client, user, LIMITS["premium"])  # a fresh budget: the counter is per limit
    assert client.get(MY_PLAN, headers=user["headers"]).status_code == 429
    with clock.travel(timedelta(days=30, minutes=1)):  # no sweep has run; the plan is already free
        response = client.get(MY_PLAN, headers=user["headers"])
        assert response.status_code == 200 and response.headers["X-RateLimit-Limit"] == "3"


def test_a_superuser_is_never_limited(app, client, accounts, limit_clock):
    admin = signed_in(app, accounts, superuser=True)
    for route in (*LIMITED_ROUTES, PLANS) * 5:
        response = client.get(route, headers=admin["headers"])
        assert response.status_code == 200, (route, response.get_json())
        assert "X-RateLimit-Limit" not in response.headers


def test_without_a_valid_jwt_the_client_ip_is_counted(app, client, accounts, limit_clock):
    user = signed_in(app, accounts)
    assert client.post("/api/v1/auth/logout", headers=user["headers"]).status_code == 204
    for remaining in (2, 1, 0):
        response = client.get(PLANS)
        assert response.status_code == 200 and response.headers["X-RateLimit-Remaining"] == str(remaining)
    assert_limited(client.get("/api/v1/currency/rates"), 3, None)
    # A malformed, expired or revoked JWT is no way around it: such a request counts against the IP too.
    with app.app_context():
        expired = create_access_token(identity=db.session.get(User, uuid.UUID(user["id"])),
                                      expires_delta=timedelta(seconds=-5))
    for token in ("not-a-jwt", expired, user["access_token"]):
        assert client.get(PLANS, headers={"Authorization": f"Bearer {token}"}).status_code == 429
    assert client.get(PLANS, environ_base={"REMOTE_ADDR": "10.4.4.4"}).status_code == 200
    limit_clock.advance(61)
    assert client.get(PLANS).status_code == 200


def test_a_refresh_token_counts_against_its_user(app, client, accounts):
    user = signed_in(app, accounts)
    exhaust(client, user, 3)
    refreshed = client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {user['refresh_token']}"})
    assert_limited(refreshed, 3, "free")


def test_a_signed_in_user_does_not_use_up_the_ip_budget(app, client, accounts):
    user = signed_in(app, accounts)
    exhaust(client, user, 3)
    assert client.get(PLANS).status_code == 200  # the anonymous budget of 127.0.0.1 is another counter


@pytest.mark.parametrize("path", ["/health", "/health/live", "/openapi.json", "/metrics",
                                  "/api/v1/proxy/status", "/api/v1/proxy/certificates/filter"])
def test_health_docs_metrics_and_proxy_are_not_limited(client, path):
    for _ in range(LIMITS["free"] + 3):
        response = client.get(path)
        assert response.status_code != 429, response.get_data()[:200]
        assert "X-RateLimit-Limit" not in response.headers


def test_the_payment_webhook_is_not_limited(client):
    for _ in range(LIMITS["free"] + 3):
        response = client.post("/api/v1/webhooks/payment", data=b"{}", content_type="application/json")
        assert response.status_code == 401 and "X-RateLimit-Limit" not in response.headers


def test_cors_preflights_are_not_counted(app, client, accounts):
    user = signed_in(app, accounts)
    for _ in range(5):
        client.options(MY_PLAN, headers={"Origin": "http://localhost:61000", "Access-Control-Request-Method": "GET"})
    exhaust(client, user, 3)


def test_register_and_failed_login_limits_still_apply_beside_it(app, client, accounts, monkeypatch):
    monkeypatch.setitem(app.config, "RATELIMIT_API_FREE", 100)
    monkeypatch.setitem(app.config, "RATELIMIT_LOGIN_FAILED", "2 per hour")
    user = accounts.register()
    for _ in range(2):
        wrong = client.post("/api/v1/auth/login", json={"email": user["email"], "password": "wrong password"})
        assert wrong.status_code == 401 and wrong.headers["X-RateLimit-Limit"] == "2"
    blocked = client.post("/api/v1/auth/login", json={"email": user["email"], "password": user["password"]})
    assert blocked.status_code == 429 and "Retry-After" in blocked.headers


def test_retry_after_is_only_on_the_429(app, client, accounts, limit_clock):
    """Every response of a limited route says how much is left; only the refusal says when to come back."""
    user = signed_in(app, accounts)
    answers = [client.get(PLANS, headers=user["headers"]),                                      # 200
               client.get(f"/api/v1/tokens/{uuid.uuid4()}", headers=user["headers"]),            # 404
               client.post("/api/v1/tokens/purchase", json={"duration_hours": 24}, headers=user["headers"])]  # 402
    assert [answer.status_code for answer in answers] == [200, 404, 402]
    refused = client.get(PLANS, headers=user["headers"])
    assert refused.status_code == 429
    for answer in answers:
        assert "Retry-After" not in answer.headers, (answer.status_code, dict(answer.headers))
        assert answer.headers["X-RateLimit-Limit"] == "3" and "X-RateLimit-Reset" in answer.headers
    assert [answer.headers["X-RateLimit-Remaining"] for answer in answers] == ["2", "1", "0"]
    assert "Retry-After" in refused.headers


@pytest.mark.parametrize("waited, expected", [(0.5, 60), (0.0, 60), (30.2, 30), (59.9, 1)])
def test_retry_after_is_the_time_left_rounded_up(app, client, accounts, limit_clock, waited, expected):
    """A window that started at T0 frees up at T0 + 60 s: at T0 + 0.5 s that is 59.5 s away, so 60, never 59."""
    user = signed_in(app, accounts)
    start = limit_clock.now = float(int(limit_clock.now)) + 0.7  # the window starts at a fraction of a second
    exhaust(client, user, LIMITS["free"])
    limit_clock.now = start + waited
    refused = client.get(PLANS, headers=user["headers"])
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) == expected == refused.get_json()["retry_after"]
    limit_clock.now = start + 59.99
    assert client.get(PLANS, headers=user["headers"]).status_code == 429  # the window is still on …
    limit_clock.now = start + 60
    assert client.get(PLANS, headers=user["headers"]).status_code == 200  # … until its end


def test_retry_after_rounds_the_redis_expiry_up(app, client, accounts):
    """On Redis the window's end comes from PTTL: its TTL is rounded to the nearest second, which can be early."""
    from limits.storage import RedisStorage

    if not isinstance(limiter.storage, RedisStorage):
        pytest.skip("the limiter stores its counters in Redis only when TEST_REDIS_URL is set")
    user = signed_in(app, accounts)
    exhaust(client, user, LIMITS["free"])
    redis = limiter.storage.get_connection()
    keys = [key for key in redis.scan_iter(match="LIMITS:*") if b"api" in key and user["id"].encode() in key]
    assert len(keys) == 1, keys
    redis.pexpire(keys[0], 10_400)  # 10.4 s left: Redis's TTL says 10, the client must wait 11
    refused = client.get(PLANS, headers=user["headers"])
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "11", dict(refused.headers)
