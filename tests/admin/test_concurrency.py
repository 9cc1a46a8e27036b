"""Admin actions under concurrency (PostgreSQL): one force revoke wins; two retention runs purge each row once."""
from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from tests.fixtures.actions import buy_token
from tests.fixtures.race import race, race_in_app_contexts
from tests.support import postgres_only
from zenzefi_backend import clock

from .helpers import audit_rows, token_path


@postgres_only
def test_of_ten_simultaneous_force_revokes_exactly_one_succeeds(app, client, accounts, admin):
    user = accounts.signed_in()
    accounts.fund(user["id"], "5.00")
    token = buy_token(client, user)
    responses = race(app, [lambda c: c.delete(token_path(token["id"]), headers=admin["headers"])] * 10)
    assert sorted(r.status_code for r in responses) == [200] + [409] * 9
    assert len(audit_rows(app, "admin.token_revoked")) == 1
    balance = client.get("/api/v1/currency/balance", headers=user["headers"]).get_json()["balance"]
    assert balance == "4.00"


@postgres_only
def test_two_retention_runs_at_once_purge_every_old_row_exactly_once(app, monkeypatch):
    from zenzefi_backend import database
    from zenzefi_backend.audit.models import AuditLog
    from zenzefi_backend.extensions import db
    from zenzefi_backend.jobs.audit import audit_retention

    monkeypatch.setattr(database, "PURGE_BATCH", 25)
    with app.app_context():
        old = clock.now() - timedelta(days=40)
        db.session.execute(sa.insert(AuditLog), [{"action": "test.old", "details": {}, "created_at": old}] * 600)
        db.session.execute(sa.insert(AuditLog), [{"action": "test.new", "details": {}, "created_at": clock.now()}] * 5)
        db.session.commit()
    results = [outcome["purged"] for outcome in race_in_app_contexts(app, audit_retention, threads=2)]
    assert len(results) == 2 and sum(results) == 600, results
    assert [row["action"] for row in audit_rows(app)] == ["test.new"] * 5
