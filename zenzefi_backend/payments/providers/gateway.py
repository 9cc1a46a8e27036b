"""The operator's own payment gateway: the customer is sent to `PAYMENT_GATEWAY_URL`, the gateway answers with
the `X-Zenzefi-Signature` webhook. The protocol has no status call, so there is no reconciliation."""
from __future__ import annotations

from urllib.parse import quote

from ...config import GATEWAY_URL_PLACEHOLDER
from ...money import format_amount
from ...tokens.pricing import CURRENCIES
from ..models import Payment
from .base import Checkout
from .signed import SignedWebhookProvider


class GatewayProvider(SignedWebhookProvider):
    name = "gateway"
    currencies = CURRENCIES

    def create_checkout(self, payment: Payment, return_url: str | None) -> Checkout:
        # Besides the required {payment_id}, a template may carry what the gateway must charge (README).
        values = {GATEWAY_URL_PLACEHOLDER: str(payment.id), "{amount}": format_amount(payment.amount),
                  "{currency}": payment.currency, "{amount_znc}": format_amount(payment.amount_znc),
                  "{return_url}": return_url or ""}
        url = self.config["PAYMENT_GATEWAY_URL"]
        for placeholder, value in values.items():
            url = url.replace(placeholder, quote(value, safe=""))
        return Checkout(provider_payment_id=f"gateway_{payment.id.hex}", payment_url=url)
