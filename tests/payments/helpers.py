"""Payment-test helpers: create payments through the API and deliver webhooks signed as a provider would."""
from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from zenzefi_backend import clock
from zenzefi_backend.audit.models import AuditLog
from zenzefi_backend.extensions import db
from zenzefi_backend.ledger import services as ledger
from zenzefi_backend.ledger.models import Transaction
from zenzefi_backend.payments import services
from zenzefi_backend.payments.models import PaymentWebhookEvent

PURCHASE = "/api/v1/currency/purchase"
WEBHOOK = "/api/v1/webhooks/payment"
MOCK_PURCHASE = "/api/v1/currency/mock-purchase"


def payment_path(payment_id: str) -> str:
    return f"/api/v1/currency/payments/{payment_id}"


def checkout_path(payment_id: str) -> str:
    return f"/api/v1/payments/mock/{payment_id}"


def sign(raw: bytes, timestamp: int, secret: str) -> str:
    """Written from the SPEC, independently of the code under test."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + raw, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def event(payment_id: str, event_type: str = "payment.succeeded", amount_znc: str = "100.00",
          event_id: str | None = None) -> dict[str, Any]:
    return {"id": event_id or f"evt_{uuid.uuid4().hex}", "type": event_type,
            "data": {"payment_id": payment_id, "amount_znc": amount_znc}}


def encode(body: dict[str, Any] | bytes) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


class Provider:
    """Delivers webhooks the way the payment provider does: raw bytes plus `X-Zenzefi-Signature`."""

    def __init__(self, app: Flask, client: FlaskClient):
        self.app = app
        self.client = client
        self.secret = app.config["PAYMENT_WEBHOOK_SECRET"]

    def now(self) -> int:
        return int(clock.now().timestamp())

    def deliver(self, body: dict[str, Any] | bytes, *, timestamp: int | None = None, secret: str | None = None,
                header: str | None | object = ..., client: FlaskClient | None = None):
        raw = encode(body)
        if header is ...:
            header = sign(raw, self.now() if timestamp is None else timestamp, secret or self.secret)
        headers = {} if header is None else {"X-Zenzefi-Signature": header}
        return (client or self.client).post(WEBHOOK, data=raw, headers=headers, content_type="application/json")


def create_payment(client: FlaskClient, user: dict, **body):
    return client.post(PURCHASE, headers=user["headers"], json={"amount_znc": "100", **body})


def top_up(client: FlaskClient, user: dict, **body) -> dict:
    """`create_payment`, which must answer 201: the payment it created."""
    response = create_payment(client, user, **body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def reconcile(app: Flask) -> dict[str, int]:
    with app.app_context():
        return services.reconcile_pending_payments()


def balance(client: FlaskClient, user: dict) -> str:
    response = client.get("/api/v1/currency/balance", headers=user["headers"])
    assert response.status_code == 200
    return response.get_json()["balance"]


def status_of(client: FlaskClient, user: dict, payment_id: str) -> str:
    response = client.get(payment_path(payment_id), headers=user["headers"])
    assert response.status_code == 200
    return response.get_json()["status"]


def deposits(app: Flask, user_id: str | None = None) -> list[Transaction]:
    with app.app_context():
        statement = sa.select(Transaction).where(Transaction.transaction_type == "deposit")
        if user_id is not None:
            statement = statement.where(Transaction.user_id == uuid.UUID(user_id))
        return list(db.session.scalars(statement))


def count(app: Flask, model) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(model))


def audits(app: Flask, action: str) -> list[AuditLog]:
    with app.app_context():
        return list(db.session.scalars(sa.select(AuditLog).where(AuditLog.action == action)
                                       .order_by(AuditLog.created_at)))


def assert_ledger_consistent(app: Flask) -> None:
    with app.app_context():
        report = ledger.verify()
    assert report["ok"] is True, report


def assert_untouched(app: Flask, client: FlaskClient, user: dict, payment_id: str) -> None:
    """Nothing credited, nothing recorded, the payment still pending."""
    assert balance(client, user) == "0.00"
    assert deposits(app) == []
    assert count(app, PaymentWebhookEvent) == 0
    assert status_of(client, user, payment_id) == "pending"
    assert_ledger_consistent(app)

