"""Top-ups: create a payment, take the provider's signed webhook, expire what was never paid.

Only `pending → succeeded` credits the balance, once: the webhook locks the payment row, records the
event id (a replay is a duplicate key) and moves the status with a conditional UPDATE, all in the DB
transaction that writes the DEPOSIT entry.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import current_app, url_for
from sqlalchemy.dialects import postgresql, sqlite

from .. import jsonbody, metrics
from ..accounts.models import User
from ..audit.services import record
from ..clock import now
from ..database import db
from ..errors import BadRequest, NotFound, ServiceUnavailable, Unauthorized, ValidationFailed, ZenzefiError
from ..ledger import services as ledger
from ..money import InvalidAmount, format_amount, parse_amount
from ..notifications.outbox import emit
from ..tokens.pricing import convert
from .models import MAX_EVENT_ID_LENGTH, Payment, PaymentWebhookEvent

log = logging.getLogger(__name__)

PAYMENT_LIFETIME = timedelta(hours=24)
MOCK_PROVIDER = "mock"
SIGNATURE_HEADER = "X-Zenzefi-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300
MAX_SIGNATURE_HEADER_LENGTH = 2048
MAX_WEBHOOK_BODY_BYTES = 64 * 1024
HANDLED_EVENTS = {"payment.succeeded": "succeeded", "payment.canceled": "canceled"}


class PaymentNotFound(NotFound):
    message = "Payment not found."


class NoPaymentProvider(ServiceUnavailable):
    message = "No payment provider is configured."


class InvalidSignature(Unauthorized):
    message = "Invalid webhook signature."


class WebhookTooLarge(ZenzefiError):
    code = 413
    message = f"Webhook bodies are at most {MAX_WEBHOOK_BODY_BYTES} bytes."


def mock_payments_enabled() -> bool:
    return bool(current_app.config["MOCK_PAYMENTS_ENABLED"])


def payment_url(payment: Payment) -> str:
    """Where the customer pays: the mock provider's checkout page (the only provider so far)."""
    return url_for("mock-provider.checkout", payment_id=payment.id, _external=True)


def create_payment(user: User, amount_znc: Decimal, currency: str, return_url: str | None = None) -> Payment:
    """A pending payment at the configured provider; 503 and nothing created when there is none."""
    if not mock_payments_enabled():
        raise NoPaymentProvider()
    amount = convert(amount_znc, currency)
    if amount <= 0:
        raise ValidationFailed({"amount_znc": [f"Too small to pay in {currency}."]})
    created = now()
    payment = Payment(
        id=uuid.uuid4(), user_id=user.id, amount_znc=amount_znc, currency=currency, amount=amount,
        status="pending", provider=MOCK_PROVIDER, provider_payment_id=f"mock_{secrets.token_hex(16)}",
        return_url=return_url, created_at=created, expires_at=created + PAYMENT_LIFETIME,
    )
    db.session.add(payment)
    record("payment.created", actor_id=user.id, resource_type="payment", resource_id=payment.id,
           details={"amount_znc": format_amount(amount_znc), "currency": currency, "amount": format_amount(amount),
                    "provider": payment.provider})
    db.session.commit()
    return payment


def get_own_payment(user: User, payment_id: uuid.UUID) -> Payment:
    payment = db.session.scalar(sa.select(Payment).where(Payment.id == payment_id, Payment.user_id == user.id))
    if payment is None:
        raise PaymentNotFound()
    return payment


def get_payment(payment_id: uuid.UUID) -> Payment:
    payment = db.session.get(Payment, payment_id)
    if payment is None:
        raise PaymentNotFound()
    return payment


def sign(raw_body: bytes, timestamp: int, secret: str | None = None) -> str:
    """The `X-Zenzefi-Signature` value a provider sends: `t=<unix seconds>,v1=<hex HMAC-SHA256>`."""
    key = (secret or current_app.config["PAYMENT_WEBHOOK_SECRET"]).encode()
    digest = hmac.new(key, f"{timestamp}.".encode() + raw_body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _reject(reason: str, message: str, raw_body: bytes) -> InvalidSignature:
    """Audit a rejected delivery in its own commit (the request fails, the trail stays); never the secret."""
    db.session.rollback()
    record("payment.webhook_rejected", resource_type="payment_webhook",
           details={"reason": reason, "body_sha256": hashlib.sha256(raw_body).hexdigest(),
                    "body_bytes": len(raw_body)})
    db.session.commit()
    log.warning("payment webhook rejected", extra={"reason": reason})
    return InvalidSignature(message)


def _parse_signature_header(header: str) -> tuple[int, list[str]] | None:
    timestamps, signatures = [], []
    for item in header.split(","):
        scheme, separator, value = item.strip().partition("=")
        if not separator or not scheme or not value:
            return None
        if scheme == "t":
            timestamps.append(value)
        elif scheme == "v1":
            signatures.append(value.lower())
        # Other schemes (a test-mode `v0`, future versions) are ignored, as Stripe's clients do.
    if len(timestamps) != 1 or not signatures or not timestamps[0].isascii() or not timestamps[0].isdigit():
        return None
    if any(len(s) != 64 or any(c not in "0123456789abcdef" for c in s) for s in signatures):
        return None
    return int(timestamps[0]), signatures


def verify_signature(raw_body: bytes, header: str | None) -> None:
    """Accept when any `v1` is HMAC-SHA256(secret, "<t>." + body) and `t` is within 300 s of now; else 401."""
    if not header:
        raise _reject("missing_signature", f"Missing {SIGNATURE_HEADER} header.", raw_body)
    parsed = _parse_signature_header(header) if len(header) <= MAX_SIGNATURE_HEADER_LENGTH else None
    if parsed is None:
        raise _reject("malformed_signature",
                      f"Malformed {SIGNATURE_HEADER} header: expected t=<unix seconds>,v1=<hex>.", raw_body)
    timestamp, signatures = parsed
    expected = sign(raw_body, timestamp).partition(",v1=")[2]
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise _reject("signature_mismatch", "Invalid webhook signature.", raw_body)
    if abs(int(now().timestamp()) - timestamp) > SIGNATURE_TOLERANCE_SECONDS:
        raise _reject("timestamp_out_of_tolerance",
                      f"Signature timestamp is more than {SIGNATURE_TOLERANCE_SECONDS} s from now.", raw_body)


def reject_oversized_webhook(content_length: int | None) -> WebhookTooLarge:
    """Bodies over 64 KiB are refused unread (413); audited like any other rejected delivery."""
    db.session.rollback()
    record("payment.webhook_rejected", resource_type="payment_webhook",
           details={"reason": "body_too_large", "content_length": content_length})
    db.session.commit()
    log.warning("payment webhook rejected", extra={"reason": "body_too_large"})
    return WebhookTooLarge()


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    payment_id: uuid.UUID
    amount_znc: Decimal | None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def parse_event(raw_body: bytes) -> WebhookEvent:
    """Strict: a JSON object with string `id`, `type`, an object `data` with a UUID `payment_id`; 400 otherwise.
    Handled types must also carry a valid `data.amount_znc`."""
    try:
        body = jsonbody.loads(raw_body, parse_float=Decimal, parse_constant=_no_constants,
                              object_pairs_hook=_unique_keys)
    except jsonbody.MalformedJson as exc:
        raise BadRequest(f"The webhook body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise BadRequest("The webhook body must be a JSON object.")
    event_id, event_type, data = body.get("id"), body.get("type"), body.get("data")
    # Printable only: PostgreSQL refuses NUL in text, and ids end up in logs and the audit trail.
    if not isinstance(event_id, str) or not event_id.strip() or len(event_id) > MAX_EVENT_ID_LENGTH \
            or not event_id.isprintable():
        raise BadRequest(f"`id` must be 1 to {MAX_EVENT_ID_LENGTH} printable characters.")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 64 or not event_type.isprintable():
        raise BadRequest("`type` must be 1 to 64 printable characters.")
    if not isinstance(data, dict):
        raise BadRequest("`data` must be an object.")
    try:
        payment_id = uuid.UUID(data.get("payment_id"))
    except (TypeError, ValueError, AttributeError):
        raise BadRequest("`data.payment_id` must be a payment id (UUID).") from None
    amount_znc = None
    if event_type in HANDLED_EVENTS:
        try:
            amount_znc = parse_amount(data.get("amount_znc"))
        except InvalidAmount as exc:
            raise BadRequest(f"`data.amount_znc`: {exc}") from None
        except ArithmeticError:  # beyond Decimal's context (1E+999999999)
            raise BadRequest("`data.amount_znc`: Not a valid amount.") from None
    return WebhookEvent(event_id, event_type, payment_id, amount_znc)


def _record_event(event: WebhookEvent, moment) -> bool:
    """Insert the event id unless it is already there; False for a replay. Race-free: the primary key decides."""
    values = {"event_id": event.id, "payment_id": event.payment_id, "event_type": event.type, "received_at": moment}
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":
        statement = postgresql.insert(PaymentWebhookEvent).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(PaymentWebhookEvent).values(**values).on_conflict_do_nothing()
    else:
        raise RuntimeError(f"no conditional insert for {dialect}")
    # RETURNING rather than rowcount: an ORM-enabled INSERT may not report a rowcount (psycopg 3).
    return db.session.execute(statement.returning(PaymentWebhookEvent.event_id)).first() is not None


def _leave_pending(payment_id: uuid.UUID, status: str, moment) -> bool:
    """`pending → status` as one conditional UPDATE: of any number of racing writers exactly one wins."""
    return db.session.execute(
        sa.update(Payment)
        .where(Payment.id == payment_id, Payment.status == "pending")
        .values(status=status, completed_at=moment)
        .returning(Payment.id)
        .execution_options(synchronize_session=False)
    ).first() is not None


def handle_webhook(raw_body: bytes, header: str | None) -> dict[str, bool]:
    """The provider's callback (SPEC §3.4): signature (401), body (400), payment (404), amount (422),
    then at most one state change and at most one credit, in one DB transaction."""
    verify_signature(raw_body, header)
    event = parse_event(raw_body)
    if event.type not in HANDLED_EVENTS:
        return {"received": True, "processed": False}

    moment = now()
    payment = db.session.scalar(
        sa.select(Payment).where(Payment.id == event.payment_id).with_for_update()
        .execution_options(populate_existing=True)
    )
    if payment is None:
        db.session.rollback()
        raise PaymentNotFound("Unknown payment.")
    if event.amount_znc != payment.amount_znc:
        record("payment.amount_mismatch", actor_id=payment.user_id, resource_type="payment", resource_id=payment.id,
               details={"event_id": event.id, "event_type": event.type, "expected": format_amount(payment.amount_znc),
                        "received": format_amount(event.amount_znc)})
        db.session.commit()
        raise ValidationFailed({"data.amount_znc": ["Does not match the payment's amount."]},
                               "The event's `data.amount_znc` does not match the payment's amount.")
    if not _record_event(event, moment):
        db.session.rollback()
        return {"received": True, "processed": False}

    status = HANDLED_EVENTS[event.type]
    if not _leave_pending(payment.id, status, moment):
        if status == "succeeded" and payment.status != "succeeded":
            # The provider took the money but the payment was already closed: an operator must reconcile it.
            log.warning("payment success for a closed payment", extra={"payment_id": str(payment.id),
                                                                       "payment_status": payment.status})
            record("payment.success_not_applied", actor_id=payment.user_id, resource_type="payment",
                   resource_id=payment.id, details={"event_id": event.id, "status": payment.status})
        db.session.commit()
        return {"received": True, "processed": False}

    details = {"event_id": event.id, "amount_znc": format_amount(payment.amount_znc), "currency": payment.currency,
               "amount": format_amount(payment.amount), "provider": payment.provider}
    if status == "succeeded":
        ledger.lock_user(payment.user_id)
        entry = ledger.apply(
            payment.user_id, payment.amount_znc, "deposit",
            f"Top-up: {format_amount(payment.amount)} {payment.currency} ({payment.provider})",
            reference_type="payment", reference_id=payment.id,
        )
        emit("balance.topped_up", payment.user_id, payment_id=str(payment.id),
             amount_znc=format_amount(payment.amount_znc), currency=payment.currency,
             amount=format_amount(payment.amount), balance=format_amount(entry.balance_after))
        details["balance_after"] = format_amount(entry.balance_after)
        metrics.count(metrics.balance_deposits)
    record(f"payment.{status}", actor_id=payment.user_id, resource_type="payment", resource_id=payment.id,
           details=details)
    db.session.commit()
    return {"received": True, "processed": True}


def expire_pending_payments() -> int:
    """Pending payments past `expires_at` (created + 24 h) become `expired`; safe to run anywhere, any time."""
    moment = now()
    expired = db.session.execute(
        sa.update(Payment)
        .where(Payment.status == "pending", Payment.expires_at <= moment)
        .values(status="expired", completed_at=moment)
        .returning(Payment.id, Payment.user_id)
        .execution_options(synchronize_session=False)
    ).all()
    for payment_id, user_id in expired:
        record("payment.expired", actor_id=user_id, resource_type="payment", resource_id=payment_id)
    db.session.commit()
    return len(expired)


def mock_purchase(user: User, amount: Decimal) -> dict[str, Any]:
    """Mock mode only: an instant DEPOSIT, no provider involved."""
    if not mock_payments_enabled():
        raise NotFound()
    ledger.lock_user(user.id)
    entry = ledger.apply(user.id, amount, "deposit", "Mock purchase", reference_type="mock_purchase")
    emit("balance.topped_up", user.id, transaction_id=str(entry.id), amount_znc=format_amount(amount),
         balance=format_amount(entry.balance_after))
    record("payment.mock_purchase", actor_id=user.id, resource_type="transaction", resource_id=entry.id,
           details={"amount_znc": format_amount(amount), "balance_after": format_amount(entry.balance_after)})
    metrics.count(metrics.balance_deposits)
    db.session.commit()
    return {"transaction": entry, "new_balance": entry.balance_after}


def mock_provider_event(payment: Payment, event_type: str) -> tuple[bytes, str]:
    """What the mock provider POSTs: the event JSON and its signature header, signed now."""
    body = {"id": f"evt_mock_{secrets.token_hex(12)}", "type": event_type,
            "data": {"payment_id": str(payment.id), "amount_znc": format_amount(payment.amount_znc)}}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return raw, sign(raw, int(now().timestamp()))

