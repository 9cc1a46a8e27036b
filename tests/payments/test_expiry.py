"""Pending payments expire after 24 h (the `expire_payments` job, every 5 minutes)."""
from __future__ import annotations

from datetime import timedelta

from tests.fixtures.race import race_in_app_contexts
from tests.support import postgres_only
from zenzefi_backend import clock
from zenzefi_backend.jobs.schedule import SCHEDULE, by_name

from .helpers import audits, balance, create_payment, deposits, event, payment_path, status_of


def run_job(app) -> dict:
    with app.app_context():
        return by_name("expire_payments").func()


def test_the_job_is_scheduled_every_five_minutes():
    periodic = by_name("expire_payments")
    assert periodic in SCHEDULE and periodic.every_seconds == 300


def test_pending_payments_expire_after_24_hours_only(app, client, user, payment):
    with clock.travel(timedelta(hours=23, minutes=59, seconds=59)):
        assert run_job(app) == {"expired": 0}
    assert status_of(client, user, payment["payment_id"]) == "pending"

    with clock.travel(timedelta(hours=24, seconds=1)):
        assert run_job(app) == {"expired": 1}
        assert run_job(app) == {"expired": 0}  # idempotent
    stored = client.get(payment_path(payment["payment_id"]), headers=user["headers"]).get_json()
    assert stored["status"] == "expired" and stored["completed_at"] is not None
    [audit] = audits(app, "payment.expired")
    assert audit.resource_id == payment["payment_id"]
    assert balance(client, user) == "0.00" and deposits(app) == []


def test_only_pending_payments_expire(app, client, provider, user):
    paid, canceled, pending = (create_payment(client, user).get_json()["payment_id"] for _ in range(3))
    assert provider.deliver(event(paid)).get_json()["processed"] is True
    assert provider.deliver(event(canceled, "payment.canceled")).get_json()["processed"] is True
    with clock.travel(timedelta(days=2)):
        assert run_job(app) == {"expired": 1}
    assert [status_of(client, user, p) for p in (paid, canceled, pending)] == ["succeeded", "canceled", "expired"]
    assert balance(client, user) == "100.00"


def test_a_success_after_expiry_credits_nothing(app, client, provider, user, payment):
    with clock.travel(timedelta(hours=25)):
        run_job(app)
    response = provider.deliver(event(payment["payment_id"]))
    assert response.status_code == 200 and response.get_json() == {"received": True, "processed": False}
    assert balance(client, user) == "0.00" and deposits(app) == []
    assert len(audits(app, "payment.success_not_applied")) == 1


def test_a_success_before_the_sweep_is_honoured(app, client, provider, user, payment):
    """Past `expires_at` but not yet swept: the provider took the money, so the payment is credited."""
    with clock.travel(timedelta(hours=24, minutes=2)):
        response = provider.deliver(event(payment["payment_id"]))
        assert response.get_json()["processed"] is True
        assert run_job(app) == {"expired": 0}
    assert balance(client, user) == "100.00"


@postgres_only
def test_two_sweeps_at_the_same_moment_expire_each_payment_once(app, client, user):
    payments = [create_payment(client, user).get_json()["payment_id"] for _ in range(12)]
    with clock.travel(timedelta(hours=24, seconds=1)):
        results = race_in_app_contexts(app, lambda: by_name("expire_payments").func()["expired"], threads=4)
    assert sum(results) == 12
    assert sorted(audit.resource_id for audit in audits(app, "payment.expired")) == sorted(payments)
