"""SPEC §3.4's own callback protocol, shared by the `mock` and `gateway` providers: `X-Zenzefi-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256(PAYMENT_WEBHOOK_SECRET, "<t>." + raw body)>` over a JSON event."""
from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ...clock import now
from ...errors import BadRequest
from ...money import InvalidAmount, parse_amount
from ...openapi import jsonbody
from ..models import MAX_EVENT_ID_LENGTH
from .base import CallbackRejected, PaymentProvider, ProviderVerdict

SIGNATURE_HEADER = "X-Zenzefi-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300
MAX_SIGNATURE_HEADER_LENGTH = 2048
HANDLED_EVENTS = {"payment.succeeded": "succeeded", "payment.canceled": "canceled"}


def sign(raw_body: bytes, timestamp: int, secret: str) -> str:
    """The `X-Zenzefi-Signature` value a provider sends: `t=<unix seconds>,v1=<hex HMAC-SHA256>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw_body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


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


def verify_signature(raw_body: bytes, header: str | None, secret: str) -> None:
    """Accept when any `v1` is HMAC-SHA256(secret, "<t>." + body) and `t` is within 300 s of now; else 401."""
    if not header:
        raise CallbackRejected("missing_signature", f"Missing {SIGNATURE_HEADER} header.", status=401)
    parsed = _parse_signature_header(header) if len(header) <= MAX_SIGNATURE_HEADER_LENGTH else None
    if parsed is None:
        raise CallbackRejected("malformed_signature",
                               f"Malformed {SIGNATURE_HEADER} header: expected t=<unix seconds>,v1=<hex>.", status=401)
    timestamp, signatures = parsed
    expected = sign(raw_body, timestamp, secret).partition(",v1=")[2]
    matched = False
    for candidate in signatures:  # no early exit: every candidate is compared in constant time
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise CallbackRejected("signature_mismatch", "Invalid webhook signature.", status=401)
    if abs(int(now().timestamp()) - timestamp) > SIGNATURE_TOLERANCE_SECONDS:
        raise CallbackRejected("timestamp_out_of_tolerance",
                               f"Signature timestamp is more than {SIGNATURE_TOLERANCE_SECONDS} s from now.",
                               status=401)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def strict_json(raw_body: bytes) -> Any:
    """JSON with numbers as Decimal, no NaN/Infinity and no duplicate keys; 400 otherwise."""
    try:
        return jsonbody.loads(raw_body, parse_float=Decimal, parse_constant=_no_constants,
                              object_pairs_hook=_unique_keys)
    except jsonbody.MalformedJson as exc:
        raise BadRequest(f"The webhook body is not valid JSON: {exc}.") from None


def parse_event(raw_body: bytes) -> ProviderVerdict | None:
    """Strict: a JSON object with string `id`, `type`, an object `data` with a UUID `payment_id`; 400 otherwise.
    Handled types must also carry a valid `data.amount_znc`; other types are None (acknowledged, ignored)."""
    body = strict_json(raw_body)
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
    if event_type not in HANDLED_EVENTS:
        return None
    try:
        amount_znc = parse_amount(data.get("amount_znc"))
    except InvalidAmount as exc:
        raise BadRequest(f"`data.amount_znc`: {exc}") from None
    except ArithmeticError:  # beyond Decimal's context (1E+999999999)
        raise BadRequest("`data.amount_znc`: Not a valid amount.") from None
    return ProviderVerdict(provider_payment_id=None, status=HANDLED_EVENTS[event_type], payment_id=payment_id,
                           event_id=event_id, amount_znc=amount_znc, event_type=event_type)


class SignedWebhookProvider(PaymentProvider):
    """A provider whose callback is the `X-Zenzefi-Signature` webhook; it has no status call."""

    reconciles = False

    def verify_callback(self, raw_body: bytes, headers: Mapping[str, str], client_ip: str) -> ProviderVerdict | None:
        # The signature first: nothing of an unproven body is even parsed.
        verify_signature(raw_body, headers.get(SIGNATURE_HEADER), self.config["PAYMENT_WEBHOOK_SECRET"])
        return parse_event(raw_body)

