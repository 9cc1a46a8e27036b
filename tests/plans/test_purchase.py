"""Plans (SPEC §3.8): the catalogue and `POST /users/me/plan` — charge, renewal, switch, 402, idempotency."""
from __future__ import annotations

from datetime import timedelta

from zenzefi_backend import clock
from zenzefi_backend.extensions import get_redis
from zenzefi_backend.proxy.cache import USER_KEY

from .helpers import MY_PLAN, PLANS, audits, balance, buy, parse_time, plan_entries, set_plan

DAYS_30 = timedelta(days=30)


def close_to(moment, expected, slack=timedelta(seconds=30)) -> bool:
    return abs(moment - expected) <= slack


def test_the_plans_are_public_and_follow_the_configuration(client):
    response = client.get(PLANS)
    assert response.status_code == 200
    assert response.get_json() == {"items": [
        {"name": "free", "api_requests_per_minute": 1_000_000, "proxy_requests_per_minute": 1000,
         "price_znc": "0.00", "period_days": 30},
        {"name": "premium", "api_requests_per_minute": 2_000_000, "proxy_requests_per_minute": 3000,
         "price_znc": "10.00", "period_days": 30},
        {"name": "enterprise", "api_requests_per_minute": 3_000_000, "proxy_requests_per_minute": 10000,
         "price_znc": "50.00", "period_days": 30},
    ]}


def test_the_default_limits_and_prices_are_the_spec_table():
    from zenzefi_backend.config import SETTINGS

    defaults = {setting.name: setting.default for setting in SETTINGS}
    assert [defaults[f"RATELIMIT_API_{p}"] for p in ("FREE", "PREMIUM", "ENTERPRISE")] == [100, 500, 2000]
    assert [defaults[f"RATELIMIT_PROXY_{p}"] for p in ("FREE", "PREMIUM", "ENTERPRISE")] == [1000, 3000, 10000]
    assert [str(defaults[f"PLAN_PRICE_{p}"]) for p in ("PREMIUM", "ENTERPRISE")] == ["10", "50"]


def test_a_new_user_is_on_the_free_plan(client, user):
    response = client.get(MY_PLAN, headers=user["headers"])
    assert response.status_code == 200
    assert response.get_json() == {"plan": "free", "plan_expires_at": None, "api_requests_per_minute": 1_000_000,
                                   "proxy_requests_per_minute": 1000}
    assert client.get(MY_PLAN).status_code == 401
    assert client.post(MY_PLAN, json={"plan": "premium"}).status_code == 401


def test_buying_premium_charges_the_price_and_runs_30_days(app, client, user):
    with app.app_context():
        get_redis().set(USER_KEY + user["id"], '{"active":1,"plan":"free"}')  # the proxy's cached copy
    response = buy(client, user, "premium")
    assert response.status_code == 200, response.get_json()
    state = response.get_json()
    assert state["plan"] == "premium"
    assert (state["api_requests_per_minute"], state["proxy_requests_per_minute"]) == (2_000_000, 3000)
    assert close_to(parse_time(state["plan_expires_at"]), clock.now() + DAYS_30)
    assert balance(client, user) == "90.00"
    assert plan_entries(app, user["id"]) == [("-10.00", "premium")]
    me = client.get("/api/v1/users/me", headers=user["headers"]).get_json()
    assert me["plan"] == "premium" and me["plan_expires_at"] == state["plan_expires_at"]
    assert client.get(MY_PLAN, headers=user["headers"]).get_json() == state
    [audit] = audits(app, "plan.changed")
    assert str(audit.actor_id) == user["id"] and audit.resource_id == user["id"]
    assert audit.details["from"] == "free" and audit.details["to"] == "premium"
    assert audit.details["renewal"] is False and audit.details["price_znc"] == "10.00"
    # The proxy reads the new plan (and its per-token limit) on its next request.
    with app.app_context():
        assert get_redis().get(USER_KEY + user["id"]) is None


def test_renewing_the_same_plan_extends_it_from_its_current_expiry(app, client, user):
    first = parse_time(buy(client, user, "premium").get_json()["plan_expires_at"])
    with clock.travel(timedelta(days=12)):
        response = buy(client, user, "premium")
    assert response.status_code == 200
    assert parse_time(response.get_json()["plan_expires_at"]) == first + DAYS_30
    assert balance(client, user) == "80.00"
    assert plan_entries(app, user["id"]) == [("-10.00", "premium"), ("-10.00", "premium")]
    renewal = audits(app, "plan.changed")[-1]
    assert renewal.details["renewal"] is True and parse_time(renewal.details["previous_expires_at"]) == first


def test_switching_to_another_paid_plan_starts_30_new_days_without_proration(app, client, user):
    buy(client, user, "premium")
    with clock.travel(timedelta(days=10)):
        up = buy(client, user, "enterprise")
        assert up.status_code == 200
        assert up.get_json()["plan"] == "enterprise"
        assert close_to(parse_time(up.get_json()["plan_expires_at"]), clock.now() + DAYS_30)
    assert balance(client, user) == "40.00"  # 10 + 50, nothing refunded for premium's 20 unused days
    with clock.travel(timedelta(days=20)):
        down = buy(client, user, "premium")
        assert down.get_json()["plan"] == "premium"
        assert close_to(parse_time(down.get_json()["plan_expires_at"]), clock.now() + DAYS_30)
    assert balance(client, user) == "30.00"
    assert [a.details["to"] for a in audits(app, "plan.changed")] == ["premium", "enterprise", "premium"]


def test_402_when_the_balance_is_short_and_nothing_changes(app, client, accounts):
    user = accounts.signed_in()
    accounts.fund(user["id"], "49.99")
    response = buy(client, user, "enterprise")
    assert response.status_code == 402
    body = response.get_json()
    assert body["code"] == 402 and body["required"] == "50.00" and body["available"] == "49.99"
    assert client.get(MY_PLAN, headers=user["headers"]).get_json()["plan"] == "free"
    assert balance(client, user) == "49.99"
    assert plan_entries(app, user["id"]) == [] and audits(app, "plan.changed") == []


def test_free_cannot_be_bought_and_bad_bodies_are_422(client, user):
    for body in ({"plan": "free"}, {"plan": "gold"}, {"plan": ""}, {}, {"plan": "premium", "days": 60},
                 {"plan": 1}):
        response = client.post(MY_PLAN, json=body, headers=user["headers"])
        assert response.status_code == 422, (body, response.get_json())
        assert response.get_json()["code"] == 422
    assert balance(client, user) == "100.00"


def test_an_expired_plan_is_free_at_once_and_buying_again_starts_now(app, client, user):
    buy(client, user, "premium")
    with clock.travel(DAYS_30 + timedelta(minutes=1)):
        state = client.get(MY_PLAN, headers=user["headers"]).get_json()
        assert state["plan"] == "free" and state["plan_expires_at"] is None  # before any sweep ran
        renewed = buy(client, user, "premium").get_json()
        assert close_to(parse_time(renewed["plan_expires_at"]), clock.now() + DAYS_30)
    assert audits(app, "plan.changed")[-1].details["renewal"] is False


def test_a_plan_granted_without_expiry_cannot_be_renewed(app, client, user):
    set_plan(app, user["id"], "enterprise", None)
    response = buy(client, user, "enterprise")
    assert response.status_code == 409
    assert balance(client, user) == "100.00"
    assert buy(client, user, "premium").status_code == 200  # a switch is still possible


def test_an_idempotent_replay_returns_the_first_answer_and_charges_once(app, client, accounts, user):
    key = {"Idempotency-Key": "plan-purchase-1"}
    first = buy(client, user, "premium", **key)
    replay = buy(client, user, "premium", **key)
    assert first.status_code == replay.status_code == 200
    assert replay.get_data() == first.get_data() and replay.headers["Idempotent-Replayed"] == "true"
    assert balance(client, user) == "90.00" and len(plan_entries(app, user["id"])) == 1
    assert buy(client, user, "enterprise", **key).status_code == 422  # same key, another body
    # A 402 is stored too: topping up afterwards does not turn its replay into a purchase.
    assert buy(client, user, "enterprise", **{"Idempotency-Key": "plan-purchase-2"}).status_code == 200
    short = buy(client, user, "enterprise", **{"Idempotency-Key": "plan-purchase-3"})
    assert short.status_code == 402
    accounts.fund(user["id"], "100.00")
    again = buy(client, user, "enterprise", **{"Idempotency-Key": "plan-purchase-3"})
    assert again.status_code == 402 and again.get_data() == short.get_data()
    assert len(plan_entries(app, user["id"])) == 2 and balance(client, user) == "140.00"
