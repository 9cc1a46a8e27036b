"""The analytics figures against a hand-computed month (scenario.py): real proxied traffic through a local
upstream on three UTC days, deposits, purchases of tokens, a bundle and a plan, a refund, a referral bonus.
The same figures come out while every day is read live and once the finished days are closed into rollups."""
from __future__ import annotations

import uuid

import sqlalchemy as sa

from zenzefi_backend.analytics.models import ClosedDay, LastActive, UsageDay
from zenzefi_backend.extensions import db
from zenzefi_backend.jobs.proxy import sweep_proxy_sessions

from .helpers import PERIODS, forget_cached_figures, global_figures, usage
from .scenario import Scenario, at, build, expected_global, expected_usage


def assert_figures(env, scenario: Scenario, *, alice_sessions_open: int) -> None:
    client = env.client
    for period in PERIODS:
        assert usage(client, scenario.alice, period) == expected_usage(
            scenario, "alice", period, sessions_open=alice_sessions_open), period
        assert usage(client, scenario.bob, period) == expected_usage(scenario, "bob", period, sessions_open=1), period
        assert global_figures(client, scenario.admin, period) == expected_global(scenario, period), period


def test_figures_match_the_hand_computed_scenario_live_and_from_closed_days(env):
    scenario = build(env)
    with at(scenario.noon):
        with env.ctx():
            assert db.session.scalar(sa.select(sa.func.count()).select_from(ClosedDay)) == 0
        assert_figures(env, scenario, alice_sessions_open=2)  # every day read live from the ledger

        with env.ctx():
            sweep_proxy_sessions()  # closes D3..D1 (and the expired 1 h token's session)
            closed = db.session.scalars(sa.select(ClosedDay.day).order_by(ClosedDay.day)).all()
        assert closed == [scenario.day(3), scenario.day(2), scenario.day(1)]
        assert forget_cached_figures(env.app) == 9
        assert_figures(env, scenario, alice_sessions_open=1)


def test_the_usage_rollup_holds_each_users_day(env):
    scenario = build(env)
    with env.ctx():
        rows = db.session.execute(
            sa.select(UsageDay.user_id, UsageDay.day, UsageDay.requests, UsageDay.bytes_in, UsageDay.bytes_out,
                      UsageDay.sessions).order_by(UsageDay.day)
        ).all()
    alice, bob = uuid.UUID(scenario.alice["id"]), uuid.UUID(scenario.bob["id"])
    assert [tuple(row) for row in rows] == [
        (alice, scenario.day(3), 4, 250, 4000, 1),
        (bob, scenario.day(1), 3, 0, 3000, 1),
        (alice, scenario.day(0), 3, 0, 3000, 1),
    ]
    with env.ctx():
        last_active = dict(db.session.execute(sa.select(LastActive.user_id, LastActive.day)).all())
    assert last_active == {alice: scenario.day(0), bob: scenario.day(1)}
