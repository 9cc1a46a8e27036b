"""Admin actions under concurrency (PostgreSQL): one force revoke wins; two retention runs purge each row once."""
from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa

from tests.fixtures.actions import buy_token
from tests.support import postgres_only, race
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
    barrier = threading.Barrier(2)
    results: list[int] = []

    def run() -> None:
        with app.app_context():
            barrier.wait(timeout=30)
            results.append(audit_retention()["purged"])
            db.session.remove()

    workers = [threading.Thread(target=run) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert len(results) == 2 and sum(results) == 600, results
    assert [row["action"] for row in audit_rows(app)] == ["test.new"] * 5
