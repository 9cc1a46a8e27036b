"""Business metrics of SPEC §3.11, counted where the events happen, only once their DB transaction commits;
the gauges are computed when `/metrics` is read."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from tests.bundles.helpers import purchase_path, seed
from tests.payments.helpers import Provider, create_payment, event
from zenzefi_backend import clock, metrics
from zenzefi_backend.extensions import db, get_redis
from zenzefi_backend.proxy.models import ProxySession
from zenzefi_backend.tokens.models import AccessToken

Samples = dict[tuple[str, frozenset], float]


def samples(client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    found = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


class Watch:
    """`/metrics` before and after: `delta(name, **labels)` is what happened in between."""

    def __init__(self, client):
        self.client = client
        self.before = samples(client)
        self.after: Samples | None = None

    def delta(self, name: str, **labels: str) -> float:
        self.after = samples(self.client)
        return value(self.after, name, **labels) - value(self.before, name, **labels)


@pytest.fixture
def watch(client) -> Watch:
    return Watch(client)


@pytest.fixture
def buyer(accounts) -> dict:
    return accounts.funded("2000.00")


def buy_token(client, user: dict, hours: int = 1):
    return client.post("/api/v1/tokens/purchase", json={"duration_hours": hours}, headers=user["headers"])


def test_every_business_metric_is_exposed(client):
    families = {family.name for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))}
    assert {"auth_attempts", "token_purchases", "token_revocations", "znc_revenue", "balance_deposits",
            "referral_bonuses", "emails_sent", "webhook_deliveries", "active_tokens", "active_sessions",
            "total_users", "rq_queue_depth", "proxy_requests", "proxy_latency_seconds", "proxy_bytes",
            "token_validations"} <= families


def test_logins_are_counted_by_result(client, accounts, watch):
    user = accounts.register()
    accounts.login(user["email"], user["password"])
    for password in ("wrong password", "also wrong"):
        assert client.post("/api/v1/auth/login", json={"email": user["email"], "password": password}).status_code == 401
    assert client.post("/api/v1/auth/login", json={"email": "nobody@example.com", "password": "x"}).status_code == 401
    assert watch.delta("auth_attempts_total", result="success") == 1
    assert watch.delta("auth_attempts_total", result="failure") == 3


def test_token_purchases_and_revenue_are_counted_and_a_refused_purchase_is_not(client, accounts, buyer, watch):
    assert buy_token(client, buyer, 1).status_code == 201
    assert buy_token(client, buyer, 24).status_code == 201
    assert buy_token(client, buyer, 24).status_code == 201
    poor = accounts.signed_in()
    assert buy_token(client, poor, 720).status_code == 402
    replayed = {"Idempotency-Key": "metrics-1"}
    for _ in range(2):
        assert client.post("/api/v1/tokens/purchase", json={"duration_hours": 12},
                           headers={**buyer["headers"], **replayed}).status_code == 201
    assert watch.delta("token_purchases_total", duration_hours="1") == 1
    assert watch.delta("token_purchases_total", duration_hours="24") == 2
    assert watch.delta("token_purchases_total", duration_hours="12") == 1  # the replay bought nothing
    assert watch.delta("token_purchases_total", duration_hours="720") == 0
    assert watch.delta("znc_revenue_total") == 1 + 18 + 18 + 10


def test_a_purchase_whose_commit_fails_is_not_counted(app, client, buyer, watch, monkeypatch):
    def broken_commit():
        raise RuntimeError("the database went away at commit time")

    monkeypatch.setattr(db.session, "commit", broken_commit)
    assert buy_token(client, buyer, 168).status_code == 500
    monkeypatch.undo()
    assert buy_token(client, buyer, 1).status_code == 201  # the next commit must not carry the lost increment
    assert watch.delta("token_purchases_total", duration_hours="168") == 0
    assert watch.delta("token_purchases_total", duration_hours="1") == 1
    assert watch.delta("znc_revenue_total") == 1


def test_count_waits_for_the_commit_and_forgets_a_rollback(app, watch):
    with app.app_context():
        db.session.execute(sa.text("SELECT 1"))
        metrics.count(metrics.referral_bonuses, 5)
        assert watch.delta("referral_bonuses_total") == 0  # still inside the transaction
        db.session.rollback()
        db.session.execute(sa.text("SELECT 1"))
        metrics.count(metrics.referral_bonuses, 2)
        db.session.commit()
        db.session.commit()  # a later commit does not count it twice
        metrics.count(metrics.referral_bonuses, 1)  # no transaction open: counted at once
    assert watch.delta("referral_bonuses_total") == 3


def test_bundle_tokens_count_as_token_purchases(app, client, buyer, watch):
    starter = seed(app, client)["Starter Pack"]
    assert client.post(purchase_path(starter["id"]), headers=buyer["headers"]).status_code == 201
    assert watch.delta("token_purchases_total", duration_hours="24") == 5
    assert watch.delta("znc_revenue_total") == 81


def test_revocations_are_counted(client, buyer, watch):
    token = buy_token(client, buyer).get_json()
    assert client.delete(f"/api/v1/tokens/{token['id']}", headers=buyer["headers"]).status_code == 200
    assert client.delete(f"/api/v1/tokens/{token['id']}", headers=buyer["headers"]).status_code == 404
    assert watch.delta("token_revocations_total") == 1


def test_plan_purchases_count_as_revenue(client, buyer, watch):
    response = client.post("/api/v1/users/me/plan", json={"plan": "enterprise"}, headers=buyer["headers"])
    assert response.status_code == 200
    assert watch.delta("znc_revenue_total") == 50


def test_deposits_are_counted_once_each(app, client, accounts, watch):
    user = accounts.signed_in()
    provider = Provider(app, client)
    assert client.post("/api/v1/currency/mock-purchase", json={"amount": "25.00"},
                       headers=user["headers"]).status_code == 201
    payment = create_payment(client, user, amount_znc="100.00").get_json()
    paid = event(payment["payment_id"])
    assert provider.deliver(paid).get_json()["processed"] is True
    assert provider.deliver(paid).get_json()["processed"] is False  # a replay credits nothing
    canceled = create_payment(client, user, amount_znc="100.00").get_json()
    assert provider.deliver(event(canceled["payment_id"], "payment.canceled")).get_json()["processed"] is True
    assert watch.delta("balance_deposits_total") == 2


def test_a_referral_bonus_is_counted_once(client, accounts, watch):
    referrer = accounts.register()
    referee = accounts.signed_in(referral_code=referrer["referral_code"])
    accounts.fund(referee["id"], "1000.00")
    assert buy_token(client, referee, 168).status_code == 201  # 100.00: not more than 100, no bonus
    assert buy_token(client, referee, 720).status_code == 201  # 300.00: the bonus
    assert buy_token(client, referee, 720).status_code == 201  # at most one per referee
    assert watch.delta("referral_bonuses_total") == 1


def test_gauges_are_computed_when_metrics_are_read(app, client, accounts, buyer):
    other = accounts.signed_in()
    accounts.fund(other["id"], "10.00")
    active = buy_token(client, buyer).get_json()
    expired = buy_token(client, buyer).get_json()
    buy_token(client, buyer)  # ready: never used
    revoked = buy_token(client, other).get_json()
    client.delete(f"/api/v1/tokens/{revoked['id']}", headers=other["headers"])
    moment = clock.now()
    with app.app_context():
        for token_id, activated in ((active["id"], moment), (expired["id"], moment - timedelta(hours=2))):
            db.session.execute(sa.update(AccessToken).where(AccessToken.id == uuid.UUID(token_id))
                               .values(activated_at=activated, expires_at=activated + timedelta(hours=1)))
        db.session.add(ProxySession(token_id=uuid.UUID(active["id"]), user_id=uuid.UUID(buyer["id"]),
                                    device_id="device-0001"))
        db.session.commit()
        Queue("default", connection=get_redis()).empty()  # the outbox relay run the purchases nudged
        emails = Queue("emails", connection=get_redis())
        for _ in range(3):
            emails.enqueue(print, "queued, never run")
    found = samples(client)
    assert value(found, "total_users") == 2
    assert value(found, "active_tokens") == 1
    assert value(found, "active_sessions") == 1
    assert value(found, "rq_queue_depth", queue="emails") == 3
    assert value(found, "rq_queue_depth", queue="default") == 0


def test_a_gauge_redis_cannot_feed_keeps_its_value_and_the_counted_ones_move(client, accounts, monkeypatch):
    accounts.register()
    before = samples(client)
    depth = value(before, "rq_queue_depth", queue="emails")

    def redis_away() -> None:
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(metrics, "_gauge_refreshers", [redis_away])
    accounts.register()
    after = samples(client)  # still 200
    assert value(after, "total_users") == value(before, "total_users") + 1
    assert value(after, "rq_queue_depth", queue="emails") == depth


def test_when_the_counts_fail_the_counted_gauges_keep_their_value_and_the_queue_depths_move(app, client, accounts,
                                                                                          monkeypatch):
    accounts.register()
    before = samples(client)
    missing_table = sa.select(sa.func.count()).select_from(sa.table("no_such_table"))
    monkeypatch.setattr(metrics, "_gauge_counts", {metrics.total_users: lambda: missing_table})
    accounts.register()
    with app.app_context():
        emails = Queue("emails", connection=get_redis())
        for _ in range(2):
            emails.enqueue(print, "queued, never run")
    after = samples(client)  # still 200
    assert value(after, "total_users") == value(before, "total_users")
    assert value(after, "rq_queue_depth", queue="emails") == value(before, "rq_queue_depth", queue="emails") + 2
