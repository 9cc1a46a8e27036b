"""Admin-test helpers: the admin routes' paths and a look at the audit trail."""
from __future__ import annotations

import uuid

import sqlalchemy as sa
from flask import Flask

ADMIN = "/api/v1/admin"
USERS = f"{ADMIN}/users"
TOKENS = f"{ADMIN}/tokens"
SESSIONS = f"{ADMIN}/sessions"
TRANSACTIONS = f"{ADMIN}/transactions"
AUDIT_LOGS = f"{ADMIN}/audit-logs"
BROWSER = "AdminConsole/1.0 (tests)"


def user_path(user_id: str) -> str:
    return f"{USERS}/{user_id}"


def token_path(token_id: str) -> str:
    return f"{TOKENS}/{token_id}"


def session_path(session_id: str) -> str:
    return f"{SESSIONS}/{session_id}"


def audit_rows(app: Flask, action: str | None = None) -> list[dict]:
    """The audit trail straight from the table, oldest first, as plain dicts."""
    from zenzefi_backend.audit.models import AuditLog
    from zenzefi_backend.extensions import db

    with app.app_context():
        statement = sa.select(AuditLog).order_by(AuditLog.created_at, AuditLog.id)
        if action is not None:
            statement = statement.where(AuditLog.action == action)
        return [
            {"action": row.action, "actor_id": None if row.actor_id is None else str(row.actor_id),
             "resource_type": row.resource_type, "resource_id": row.resource_id, "details": dict(row.details),
             "ip_address": row.ip_address, "user_agent": row.user_agent, "created_at": row.created_at}
            for row in db.session.scalars(statement)
        ]


def user_row(app: Flask, user_id: str):
    from zenzefi_backend.accounts.models import User
    from zenzefi_backend.extensions import db

    with app.app_context():
        row = db.session.get(User, uuid.UUID(user_id))
        db.session.expunge(row)
        return row
