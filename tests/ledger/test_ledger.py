from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa

from tests.fixtures.actions import buy_token
from zenzefi_backend.accounts.models import User
from zenzefi_backend.extensions import db
from zenzefi_backend.ledger import services as ledger
from zenzefi_backend.ledger.models import Transaction


def adjust(client, admin, user_id, amount, reason="support credit", **headers):
    return client.post(f"/api/v1/admin/users/{user_id}/balance-adjustments",
                       headers={**admin["headers"], **headers}, json={"amount": amount, "reason": reason})


def test_adjustments_credit_and_debit_with_a_ledger_entry(client, admin, accounts):
    user = accounts.signed_in()
    credit = adjust(client, admin, user["id"], "25.50")
    assert credit.status_code == 201
    assert credit.get_json()["transaction_type"] == "adjustment"
    assert credit.get_json()["amount"] == "25.50" and credit.get_json()["balance_after"] == "25.50"
    debit = adjust(client, admin, user["id"], -5)
    assert debit.status_code == 201 and debit.get_json()["balance_after"] == "20.50"
    assert client.get("/api/v1/currency/balance", headers=user["headers"]).get_json()["balance"] == "20.50"


def test_adjustment_below_zero_is_409_and_changes_nothing(client, admin, accounts):
    user = accounts.signed_in()
    adjust(client, admin, user["id"], "10")
    response = adjust(client, admin, user["id"], "-10.01")
    assert response.status_code == 409
    assert client.get("/api/v1/currency/transactions", headers=user["headers"]).get_json()["total"] == 1


@pytest.mark.parametrize("amount", [0, "0.00", "0.001", "NaN", "abc", 10**12, None, True])
def test_bad_adjustment_amounts_are_422(client, admin, accounts, amount):
    user = accounts.signed_in()
    assert adjust(client, admin, user["id"], amount).status_code == 422
    assert client.get("/api/v1/currency/transactions", headers=user["headers"]).get_json()["total"] == 0


def test_adjustments_need_a_reason_and_nothing_else(client, admin, accounts):
    user = accounts.signed_in()
    url = f"/api/v1/admin/users/{user['id']}/balance-adjustments"
    assert client.post(url, headers=admin["headers"], json={"amount": "1"}).status_code == 422
    assert client.post(url, headers=admin["headers"],
                       json={"amount": "1", "reason": "x", "balance_after": "9"}).status_code == 422


def test_adjustments_are_superuser_only(client, accounts):
    user = accounts.signed_in()
    assert adjust(client, user, user["id"], "100").status_code == 403
    response = client.post(f"/api/v1/admin/users/{user['id']}/balance-adjustments", json={"amount": 1, "reason": "x"})
    assert response.status_code == 401


def test_adjusting_an_unknown_user_is_404(client, admin):
    assert adjust(client, admin, uuid.uuid4(), "5").status_code == 404


def test_adjustments_are_audited(app, client, admin, accounts):
    user = accounts.signed_in()
    adjust(client, admin, user["id"], "7", reason="goodwill")
    from zenzefi_backend.audit.models import AuditLog

    with app.app_context():
        entry = db.session.scalar(sa.select(AuditLog).where(AuditLog.action == "admin.balance_adjusted"))
        assert entry.actor_id == uuid.UUID(admin["id"]) and entry.details["reason"] == "goodwill"


def test_transactions_filter_and_validate_type(client, admin, accounts):
    user = accounts.signed_in()
    adjust(client, admin, user["id"], "30")
    buy_token(client, user, hours=12)
    listed = client.get("/api/v1/currency/transactions?transaction_type=purchase", headers=user["headers"]).get_json()
    assert [t["amount"] for t in listed["items"]] == ["-10.00"]
    assert client.get("/api/v1/currency/transactions?transaction_type=gift",
                      headers=user["headers"]).status_code == 422


def test_verify_reports_ok_and_finds_a_tampered_balance(app, client, admin, accounts):
    user = accounts.signed_in()
    adjust(client, admin, user["id"], "40")
    assert client.get("/api/v1/admin/ledger/verify", headers=admin["headers"]).get_json() == {
        "ok": True, "users_checked": 2, "mismatches": []}
    with app.app_context():
        db.session.execute(sa.update(User).where(User.id == uuid.UUID(user["id"])).values(balance=Decimal("41")))
        db.session.commit()
    report = client.get("/api/v1/admin/ledger/verify", headers=admin["headers"]).get_json()
    assert report["ok"] is False
    assert report["mismatches"] == [{"user_id": user["id"], "balance": "41.00", "ledger_sum": "40.00"}]
    result = app.test_cli_runner().invoke(args=["ledger", "verify"])
    assert result.exit_code == 1 and "MISMATCH" in result.output


def test_ledger_verify_cli_ok(app, accounts):
    accounts.fund(accounts.register()["id"], "3")
    result = app.test_cli_runner().invoke(args=["ledger", "verify"])
    assert result.exit_code == 0 and result.output.startswith("ok: 1 users checked")


def test_balance_check_constraint_holds_even_without_the_service(app, accounts):
    user = accounts.register()
    with app.app_context():
        with pytest.raises(sa.exc.IntegrityError):
            db.session.execute(sa.update(User).where(User.id == uuid.UUID(user["id"])).values(balance=Decimal("-1")))
            db.session.commit()
        db.session.rollback()


def test_apply_keeps_cents_exact_over_many_small_entries(app, accounts):
    user = accounts.register()
    user_id = uuid.UUID(user["id"])
    with app.app_context():
        for _ in range(30):
            ledger.apply(user_id, Decimal("0.10"), "adjustment", "dime")
        for _ in range(30):
            ledger.apply(user_id, Decimal("-0.10"), "adjustment", "dime back")
        db.session.commit()
        assert db.session.get(User, user_id).balance == Decimal("0.00")
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Transaction)) == 60
        assert ledger.verify()["ok"]
