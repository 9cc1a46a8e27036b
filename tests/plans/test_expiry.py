"""Plan expiry: the hourly `expire_plans` job moves paid plans past their expiry back to free, once."""
from __future__ import annotations

from datetime import timedelta

from tests.fixtures.race import race_in_app_contexts
from tests.support import postgres_only
from zenzefi_backend import clock
from zenzefi_backend.extensions import get_redis
from zenzefi_backend.jobs.plans import expire_plans_job
from zenzefi_backend.jobs.schedule import SCHEDULE, by_name
from zenzefi_backend.plans.services import expire_plans
from zenzefi_backend.proxy.cache import USER_KEY

from .helpers import MY_PLAN, audits, buy, set_plan, stored_user

DAYS_30 = timedelta(days=30)


def run_job(app) -> dict:
    with app.app_context():
        return by_name("expire_plans").func()


def test_the_job_is_scheduled_every_hour():
    periodic = by_name("expire_plans")
    assert periodic in SCHEDULE and periodic.every_seconds == 3600 and periodic.func is expire_plans_job


def test_a_plan_expires_after_30_days_only_and_once(app, client, user):
    buy(client, user, "premium")
    with clock.travel(DAYS_30 - timedelta(minutes=1)):
        assert run_job(app) == {"expired": 0}
    assert stored_user(app, user["id"]).plan == "premium"

    with app.app_context():
        get_redis().set(USER_KEY + user["id"], '{"active":1,"plan":"premium"}')
    with clock.travel(DAYS_30 + timedelta(minutes=1)):
        assert run_job(app) == {"expired": 1}
        assert run_job(app) == {"expired": 0}  # idempotent
    stored = stored_user(app, user["id"])
    assert (stored.plan, stored.plan_expires_at) == ("free", None)
    assert client.get(MY_PLAN, headers=user["headers"]).get_json()["plan"] == "free"
    [audit] = audits(app, "plan.expired")
    assert audit.resource_id == user["id"] and audit.details["from"] == "premium"
    with app.app_context():
        assert get_redis().get(USER_KEY + user["id"]) is None  # the proxy applies the free limit next


def test_only_paid_plans_past_their_expiry_move(app, accounts):
    now = clock.now()
    expired, running, permanent, free = (accounts.register()["id"] for _ in range(4))
    set_plan(app, expired, "enterprise", now - timedelta(seconds=1))
    set_plan(app, running, "premium", now + timedelta(hours=1))
    set_plan(app, permanent, "premium", None)
    set_plan(app, free, "free", None)
    assert run_job(app) == {"expired": 1}
    assert [stored_user(app, uid).plan for uid in (expired, running, permanent, free)] == \
        ["free", "premium", "premium", "free"]


def test_a_renewal_before_the_sweep_is_kept(app, client, user):
    buy(client, user, "premium")
    with clock.travel(DAYS_30 - timedelta(hours=1)):
        buy(client, user, "premium")
    with clock.travel(DAYS_30 + timedelta(hours=1)):
        assert run_job(app) == {"expired": 0}
        assert client.get(MY_PLAN, headers=user["headers"]).get_json()["plan"] == "premium"


@postgres_only
def test_two_sweeps_at_the_same_moment_expire_each_plan_once(app, accounts):
    moment = clock.now()
    users = [accounts.register()["id"] for _ in range(30)]
    for user_id in users:
        set_plan(app, user_id, "premium", moment - timedelta(minutes=5))
    results = race_in_app_contexts(app, expire_plans, threads=2)
    assert sum(results) == len(users), results
    assert len(audits(app, "plan.expired")) == len(users)
    assert {stored_user(app, uid).plan for uid in users} == {"free"}
