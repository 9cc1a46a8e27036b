"""Domain events (zenzefi_backend/events.py): sent once the change has committed, never after a rollback; each
receiver on its own, so one that fails neither undoes the change nor loses the other receivers' work. And the
ledger decides `balance.low` for every debit, whoever debits."""
from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from zenzefi_backend import events
from zenzefi_backend.accounts.models import User
from zenzefi_backend.audit.models import AuditLog
from zenzefi_backend.audit.services import record
from zenzefi_backend.clock import now
from zenzefi_backend.extensions import db, get_redis
from zenzefi_backend.notifications.models import OutboxEvent
from zenzefi_backend.proxy.cache import HOLDER_KEY, TOKEN_KEY
from zenzefi_backend.proxy.models import ProxySession
from zenzefi_backend.tokens.models import AccessToken, hash_secret


def _token_in_use(app, client, accounts) -> tuple[dict, dict]:
    """A user's 24 h token, activated an hour ago, held by a device in an open session and cached by the proxy."""
    user = accounts.signed_in()
    accounts.fund(user["id"], "100.00")
    response = client.post("/api/v1/tokens/purchase", headers=user["headers"], json={"duration_hours": 24})
    assert response.status_code == 201, response.get_json()
    token = response.get_json()
    with app.app_context():
        activated = now() - timedelta(hours=1)
        db.session.execute(sa.update(AccessToken).where(AccessToken.id == uuid.UUID(token["id"]))
                           .values(activated_at=activated, expires_at=activated + timedelta(hours=24)))
        db.session.add(ProxySession(id=uuid.uuid4(), token_id=uuid.UUID(token["id"]), user_id=uuid.UUID(user["id"]),
                                    device_id="device-1", started_at=activated, last_activity=now(),
                                    request_count=1, bytes_in=0, bytes_out=0, is_active=True))
        db.session.commit()
        get_redis().set(TOKEN_KEY + hash_secret(token["token"]), '{"cached": true}', ex=300)
        get_redis().set(HOLDER_KEY + token["id"], "device-1\nsession", ex=300)
    return user, token


@pytest.fixture
def broken_receiver(app):
    """A receiver of `token_revoked`, called before the proxy's, that writes a row of its own and then fails."""
    calls = []

    def receive(_sender, *, token, **_facts):
        calls.append(token.id)
        record("test.unfinished", resource_type="access_token", resource_id=token.id)
        db.session.flush()
        raise RuntimeError("a receiver broke")

    others = events.receivers_of(events.token_revoked)
    for receiver in others:
        events.token_revoked.disconnect(receiver)
    events.token_revoked.connect(receive)
    for receiver in others:
        events.token_revoked.connect(receiver)
    yield calls
    events.token_revoked.disconnect(receive)
    assert events.receivers_of(events.token_revoked) == others


def test_a_failing_receiver_undoes_neither_the_revoke_nor_the_proxys_work(app, client, accounts, broken_receiver):
    user, token = _token_in_use(app, client, accounts)

    response = client.delete(f"/api/v1/tokens/{token['id']}", headers=user["headers"])

    assert response.status_code == 200, response.get_json()
    assert Decimal(response.get_json()["refund_amount"]) > 0
    assert broken_receiver == [uuid.UUID(token["id"])]
    with app.app_context():
        row = db.session.get(AccessToken, uuid.UUID(token["id"]))
        assert row.revoked_at is not None  # the change stands
        assert db.session.scalar(sa.select(User.balance).where(User.id == uuid.UUID(user["id"]))) == \
            Decimal(response.get_json()["new_balance"])
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditLog)
                                 .where(AuditLog.action == "test.unfinished")) == 0  # its own work rolled back
        session = db.session.scalar(sa.select(ProxySession).where(ProxySession.token_id == row.id))
        assert session.is_active is False and session.ended_at is not None  # the proxy's receivers still ran
        ended = db.session.scalars(sa.select(OutboxEvent.payload).where(OutboxEvent.event_type == "session.ended"))
        assert [payload["reason"] for payload in ended] == ["revoked"]
        cached = get_redis().get(TOKEN_KEY + hash_secret(token["token"]))
        assert json.loads(cached)["revoked"] == 1
        assert not get_redis().exists(HOLDER_KEY + token["id"])


@pytest.fixture
def plan_changes(app):
    seen = []

    def receive(_sender, *, user_id, **_facts):
        # Sent after the commit returned: the change is visible, and the receiver may use the session.
        seen.append((user_id, db.session.scalar(sa.select(User.plan).where(User.id == user_id))))

    events.plan_changed.connect(receive)
    yield seen
    events.plan_changed.disconnect(receive)


def test_an_announcement_waits_for_the_commit_and_dies_with_a_rollback(app, accounts, plan_changes):
    user_id = uuid.UUID(accounts.register()["id"])
    with app.app_context():
        db.session.execute(sa.update(User).where(User.id == user_id).values(plan="premium"))
        events.announce(events.plan_changed, user_id=user_id)
        assert plan_changes == []
        db.session.rollback()
        db.session.commit()
        assert plan_changes == []

        db.session.execute(sa.update(User).where(User.id == user_id).values(plan="enterprise"))
        events.announce(events.plan_changed, user_id=user_id)
        assert plan_changes == []
        db.session.commit()
        assert plan_changes == [(user_id, "enterprise")]
        db.session.commit()
        assert plan_changes == [(user_id, "enterprise")]  # once


def test_the_ledger_writes_balance_low_for_every_debit_an_admin_correction_too(app, client, accounts):
    admin = accounts.signed_in(superuser=True)
    user = accounts.register()
    accounts.fund(user["id"], "25.00")

    def adjust(amount: str):
        return client.post(f"/api/v1/admin/users/{user['id']}/balance-adjustments", headers=admin["headers"],
                           json={"amount": amount, "reason": "correction"})

    assert adjust("-10.00").status_code == 201  # 15.00: above the threshold
    assert adjust("-6.00").status_code == 201  # 9.00: crossed below 10
    assert adjust("-1.00").status_code == 201  # 8.00: already below
    with app.app_context():
        payloads = db.session.scalars(sa.select(OutboxEvent.payload).where(OutboxEvent.event_type == "balance.low",
                                                                          OutboxEvent.user_id == uuid.UUID(user["id"])))
        assert list(payloads) == [{"balance": "9.00"}]
