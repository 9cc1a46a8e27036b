"""Top-ups: create a payment at the configured provider, take the provider's callbacks, reconcile what the
callbacks missed, expire what was never paid.

Every provider ends in `settle`, the one place a payment leaves `pending`: it locks the payment row, checks what
the provider says against it, records the provider's event id (a replay is a duplicate key) and moves the status
with a conditional UPDATE, in the DB transaction that writes the DEPOSIT entry. So a payment is credited once,
whichever of its callbacks, replays and reconciliation runs arrive, and in whatever order.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import current_app, url_for
from sqlalchemy.dialects import postgresql, sqlite

from .. import metrics
from ..accounts.models import User
from ..audit.services import record
from ..clock import now
from ..database import db
from ..errors import BadRequest, NotFound, ServiceUnavailable, ValidationFailed, ZenzefiError
from ..ledger import services as ledger
from ..money import format_amount
from ..notifications.outbox import emit
from ..tokens.pricing import convert
from .models import MAX_PAYMENT_URL_LENGTH, Payment, PaymentWebhookEvent
from .providers import CallbackRejected, PaymentProvider, ProviderUnavailable, ProviderVerdict, get_provider
from .providers.mock import MockProvider

log = logging.getLogger(__name__)

PAYMENT_LIFETIME = timedelta(hours=24)
RECONCILE_AFTER = timedelta(minutes=10)  # SPEC §4: a webhook normally arrives well before this
RECONCILE_BATCH = 500  # payments asked about per run at most; the rest wait for the next run (oldest first)
MAX_WEBHOOK_BODY_BYTES = 64 * 1024
SIGNED_WEBHOOK_PROVIDERS = ("mock", "gateway")  # the ones whose callback is `POST /webhooks/payment`


class PaymentNotFound(NotFound):
    message = "Payment not found."


class NoPaymentProvider(ServiceUnavailable):
    message = "No payment provider is configured."


class CallbackNotEnabled(NotFound):
    message = "This payment callback is not enabled."


class WebhookTooLarge(ZenzefiError):
    code = 413
    message = f"Webhook bodies are at most {MAX_WEBHOOK_BODY_BYTES} bytes."


def mock_payments_enabled() -> bool:
    return bool(current_app.config["MOCK_PAYMENTS_ENABLED"])


def configured_provider_name() -> str:
    return current_app.config["PAYMENT_PROVIDER"]


def payment_url(payment: Payment) -> str:
    """Where the customer pays: what the provider returned (rows from before it was stored: the mock page)."""
    return payment.payment_url or url_for("mock-provider.checkout", payment_id=payment.id, _external=True)


def _provider_for_new_payments() -> PaymentProvider:
    name = configured_provider_name()
    if name == MockProvider.name and not mock_payments_enabled():
        raise NoPaymentProvider()
    return get_provider(name)


def providers_summary() -> dict[str, Any]:
    """`GET /currency/providers`: who takes payments now, in which currencies, from which amount."""
    name = configured_provider_name()
    provider = get_provider(name)
    available = name != MockProvider.name or mock_payments_enabled()
    return {"provider": name, "available": available, "currencies": list(provider.currencies) if available else [],
            "minimums": {c: format_amount(m) for c, m in provider.minimums.items()} if available else {},
            "reconciles": provider.reconciles}


def create_payment(user: User, amount_znc: Decimal, currency: str, return_url: str | None = None) -> Payment:
    """A pending payment at the configured provider.

    The provider is called first, with our pre-generated payment id as its idempotency key, and the row is
    inserted only with the provider's id: a provider that is down is a 503 with nothing stored, and a crash
    between the two leaves only a checkout whose URL nobody ever received (it expires at the provider)."""
    provider = _provider_for_new_payments()
    amount = convert(amount_znc, currency)
    if amount <= 0:
        raise ValidationFailed({"amount_znc": [f"Too small to pay in {currency}."]})
    provider.check_amount(amount, currency)
    created = now()
    payment = Payment(
        id=uuid.uuid4(), user_id=user.id, amount_znc=amount_znc, currency=currency, amount=amount,
        status="pending", provider=provider.name, return_url=return_url, created_at=created,
        expires_at=created + PAYMENT_LIFETIME,
    )
    db.session.rollback()  # nothing is pending; no transaction (nor pooled connection) is held across the call
    try:
        checkout = provider.create_checkout(payment, return_url)
    except ProviderUnavailable:
        log.warning("payment provider unavailable at creation", extra={"provider": provider.name})
        raise
    if len(checkout.payment_url) > MAX_PAYMENT_URL_LENGTH:  # a gateway template filled with a long return_url
        raise ValidationFailed({"return_url": ["Too long for the provider's checkout URL."]}) if return_url \
            else ProviderUnavailable()
    payment.provider_payment_id = checkout.provider_payment_id
    payment.payment_url = checkout.payment_url
    db.session.add(payment)
    record("payment.created", actor_id=payment.user_id, resource_type="payment", resource_id=payment.id,
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


def get_mock_payment(payment_id: uuid.UUID) -> Payment:
    """The mock checkout shows and pays only the mock provider's payments (404 for any other provider's)."""
    payment = get_payment(payment_id)
    if payment.provider != MockProvider.name:
        raise PaymentNotFound()
    return payment


# --- callbacks ------------------------------------------------------------------------------------------------------


def _audit_rejection(action: str, provider: str, reason: str, raw_body: bytes | None = None,
                     **details: Any) -> None:
    """Audit a rejected callback in its own commit (the request fails, the trail stays); never a secret."""
    db.session.rollback()
    if raw_body is not None:
        details.update(body_sha256=hashlib.sha256(raw_body).hexdigest(), body_bytes=len(raw_body))
    record(action, resource_type="payment_webhook", details={"reason": reason, "provider": provider, **details})
    db.session.commit()
    log.warning("payment callback rejected", extra={"reason": reason, "provider": provider})


def reject_oversized_webhook(provider: str, content_length: int | None) -> WebhookTooLarge:
    """Bodies over 64 KiB are refused unread (413); audited like any other rejected delivery."""
    _audit_rejection("payment.webhook_rejected", provider, "body_too_large", content_length=content_length)
    return WebhookTooLarge()


def signed_webhook_provider_name() -> str:
    """`POST /webhooks/payment` speaks for the configured provider when it is `mock` or `gateway`."""
    name = configured_provider_name()
    return name if name in SIGNED_WEBHOOK_PROVIDERS else "gateway"


def handle_provider_callback(provider_name: str, raw_body: bytes, headers: Mapping[str, str],
                             client_ip: str | None) -> dict[str, bool]:
    """Every provider's callback: proved by the provider (4xx + audit otherwise), then `settle`d.

    Only the configured provider's path is open, so no callback path can settle another provider's payment."""
    if provider_name != configured_provider_name():
        _audit_rejection("payment.webhook_rejected", provider_name, "provider_not_configured", raw_body)
        raise CallbackNotEnabled()
    provider = get_provider(provider_name)
    try:
        verdict = provider.verify_callback(raw_body, headers, client_ip or "")
    except CallbackRejected as exc:
        _audit_rejection("payment.webhook_rejected", provider_name, exc.reason, raw_body, message=exc.message)
        raise
    except BadRequest as exc:
        _audit_rejection("payment.webhook_malformed", provider_name, "malformed_body", raw_body,
                         message=exc.message)
        raise
    if verdict is None:
        db.session.rollback()
        return {"received": True, "processed": False}
    return {"received": True, "processed": settle(verdict, provider_name, source="callback")}


# --- the one settlement ---------------------------------------------------------------------------------------------


def _lock_payment(verdict: ProviderVerdict) -> Payment | None:
    condition = Payment.id == verdict.payment_id if verdict.payment_id is not None \
        else Payment.provider_payment_id == verdict.provider_payment_id
    return db.session.scalar(sa.select(Payment).where(condition).with_for_update()
                             .execution_options(populate_existing=True))


def _mismatches(payment: Payment, verdict: ProviderVerdict) -> dict[str, tuple[str, str]]:
    """Every field the provider states that differs from the payment row: field → (expected, received)."""
    found: dict[str, tuple[str, str]] = {}
    if verdict.provider_payment_id is not None and verdict.provider_payment_id != payment.provider_payment_id:
        found["provider_payment_id"] = (payment.provider_payment_id, verdict.provider_payment_id)
    if verdict.amount_znc is not None and verdict.amount_znc != payment.amount_znc:
        found["data.amount_znc"] = (format_amount(payment.amount_znc), format_amount(verdict.amount_znc))
    if verdict.amount is not None and verdict.amount != payment.amount:
        found["amount"] = (format_amount(payment.amount), format_amount(verdict.amount))
    if verdict.currency is not None and verdict.currency.upper() != payment.currency:
        found["currency"] = (payment.currency, verdict.currency)
    return found


def _record_event(verdict: ProviderVerdict, payment_id: uuid.UUID, moment) -> bool:
    """Insert the event id unless it is already there; False for a replay. Race-free: the primary key decides."""
    values = {"event_id": verdict.event_id, "payment_id": payment_id,
              "event_type": (verdict.event_type or verdict.status)[:64], "received_at": moment}
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


def settle(verdict: ProviderVerdict, provider_name: str, source: str) -> bool:
    """What a provider says about a payment (a proved callback or a status fetch) → at most one state change and at
    most one credit, in one DB transaction. True when this call moved the payment out of `pending`.

    404: no such payment of this provider. 422 (audited, nothing recorded, so a correct delivery still works):
    the provider's id, amount or currency differ from the payment. A `pending` verdict, a replayed event id or a
    payment no longer pending change nothing (False)."""
    moment = now()
    payment = _lock_payment(verdict)
    if payment is None or payment.provider != provider_name:
        reason = "unknown_payment" if payment is None else "other_provider"
        _audit_rejection("payment.webhook_rejected", provider_name, reason, event_id=verdict.event_id,
                         source=source, payment_id=str(verdict.payment_id or ""),
                         provider_payment_id=verdict.provider_payment_id)
        raise PaymentNotFound("Unknown payment.")
    mismatches = _mismatches(payment, verdict)
    if mismatches:
        field, (expected, received) = next(iter(mismatches.items()))
        record("payment.amount_mismatch", actor_id=payment.user_id, resource_type="payment", resource_id=payment.id,
               details={"event_id": verdict.event_id, "event_type": verdict.event_type, "source": source,
                        "provider": provider_name, "field": field, "expected": expected, "received": received,
                        "mismatches": {f: {"expected": e, "received": r} for f, (e, r) in mismatches.items()}})
        db.session.commit()
        log.warning("payment verdict does not match the payment", extra={"payment_id": str(payment.id),
                                                                         "fields": sorted(mismatches)})
        raise ValidationFailed({f: ["Does not match the payment."] for f in mismatches},
                               "The provider's payment does not match ours (amount, currency or id).")
    if verdict.status == "pending":
        db.session.rollback()
        return False
    if verdict.event_id is not None and not _record_event(verdict, payment.id, moment):
        db.session.rollback()
        return False

    if not _leave_pending(payment.id, verdict.status, moment):
        if verdict.status == "succeeded" and payment.status != "succeeded":
            # The provider took the money but the payment was already closed: an operator must reconcile it.
            log.warning("payment success for a closed payment", extra={"payment_id": str(payment.id),
                                                                       "payment_status": payment.status})
            record("payment.success_not_applied", actor_id=payment.user_id, resource_type="payment",
                   resource_id=payment.id, details={"event_id": verdict.event_id, "status": payment.status,
                                                    "source": source, "provider": provider_name})
        db.session.commit()
        return False

    details = {"event_id": verdict.event_id, "source": source, "amount_znc": format_amount(payment.amount_znc),
               "currency": payment.currency, "amount": format_amount(payment.amount), "provider": payment.provider,
               "provider_payment_id": payment.provider_payment_id}
    if verdict.status == "succeeded":
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
    record(f"payment.{verdict.status}", actor_id=payment.user_id, resource_type="payment", resource_id=payment.id,
           details=details)
    db.session.commit()
    return True


# --- reconciliation and expiry ----------------------------------------------------------------------------------------


def reconcile_pending_payments() -> dict[str, int]:
    """Ask the configured provider about its payments pending for more than 10 minutes and settle what it says.

    Each payment is claimed with `FOR UPDATE SKIP LOCKED` in its own transaction (several workers never ask about
    the same one at once; a webhook for it waits for that transaction). A provider that is down ends the run:
    everything stays pending and the next run asks again."""
    provider = get_provider(configured_provider_name())
    counts = {"checked": 0, "settled": 0, "rejected": 0, "unavailable": 0}
    if not provider.reconciles:
        return counts
    candidates = db.session.scalars(
        sa.select(Payment.id)
        .where(Payment.provider == provider.name, Payment.status == "pending",
               Payment.created_at <= now() - RECONCILE_AFTER)
        .order_by(Payment.created_at).limit(RECONCILE_BATCH)
    ).all()
    db.session.rollback()
    for payment_id in candidates:
        payment = db.session.scalar(
            sa.select(Payment).where(Payment.id == payment_id, Payment.status == "pending")
            .with_for_update(skip_locked=True).execution_options(populate_existing=True)
        )
        if payment is None:  # settled meanwhile, or another worker is asking about it right now
            db.session.rollback()
            continue
        counts["checked"] += 1
        try:
            verdict = provider.fetch(payment)
        except ProviderUnavailable:
            db.session.rollback()
            counts["unavailable"] += 1
            log.warning("payment provider unavailable during reconciliation; retrying next run",
                        extra={"provider": provider.name, "payment_id": str(payment_id)})
            break
        except ZenzefiError as exc:  # an answer we cannot read: leave the payment pending, ask again next run
            db.session.rollback()
            counts["rejected"] += 1
            log.error("unreadable provider answer during reconciliation",
                      extra={"provider": provider.name, "payment_id": str(payment_id), "error": exc.message})
            continue
        try:
            counts["settled"] += settle(verdict, provider.name, source="reconciliation")
        except (NotFound, ValidationFailed):  # audited by settle; an operator looks at it
            counts["rejected"] += 1
    return counts


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


def mock_provider_event(payment: Payment, event_type: str) -> tuple[bytes, dict[str, str]]:
    """What the mock provider POSTs for `payment`: the event JSON and its signed headers."""
    return get_provider(MockProvider.name).event_for(payment, event_type)
