"""Plan-test helpers: read plan state, the ledger and the audit trail as a client or operator would."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from zenzefi_backend.accounts.models import User
from zenzefi_backend.audit.models import AuditLog
from zenzefi_backend.extensions import db
from zenzefi_backend.ledger.models import Transaction

PLANS = "/api/v1/plans"
MY_PLAN = "/api/v1/users/me/plan"


def buy(client: FlaskClient, user: dict, plan: str, **headers: str):
    return client.post(MY_PLAN, json={"plan": plan}, headers={**user["headers"], **headers})


def balance(client: FlaskClient, user: dict) -> str:
    return client.get("/api/v1/currency/balance", headers=user["headers"]).get_json()["balance"]


def stored_user(app: Flask, user_id: str) -> User:
    with app.app_context():
        user = db.session.get(User, uuid.UUID(user_id))
        db.session.expunge(user)
        return user


def set_plan(app: Flask, user_id: str, plan: str, expires_at: datetime | None) -> None:
    with app.app_context():
        db.session.execute(sa.update(User).where(User.id == uuid.UUID(user_id))
                           .values(plan=plan, plan_expires_at=expires_at))
        db.session.commit()


def plan_entries(app: Flask, user_id: str) -> list[tuple[str, str]]:
    with app.app_context():
        rows = db.session.execute(sa.select(Transaction.amount, Transaction.reference_id)
                                  .where(Transaction.user_id == uuid.UUID(user_id),
                                         Transaction.transaction_type == "plan")
                                  .order_by(Transaction.created_at)).all()
        return [(f"{amount:.2f}", reference) for amount, reference in rows]


def audits(app: Flask, action: str) -> list[AuditLog]:
    with app.app_context():
        rows = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == action)
                                  .order_by(AuditLog.created_at)).all()
        for row in rows:
            db.session.expunge(row)
        return list(rows)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)
