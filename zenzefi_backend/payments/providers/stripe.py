"""Stripe: one Checkout Session per payment, created and read with the official `stripe` library; its webhook is
verified by the library's own `Stripe-Signature` check.

A StripeClient is built per use from the app config (no global `stripe.api_key` state), with the configured
timeout and no library retries: the idempotency key (our payment id) makes a retry by the customer safe anyway."""
from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import stripe

from ...money import format_amount
from ..models import Payment
from .base import CURRENCY_DECIMALS, CallbackRejected, Checkout, PaymentProvider, ProviderUnavailable, ProviderVerdict

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Stripe-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300
# Stripe lets a session live 30 min to 24 h. Ours closes 1 h after the session does: a payment made in the
# session's last minutes is still pending here, and reconciliation has that hour if its webhook was lost.
SESSION_EXPIRY_MARGIN = timedelta(hours=1)
MIN_SESSION_LIFETIME = timedelta(minutes=31)
# Event type → what it means for the payment; `completed` depends on payment_status (see _status_of).
HANDLED_EVENTS = {
    "checkout.session.completed": None,
    "checkout.session.async_payment_succeeded": None,
    "checkout.session.async_payment_failed": "canceled",
    "checkout.session.expired": "canceled",
}


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    added = urlencode(params)
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


def _status_of(session: Mapping[str, Any]) -> str:
    """A session's meaning for our payment (as a webhook's object or a retrieve's answer)."""
    if session.get("status") == "expired":
        return "canceled"  # SPEC §3.4: `checkout.session.expired` cancels
    if session.get("status") == "complete" and session.get("payment_status") == "paid":
        return "succeeded"
    return "pending"  # open, or complete but an asynchronous payment method has not settled yet


class StripeProvider(PaymentProvider):
    name = "stripe"
    # USD and EUR only: Stripe does not serve Russian merchants, so RUB is left to YooKassa (README).
    currencies = ("USD", "EUR")
    reconciles = True
    # Stripe's minimum charge amounts; its maximum is 99,999,999 in minor units.
    minimums = {"USD": Decimal("0.50"), "EUR": Decimal("0.50")}
    maximums = {"USD": Decimal("999999.99"), "EUR": Decimal("999999.99")}

    def _client(self) -> stripe.StripeClient:
        base = self.config.get("STRIPE_API_BASE")
        return stripe.StripeClient(
            self.config["STRIPE_API_KEY"],
            base_addresses={"api": base} if base else None,
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=float(self.config["PAYMENT_PROVIDER_TIMEOUT"])),
        )

    @staticmethod
    def _minor_units(amount: Decimal, currency: str) -> int:
        return int(amount.scaleb(CURRENCY_DECIMALS[currency]))

    @staticmethod
    def _major_units(minor: object, currency: str) -> Decimal | None:
        if isinstance(minor, bool) or not isinstance(minor, int):
            return None
        return Decimal(minor).scaleb(-CURRENCY_DECIMALS.get(currency, 2))

    def _unavailable(self, action: str, error: stripe.StripeError) -> ProviderUnavailable:
        # Stripe's message and codes, never the key; a 4xx from Stripe is our configuration's fault, still a 503.
        log.error("stripe %s failed", action, extra={"error_type": type(error).__name__,
                                                     "http_status": error.http_status, "stripe_code": error.code,
                                                     "request_id": error.request_id})
        return ProviderUnavailable()

    def create_checkout(self, payment: Payment, return_url: str | None) -> Checkout:
        back = return_url or self.config["FRONTEND_URL"]
        session_expires = max(payment.expires_at - SESSION_EXPIRY_MARGIN, payment.created_at + MIN_SESSION_LIFETIME)
        params: dict[str, Any] = {
            "mode": "payment",
            "client_reference_id": str(payment.id),
            "metadata": {"payment_id": str(payment.id)},
            "payment_intent_data": {"metadata": {"payment_id": str(payment.id)}},
            "line_items": [{
                "quantity": 1,
                "price_data": {
                    "currency": payment.currency.lower(),
                    "unit_amount": self._minor_units(payment.amount, payment.currency),
                    "product_data": {"name": f"{format_amount(payment.amount_znc)} ZNC"},
                },
            }],
            "expires_at": int(session_expires.timestamp()),
            "success_url": _with_query(back, payment_id=str(payment.id)),
            "cancel_url": _with_query(back, payment_id=str(payment.id), status="canceled"),
        }
        try:
            session = self._client().v1.checkout.sessions.create(
                params, options={"idempotency_key": str(payment.id)}).to_dict()
        except stripe.StripeError as exc:
            raise self._unavailable("checkout session create", exc) from None
        if not session.get("id") or not session.get("url"):
            log.error("stripe answered a checkout session without id or url")
            raise ProviderUnavailable()
        return Checkout(provider_payment_id=session["id"], payment_url=session["url"])

    def fetch(self, payment: Payment) -> ProviderVerdict:
        try:
            session = self._client().v1.checkout.sessions.retrieve(payment.provider_payment_id).to_dict()
        except stripe.InvalidRequestError as exc:
            if exc.http_status != 404:
                raise self._unavailable("checkout session retrieve", exc) from None
            # One session Stripe does not know must not hold up the others: it stays pending for an operator.
            log.error("stripe does not know the session of a pending payment",
                      extra={"payment_id": str(payment.id), "request_id": exc.request_id})
            return ProviderVerdict(provider_payment_id=payment.provider_payment_id, status="pending")
        except stripe.StripeError as exc:
            raise self._unavailable("checkout session retrieve", exc) from None
        return self._verdict(session, _status_of(session))

    def verify_callback(self, raw_body: bytes, headers: Mapping[str, str], client_ip: str) -> ProviderVerdict | None:
        try:
            event = self._client().construct_event(raw_body, headers.get(SIGNATURE_HEADER),
                                                   self.config["STRIPE_WEBHOOK_SECRET"],
                                                   tolerance=SIGNATURE_TOLERANCE_SECONDS).to_dict()
        except stripe.SignatureVerificationError:
            raise CallbackRejected("signature_mismatch", "Invalid Stripe-Signature.", status=401) from None
        except UnicodeDecodeError:  # the library decodes the body before it checks anything
            raise CallbackRejected("malformed_body", "The webhook body is not UTF-8.", status=400) from None
        except ValueError:  # signed, but not JSON
            raise CallbackRejected("malformed_body", "The webhook body is not valid JSON.", status=400) from None
        event_type, event_id = event.get("type"), event.get("id")
        if not isinstance(event_type, str) or not isinstance(event_id, str) or not event_id:
            raise CallbackRejected("malformed_body", "Not a Stripe event (`id`, `type`).", status=400)
        if event_type not in HANDLED_EVENTS:
            return None
        data = event.get("data")
        session = data.get("object") if isinstance(data, Mapping) else None
        if not isinstance(session, Mapping) or session.get("object") != "checkout.session" \
                or not isinstance(session.get("id"), str):
            raise CallbackRejected("malformed_body", "The event carries no Checkout Session.", status=400)
        if self._our_payment_id(session) is None:
            return None  # a session of another integration on the same Stripe account: not ours to judge
        status = HANDLED_EVENTS[event_type] or _status_of(session)
        return self._verdict(session, status, event_id=event_id, event_type=event_type)

    @staticmethod
    def _our_payment_id(session: Mapping[str, Any]) -> uuid.UUID | None:
        """Our id as the session carries it (client_reference_id, and metadata.payment_id); both must agree."""
        metadata = session.get("metadata")
        found = {session.get("client_reference_id"),
                 metadata.get("payment_id") if isinstance(metadata, Mapping) else None} - {None, ""}
        if len(found) > 1:
            raise CallbackRejected("reference_mismatch",
                                   "client_reference_id and metadata.payment_id disagree.", status=422)
        if not found:
            return None
        try:
            return uuid.UUID(str(found.pop()))
        except ValueError:
            return None

    def _verdict(self, session: Mapping[str, Any], status: str, *, event_id: str | None = None,
                 event_type: str | None = None) -> ProviderVerdict:
        currency = session.get("currency")
        currency = currency.upper() if isinstance(currency, str) else None
        amount = self._major_units(session.get("amount_total"), currency or "")
        if currency is None or amount is None:
            raise CallbackRejected("malformed_body", "The session has no amount_total or currency.", status=400)
        return ProviderVerdict(provider_payment_id=session["id"], status=status,
                               payment_id=self._our_payment_id(session), amount=amount, currency=currency,
                               event_id=event_id, event_type=event_type)
