"""The daily rollups: written with the counter flush (once, even when flushes overlap or fail), by the no-Redis
path, when a session opens; finished days of the ledger closed once; and built by the migration from the data
already stored."""
from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from tests.fixtures.proxy import DEVICE_A, DEVICE_B, use_database_only
from tests.fixtures.race import race, race_in_app_contexts
from tests.support import postgres_only
from zenzefi_backend import clock
from zenzefi_backend.analytics import rollups
from zenzefi_backend.analytics.models import ClosedDay, LastActive, LedgerDay, UsageDay
from zenzefi_backend.extensions import db
from zenzefi_backend.ledger.models import Transaction
from zenzefi_backend.proxy.counters import flush_counters
from zenzefi_backend.proxy.models import ProxySession

from .helpers import forget_cached_figures, global_figures, usage
from .scenario import at

BODY = b"b" * 123


def usage_rows(env) -> list[tuple]:
    with env.ctx():
        return [tuple(row) for row in db.session.execute(
            sa.select(UsageDay.user_id, UsageDay.day, UsageDay.requests, UsageDay.bytes_in, UsageDay.bytes_out,
                      UsageDay.sessions).order_by(UsageDay.user_id, UsageDay.day))]


def session_totals(env) -> tuple[int, int, int, int]:
    with env.ctx():
        return tuple(db.session.execute(sa.select(
            sa.func.coalesce(sa.func.sum(ProxySession.request_count), 0),
            sa.func.coalesce(sa.func.sum(ProxySession.bytes_in), 0),
            sa.func.coalesce(sa.func.sum(ProxySession.bytes_out), 0), sa.func.count())).one())


def rollup_totals(env) -> tuple[int, int, int, int]:
    with env.ctx():
        return tuple(db.session.execute(sa.select(
            sa.func.coalesce(sa.func.sum(UsageDay.requests), 0), sa.func.coalesce(sa.func.sum(UsageDay.bytes_in), 0),
            sa.func.coalesce(sa.func.sum(UsageDay.bytes_out), 0),
            sa.func.coalesce(sa.func.sum(UsageDay.sessions), 0))).one())


def traffic(env, token: dict, requests: int, device: str = DEVICE_A) -> int:
    """`requests` POSTs of BODY through the proxy; the response bytes they brought back."""
    answered = 0
    for _ in range(requests):
        response = env.call("POST", "certificates/filter", token=token, device=device, data=BODY)
        assert response.status_code == 200, response.get_data()[:200]
        answered += len(response.get_data())
    env.send_pending_bytes_out()
    return answered


def test_a_flush_adds_the_counters_to_the_users_day_once(env):
    token = env.buy()
    answered = traffic(env, token, 3)
    user_id = uuid.UUID(token["user"]["id"])
    today = clock.now().date()
    # Opening the session counted it; the requests are still in Redis.
    assert usage_rows(env) == [(user_id, today, 0, 0, 0, 1)]
    assert env.flush_counters() == 1
    assert usage_rows(env) == [(user_id, today, 3, 3 * len(BODY), answered, 1)]
    assert env.flush_counters() == 0  # a second flush finds nothing left to add
    assert usage_rows(env) == [(user_id, today, 3, 3 * len(BODY), answered, 1)]
    assert rollup_totals(env) == session_totals(env)


def test_counters_are_counted_on_the_day_of_their_last_request(env):
    token = env.buy(duration_hours=24)
    user_id = uuid.UUID(token["user"]["id"])
    yesterday = clock.now().date() - timedelta(days=1)
    with at(datetime.combine(yesterday, time(23, 59, 30), UTC)):
        answered = traffic(env, token, 2)
    with at(datetime.combine(yesterday + timedelta(days=1), time(0, 0, 30), UTC)):
        env.flush_counters()  # the flush runs after midnight: the requests still belong to yesterday
    assert usage_rows(env) == [(user_id, yesterday, 2, 2 * len(BODY), answered, 1)]


def test_a_failed_flush_rolls_back_the_rollup_with_the_row_and_the_retry_counts_once(env, monkeypatch):
    token = env.buy()
    answered = traffic(env, token, 4)
    real = rollups.add_usage_in_transaction
    failures = []

    def fail_once(usages):
        real(usages)  # written, then the transaction fails before it commits
        if not failures:
            failures.append(1)
            raise sa.exc.OperationalError("UPDATE", {}, Exception("connection lost"))

    monkeypatch.setattr(rollups, "add_usage_in_transaction", fail_once)
    with pytest.raises(sa.exc.OperationalError):
        env.flush_counters()
    assert session_totals(env)[:3] == (0, 0, 0)  # the row's update rolled back with it…
    assert rollup_totals(env) == (0, 0, 0, 1)  # …and so did the rollup's (only the session's opening stays)
    assert env.flush_counters() == 1  # the counters were given back to Redis: the retry adds them, once
    assert rollup_totals(env) == (4, 4 * len(BODY), answered, 1) == session_totals(env)


def test_without_redis_each_request_and_response_goes_to_the_rollup_with_the_row(env, monkeypatch):
    use_database_only(monkeypatch)
    token = env.buy()
    answered = traffic(env, token, 3)
    assert rollup_totals(env) == (3, 3 * len(BODY), answered, 1) == session_totals(env)


@pytest.mark.postgres
@postgres_only
def test_overlapping_flushes_on_several_workers_count_every_request_once(env):
    tokens = [env.buy() for _ in range(12)]
    answered = sum(traffic(env, token, 3, device=f"device-{index:04d}-xyz") for index, token in enumerate(tokens))
    flushed = race_in_app_contexts(env.app, flush_counters, threads=4)
    assert sum(flushed) == len(tokens)
    assert rollup_totals(env) == (36, 36 * len(BODY), answered, 12) == session_totals(env)


@pytest.mark.postgres
@postgres_only
def test_simultaneous_first_requests_open_and_count_one_session(env):
    token = env.buy()

    def first_request(device: str):
        return lambda client: env.call("GET", "certificates/filter", token=token, device=device, client=client)

    answers = race(env.app, [first_request(DEVICE_A if index % 2 else DEVICE_B) for index in range(20)])
    winners = {response.status_code for response in answers}
    assert winners <= {200, 409}, winners
    env.send_pending_bytes_out()
    env.flush_counters()
    assert session_totals(env)[3] == 1
    assert rollup_totals(env)[3] == 1
    assert rollup_totals(env)[:3] == session_totals(env)[:3]


def test_usage_flushed_after_its_day_was_closed_counts_on_the_day_it_is_flushed(env, accounts):
    admin = accounts.signed_in(superuser=True)
    token = env.buy(duration_hours=24)
    user_id = uuid.UUID(token["user"]["id"])
    today = clock.now().date()
    yesterday = today - timedelta(days=1)
    with at(datetime.combine(yesterday, time(23, 59, 30), UTC)):
        answered = traffic(env, token, 3)  # the session opened yesterday; its requests wait in Redis
    with at(datetime.combine(today, time(0, 6), UTC)):
        with env.ctx():
            assert rollups.close_days() >= 1  # yesterday is closed before the (delayed) flush ran
        before = global_figures(env.client, admin, "week")
        env.flush_counters()
        forget_cached_figures(env.app)
        after = global_figures(env.client, admin, "week")
        mine = usage(env.client, token["user"], "week")
    assert usage_rows(env) == [(user_id, yesterday, 0, 0, 0, 1), (user_id, today, 3, 3 * len(BODY), answered, 0)]
    assert before["daily"][-2] == after["daily"][-2]  # the closed day did not change
    assert after["daily"][-2]["requests"] == 0 and after["daily"][-1]["requests"] == 3
    assert [day["requests"] for day in mine["daily"][-2:]] == [0, 3]
    with env.ctx():
        assert db.session.get(LastActive, user_id).day == today


def test_a_flush_that_meets_the_closing_of_its_day_waits_and_counts_on_today(env, monkeypatch):
    """The closing of yesterday has summed its usage but not committed yet when a flush brings more of yesterday's
    counters: the flush waits for the closing, then counts them on today, so the closed day's totals stay equal
    to its rows."""
    token = env.buy(duration_hours=24)
    user_id = uuid.UUID(token["user"]["id"])
    today = clock.now().date()
    yesterday = today - timedelta(days=1)
    with at(datetime.combine(yesterday, time(23, 59, 50), UTC)):
        answered = traffic(env, token, 2)
    summed, flushed = threading.Event(), threading.Event()
    real = rollups.ledger_totals

    def pause_before_commit(*args):  # close_day calls it once the day's usage is summed, before committing
        summed.set()
        flushed.wait(timeout=2)  # a flush that does not wait for the closing gets in here
        return real(*args)

    monkeypatch.setattr(rollups, "ledger_totals", pause_before_commit)

    def close() -> None:
        with env.app.app_context():
            assert rollups.close_day(yesterday)

    def flush() -> None:
        assert summed.wait(timeout=10)
        assert env.flush_counters() == 1
        flushed.set()

    with at(datetime.combine(today, time(0, 6), UTC)):
        threads = [threading.Thread(target=close), threading.Thread(target=flush)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    with env.ctx():
        closed = db.session.get(ClosedDay, yesterday)
        assert (closed.dau, closed.requests, closed.bytes) == (0, 0, 0)
    assert usage_rows(env) == [(user_id, yesterday, 0, 0, 0, 1), (user_id, today, 2, 2 * len(BODY), answered, 0)]


def closed_days(env) -> list[date]:
    with env.ctx():
        return list(db.session.scalars(sa.select(ClosedDay.day).order_by(ClosedDay.day)))


def test_a_day_is_closed_once_it_is_over_and_only_once(env, accounts):
    today = clock.now().date()
    with at(datetime.combine(today - timedelta(days=2), time(12), UTC)):
        user = accounts.register()
        accounts.fund(user["id"], "5.00")
    with at(datetime.combine(today, time(0, 4), UTC)):  # within CLOSE_AFTER of midnight: yesterday may still change
        with env.ctx():
            assert rollups.close_days() == 1
        assert closed_days(env) == [today - timedelta(days=2)]
    with at(datetime.combine(today, time(0, 6), UTC)):
        with env.ctx():
            assert rollups.close_days() == 1
            assert rollups.close_days() == 0
        assert closed_days(env) == [today - timedelta(days=2), today - timedelta(days=1)]
    with env.ctx():
        rows = db.session.execute(sa.select(ClosedDay.day, ClosedDay.new_users).order_by(ClosedDay.day)).all()
        ledger = db.session.execute(sa.select(LedgerDay.day, LedgerDay.transaction_type, LedgerDay.reference_type,
                                              LedgerDay.entries, LedgerDay.amount)).all()
    assert [tuple(row) for row in rows] == [(today - timedelta(days=2), 1), (today - timedelta(days=1), 0)]
    assert [tuple(row) for row in ledger] == [(today - timedelta(days=2), "adjustment", "", 1, Decimal("5.00"))]


@pytest.mark.postgres
@postgres_only
def test_workers_closing_the_same_days_at_once_close_each_once(env, accounts):
    today = clock.now().date()
    for offset in (5, 3, 1):
        with at(datetime.combine(today - timedelta(days=offset), time(9), UTC)):
            user = accounts.register()
            accounts.fund(user["id"], f"{offset}.00")
    results = race_in_app_contexts(env.app, rollups.close_days, threads=4)
    assert sum(results) == 5, results
    assert closed_days(env) == [today - timedelta(days=offset) for offset in (5, 4, 3, 2, 1)]
    with env.ctx():
        assert db.session.scalar(sa.select(sa.func.sum(LedgerDay.entries))) == 3
        assert db.session.scalar(sa.select(sa.func.sum(LedgerDay.amount))) == Decimal("9.00")


def test_the_migration_builds_the_rollups_from_the_stored_data(app, env, accounts):
    today = clock.now().date()
    token = env.buy(duration_hours=24)
    user_id = uuid.UUID(token["user"]["id"])
    two_days_ago = datetime.combine(today - timedelta(days=2), time(10), UTC)
    with env.ctx():  # history from before the rollups existed: sessions and ledger entries on past days
        db.session.execute(sa.delete(UsageDay))
        for started, requests in ((two_days_ago, 5), (two_days_ago + timedelta(hours=3), 2),
                                  (datetime.combine(today, time(0, 1), UTC), 7)):
            db.session.add(ProxySession(id=uuid.uuid4(), token_id=uuid.UUID(token["id"]), user_id=user_id,
                                        device_id="device-history", started_at=started, last_activity=started,
                                        request_count=requests, bytes_in=requests * 10, bytes_out=requests * 100,
                                        is_active=False, ended_at=started))
        db.session.execute(sa.update(Transaction).values(created_at=two_days_ago))
        db.session.commit()
        entries = db.session.execute(sa.select(Transaction.transaction_type, Transaction.amount)).all()

    with app.app_context():
        downgrade(revision="0012_webhook_subscriptions")
        assert "usage_daily" not in sa.inspect(db.engine).get_table_names()
        upgrade()
    assert usage_rows(env) == [(user_id, today - timedelta(days=2), 7, 70, 700, 2),
                               (user_id, today, 7, 70, 700, 1)]
    assert closed_days(env)[0] == today - timedelta(days=2)
    assert closed_days(env)[-1] == rollups.last_closable_day(datetime.now(UTC))
    with env.ctx():
        ledger = {(row.transaction_type, row.entries, row.amount) for row in db.session.execute(
            sa.select(LedgerDay).where(LedgerDay.day == today - timedelta(days=2))).scalars()}
    assert ledger == {(kind, 1, amount) for kind, amount in entries}
