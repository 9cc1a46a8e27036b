"""The audit log records what SPEC §3.11 lists, each with the actor, IP address and user agent; the IP comes
through `TRUSTED_PROXY_HOPS` only when it says so; rows are kept AUDIT_RETENTION_DAYS."""
from __future__ import annotations

from datetime import timedelta

from tests.fixtures.actions import buy_token
from tests.payments.helpers import Provider, event
from zenzefi_backend import clock

from .helpers import AUDIT_LOGS, audit_rows, token_path, user_path

CLIENT_IP = "203.0.113.9"
AGENT = "ZenzefiAuditTest/1.0"


def test_every_kind_of_event_the_spec_lists_is_audited_with_actor_ip_and_agent(app, client, accounts):
    client.environ_base.update(REMOTE_ADDR=CLIENT_IP, HTTP_USER_AGENT=AGENT)
    admin = accounts.signed_in(superuser=True)
    referrer = accounts.signed_in()
    user = accounts.signed_in(referral_code=referrer["referral_code"])  # registration
    headers = user["headers"]
    assert client.post("/api/v1/auth/login", json={"email": user["email"], "password": "not it!"}).status_code == 401

    # Payments: a top-up through the provider, a rejected webhook, a mock purchase.
    payment = client.post("/api/v1/currency/purchase", json={"amount_znc": "500"}, headers=headers).get_json()
    provider = Provider(app, client)
    assert provider.deliver(event(payment["payment_id"], amount_znc="500.00")).status_code == 200
    assert provider.deliver(event(payment["payment_id"]), header="t=1,v1=00").status_code in (400, 401)
    assert client.post("/api/v1/currency/mock-purchase", json={"amount": "1"}, headers=headers).status_code == 201

    # Purchases: a token that earns the referrer a bonus, a bundle; a revoke that claws the bonus back.
    big = buy_token(client, user, hours=720)
    seeded = app.test_cli_runner().invoke(args=["bundles", "seed"])
    assert seeded.exit_code == 0, seeded.output
    starter = next(b for b in client.get("/api/v1/bundles").get_json()["items"] if b["name"] == "Starter Pack")
    assert client.post(f"/api/v1/bundles/{starter['id']}/purchase", headers=headers).status_code == 201
    assert client.delete(f"/api/v1/tokens/{big['id']}", headers=headers).status_code == 200

    # Admin actions.
    small = buy_token(client, user)
    assert client.delete(token_path(small["id"]), headers=admin["headers"]).status_code == 200
    assert client.post(user_path(user["id"]) + "/balance-adjustments", json={"amount": "5", "reason": "goodwill"},
                       headers=admin["headers"]).status_code == 201
    promoted = client.patch(user_path(referrer["id"]), json={"plan": "premium"}, headers=admin["headers"])
    assert promoted.status_code == 200

    # The account's own changes, last (they end its JWTs).
    assert client.post("/api/v1/users/me/password", json={"current_password": user["password"],
                                                          "new_password": "a new password 2"},
                       headers=headers).status_code == 204
    fresh = accounts.login(user["email"], "a new password 2")
    assert client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {fresh['access_token']}"},
                       json={}).status_code == 204

    rows = audit_rows(app)
    actions = {row["action"] for row in rows}
    expected = {
        "user.registered", "auth.login", "auth.login_failed", "auth.logout", "auth.password_changed",
        "payment.created", "payment.succeeded", "payment.webhook_rejected", "payment.mock_purchase",
        "token.purchased", "bundle.purchased", "token.revoked",
        "referral.bonus_awarded", "referral.bonus_clawed_back",
        "admin.token_revoked", "admin.balance_adjusted", "admin.user_updated",
    }
    assert expected <= actions, expected - actions
    by_user = {"user.registered", "auth.login_failed", "auth.logout", "auth.password_changed", "payment.created",
               "payment.mock_purchase", "token.purchased", "bundle.purchased", "token.revoked"}
    for row in rows:
        if row["action"] == "bundle.created":
            assert row["ip_address"] is None  # seeded from the CLI: no request, no actor
            continue
        assert (row["ip_address"], row["user_agent"]) == (CLIENT_IP, AGENT), row
        if row["action"].startswith("admin."):
            assert row["actor_id"] == admin["id"], row
        if row["action"] in by_user and row["actor_id"] != admin["id"] and row["actor_id"] != referrer["id"]:
            assert row["actor_id"] == user["id"], row
    assert any(row["action"] in by_user and row["actor_id"] == user["id"] for row in rows)


def test_the_ip_comes_from_x_forwarded_for_only_behind_trusted_proxies(make_env):
    direct = make_env()
    direct.client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "x"},
                       headers={"X-Forwarded-For": "192.0.2.50"}, environ_base={"REMOTE_ADDR": "10.0.0.2"})
    (row,) = audit_rows(direct.app, "auth.login_failed")
    assert row["ip_address"] == "10.0.0.2"  # the socket's address; the header is not believed

    behind_nginx = make_env(TRUSTED_PROXY_HOPS=1)
    behind_nginx.client.post("/api/v1/auth/login", json={"email": "b@example.com", "password": "x"},
                             headers={"X-Forwarded-For": "192.0.2.99, 192.0.2.50"},
                             environ_base={"REMOTE_ADDR": "10.0.0.2"})
    rows = audit_rows(behind_nginx.app, "auth.login_failed")
    assert rows[-1]["ip_address"] == "192.0.2.50"  # the address our one trusted proxy saw


def test_retention_deletes_only_rows_older_than_the_setting(app, client, accounts):
    from zenzefi_backend.jobs.audit import audit_retention

    with clock.travel(timedelta(days=-31)):
        accounts.register()  # user.registered, 31 days ago
    with clock.travel(timedelta(days=-29)):
        accounts.register()  # 29 days ago
    accounts.register()
    assert len(audit_rows(app, "user.registered")) == 3
    with app.app_context():
        assert audit_retention() == {"purged": 1}
        assert audit_retention() == {"purged": 0}  # idempotent
    assert len(audit_rows(app, "user.registered")) == 2
    with clock.travel(timedelta(days=2)), app.app_context():
        assert audit_retention() == {"purged": 1}
    with clock.travel(timedelta(days=31)), app.app_context():
        assert audit_retention() == {"purged": 1}
    assert audit_rows(app) == []


def test_retention_follows_audit_retention_days(app, accounts, monkeypatch):
    from zenzefi_backend.jobs.audit import audit_retention

    with clock.travel(timedelta(days=-8)):
        accounts.register()
    monkeypatch.setitem(app.config, "AUDIT_RETENTION_DAYS", 10)
    with app.app_context():
        assert audit_retention() == {"purged": 0}
    monkeypatch.setitem(app.config, "AUDIT_RETENTION_DAYS", 7)
    with app.app_context():
        assert audit_retention() == {"purged": 1}


def test_purge_works_in_batches(app, accounts, monkeypatch):
    from zenzefi_backend import database
    from zenzefi_backend.audit import retention

    monkeypatch.setattr(database, "PURGE_BATCH", 2)
    with clock.travel(timedelta(days=-40)):
        for _ in range(3):
            accounts.register()
    with app.app_context():
        assert retention.purge_audit_logs(clock.now() - timedelta(days=30)) == 3
    assert audit_rows(app) == []


def test_retention_is_scheduled_daily_at_three(app):
    from datetime import UTC, datetime
    from datetime import time as clock_time

    from zenzefi_backend.jobs.audit import audit_retention
    from zenzefi_backend.jobs.schedule import by_name

    periodic = by_name("audit_retention")
    assert periodic.func is audit_retention and periodic.daily_at == clock_time(3, 0)
    assert periodic.slot(datetime(2026, 11, 22, 2, 59, tzinfo=UTC)) is None
    assert periodic.slot(datetime(2026, 11, 22, 3, 0, tzinfo=UTC)) == "2026-11-22"
    result = app.test_cli_runner().invoke(args=["jobs", "run", "audit_retention"])
    assert result.exit_code == 0 and '"purged": 0' in result.output, result.output


def test_the_admin_api_shows_the_trail_with_ip_and_agent(client, accounts, admin):
    client.environ_base.update(REMOTE_ADDR=CLIENT_IP, HTTP_USER_AGENT=AGENT)
    user = accounts.register()
    assert client.patch(user_path(user["id"]), json={"is_active": False}, headers=admin["headers"]).status_code == 200
    items = client.get(AUDIT_LOGS, query_string={"action": "admin.user_updated"},
                       headers=admin["headers"]).get_json()["items"]
    (entry,) = items
    assert entry["actor_id"] == admin["id"] and entry["resource_type"] == "user" and entry["resource_id"] == user["id"]
    assert entry["details"] == {"changes": {"is_active": {"from": True, "to": False}}}
    assert (entry["ip_address"], entry["user_agent"]) == (CLIENT_IP, AGENT)
