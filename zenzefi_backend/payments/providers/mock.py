"""The development provider: our own checkout page whose Pay/Cancel buttons send the signed webhook."""
from __future__ import annotations

import json
import secrets

from flask import url_for

from ...clock import now
from ...money import format_amount
from ...tokens.pricing import CURRENCIES
from ..models import Payment
from .base import Checkout
from .signed import SIGNATURE_HEADER, SignedWebhookProvider, sign


class MockProvider(SignedWebhookProvider):
    name = "mock"
    currencies = CURRENCIES

    def create_checkout(self, payment: Payment, return_url: str | None) -> Checkout:
        return Checkout(provider_payment_id=f"mock_{secrets.token_hex(16)}",
                        payment_url=url_for("mock-provider.checkout", payment_id=payment.id, _external=True))

    def event_for(self, payment: Payment, event_type: str) -> tuple[bytes, dict[str, str]]:
        """What the mock provider POSTs: the event JSON and its signature header, signed now."""
        body = {"id": f"evt_mock_{secrets.token_hex(12)}", "type": event_type,
                "data": {"payment_id": str(payment.id), "amount_znc": format_amount(payment.amount_znc)}}
        raw = json.dumps(body, separators=(",", ":")).encode()
        return raw, {SIGNATURE_HEADER: sign(raw, int(now().timestamp()), self.config["PAYMENT_WEBHOOK_SECRET"])}
