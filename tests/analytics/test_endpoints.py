"""The two analytics endpoints: periods, bad input, who may call them, and the 5-minute cache."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures.actions import buy_token
from tests.fixtures.proxy import assert_error
from tests.support import dead_redis
from zenzefi_backend import clock
from zenzefi_backend.analytics.cache import PREFIX
from zenzefi_backend.extensions import get_redis

from .helpers import GLOBAL, USAGE, forget_cached_figures, global_figures, usage

ODD_QUERIES = [
    "period=year", "period=DAY", "period=", "period=%20day", "period=day%00", "period=1", "period=day&period=week",
    "period=week&limit=5", "period=day&x=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "period%5B%5D=day", "offset=-1",
    "period=month&period", "=day", "period=day&user_id=" + str(uuid.uuid4()),
]


@pytest.fixture
def customer(accounts) -> dict:
    return accounts.signed_in()


def cached_keys(app) -> list[str]:
    with app.app_context():
        return sorted(key.decode() for key in get_redis().scan_iter(match=PREFIX + "*"))


@pytest.mark.parametrize("period, days", [("day", 1), ("week", 7), ("month", 30)])
def test_each_period_is_whole_utc_days_ending_today_with_every_day_listed(client, customer, admin, period, days):
    today = clock.now().date()
    first = today - timedelta(days=days - 1)
    for figures in (usage(client, customer, period), global_figures(client, admin, period)):
        assert figures["period"] == period
        assert figures["start_time"] == f"{first.isoformat()}T00:00:00+00:00"
        assert figures["end_time"] == f"{(today + timedelta(days=1)).isoformat()}T00:00:00+00:00"
        assert [day["date"] for day in figures["daily"]] == [
            (first + timedelta(days=offset)).isoformat() for offset in range(days)]


def test_the_default_period_is_the_month(client, customer):
    response = client.get(USAGE, headers=customer["headers"])
    assert response.status_code == 200 and response.get_json()["period"] == "month"


def test_a_new_user_sees_zeros_and_money_as_strings(client, customer):
    figures = usage(client, customer, "week")
    assert {name: figures[name] for name in ("total_requests", "total_bytes_transferred", "total_sessions",
                                             "active_sessions", "active_tokens", "avg_session_duration_minutes",
                                             "spend_znc")} == {
        "total_requests": 0, "total_bytes_transferred": 0, "total_sessions": 0, "active_sessions": 0,
        "active_tokens": 0, "avg_session_duration_minutes": 0.0, "spend_znc": "0.00"}
    assert {day["spend_znc"] for day in figures["daily"]} == {"0.00"}


@pytest.mark.parametrize("query", ODD_QUERIES)
@pytest.mark.parametrize("path", [USAGE, GLOBAL])
def test_other_periods_and_any_other_query_parameter_are_a_422_that_caches_nothing(app, client, admin, path, query):
    response = client.get(f"{path}?{query}", headers=admin["headers"])
    body = assert_error(response, 422)
    assert body["errors"], body
    assert cached_keys(app) == []


def test_without_a_valid_jwt_both_answer_401(client, customer):
    for path in (USAGE, GLOBAL):
        assert_error(client.get(path), 401)
        assert_error(client.get(path, headers={"Authorization": "Bearer not-a-jwt"}), 401)
        assert_error(client.get(path, headers={"Authorization": f"Bearer {customer['refresh_token']}"}), 401)


def test_the_global_figures_are_for_superusers_only(client, customer):
    body = assert_error(client.get(GLOBAL + "?period=day", headers=customer["headers"]), 403)
    assert "superuser" in body["message"].lower()


def test_a_deactivated_users_jwt_is_refused_even_with_figures_in_the_cache(app, client, accounts, customer, admin):
    usage(client, customer, "week")
    global_figures(client, admin, "week")
    assert len(cached_keys(app)) == 2
    accounts.set_flags(customer["id"], is_active=False)
    assert_error(client.get(USAGE + "?period=week", headers=customer["headers"]), 401)
    accounts.set_flags(admin["id"], is_active=False)
    assert_error(client.get(GLOBAL + "?period=week", headers=admin["headers"]), 401)


def test_a_user_gets_their_own_figures_never_another_users_cached_ones(app, client, accounts):
    rich, poor = accounts.signed_in(), accounts.signed_in()
    accounts.fund(rich["id"], "100.00")
    buy_token(client, rich, hours=24)
    assert usage(client, rich, "day")["spend_znc"] == "18.00"
    assert usage(client, poor, "day")["spend_znc"] == "0.00"
    assert usage(client, poor, "day")["active_tokens"] == 0
    today = clock.now().date().isoformat()
    assert cached_keys(app) == sorted(f"{PREFIX}usage:{user['id']}:day:{today}" for user in (rich, poor))


def test_figures_are_kept_five_minutes_per_user_and_period(app, client, accounts, customer):
    accounts.fund(customer["id"], "100.00")
    before = usage(client, customer, "week")
    assert client.post("/api/v1/tokens/purchase", headers=customer["headers"],
                       json={"duration_hours": 1}).status_code == 201
    assert usage(client, customer, "week") == before  # from the cache
    assert usage(client, customer, "day")["spend_znc"] == "1.00"  # another period: computed now
    with app.app_context():
        key = f"{PREFIX}usage:{customer['id']}:week:{clock.now().date().isoformat()}"
        assert 295 <= get_redis().ttl(key) <= 300
    forget_cached_figures(app)
    assert usage(client, customer, "week")["spend_znc"] == "1.00"


def test_the_cache_starts_afresh_with_each_utc_day(client, customer):
    today = usage(client, customer, "day")
    with clock.travel(timedelta(days=1)):
        tomorrow = usage(client, customer, "day")
    assert [day["date"] for day in today["daily"]] != [day["date"] for day in tomorrow["daily"]]


def test_without_redis_the_figures_are_computed_for_each_request(app, client, customer, admin, monkeypatch):
    from zenzefi_backend.extensions import RedisConnection

    monkeypatch.setitem(app.extensions, RedisConnection.extension_key, dead_redis())
    assert usage(client, customer, "week")["total_requests"] == 0
    assert global_figures(client, admin, "week")["new_users"] == 2


def test_a_customer_over_the_api_rate_limit_gets_429(app, client, customer, monkeypatch):
    monkeypatch.setitem(app.config, "RATELIMIT_API_FREE", 2)
    usage(client, customer, "day")
    usage(client, customer, "week")
    for path in (USAGE, GLOBAL):
        response = client.get(path + "?period=day", headers=customer["headers"])
        assert_error(response, 429)
        assert int(response.headers["Retry-After"]) > 0


def test_money_sums_are_exact_to_the_cent(client, accounts, admin):
    buyer = accounts.signed_in()
    for amount in ("0.10", "0.20", "0.70", "1000000.00", "999999.99"):
        response = client.post("/api/v1/currency/mock-purchase", headers=buyer["headers"], json={"amount": amount})
        assert response.status_code == 201, response.get_json()
    assert global_figures(client, admin, "day")["deposits_znc"] == "2000000.99"


def test_times_are_utc_whatever_the_hour(client, customer):
    late = datetime.combine(clock.now().date(), datetime.max.time(), UTC) - timedelta(seconds=1)
    with clock.travel(late - datetime.now(UTC)):
        figures = usage(client, customer, "day")
    assert figures["daily"][0]["date"] == late.date().isoformat()
