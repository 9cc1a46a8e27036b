from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import Response, abort, redirect, render_template_string, request, url_for
from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required

from ..database import db
from ..idempotency import idempotent
from ..money import format_amount
from ..openapi import BEARER, IDEMPOTENCY_KEY, PUBLIC, Blueprint, errors
from . import services
from .models import Payment
from .providers.signed import SIGNATURE_HEADER, SIGNATURE_TOLERANCE_SECONDS
from .schemas import (
    MockPurchaseResultSchema,
    MockPurchaseSchema,
    PaymentCreatedSchema,
    PaymentCreateSchema,
    PaymentSchema,
    ProvidersSchema,
    WebhookEventSchema,
    WebhookResultSchema,
)

blp = Blueprint("payments", __name__, url_prefix="/api/v1/currency",
                description="Top-ups: buy ZNC through the payment provider (or instantly, in mock mode).")
webhook_blp = Blueprint("payment-webhook", __name__, url_prefix="/api/v1/webhooks",
                        description="Callbacks from the payment provider. Only the configured provider's path is "
                                    "open (404 for the others); every rejection is audited.")
mock_blp = Blueprint("mock-provider", __name__, url_prefix="/api/v1/payments/mock",
                     description="The mock payment provider's HTML checkout (mock mode only; 404 otherwise).")


def mock_mode_only(view: Callable) -> Callable:
    """With `MOCK_PAYMENTS_ENABLED` off the route answers exactly like one that does not exist."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if not services.mock_payments_enabled():
            abort(404)
        return view(*args, **kwargs)

    return wrapper


@blp.route("/purchase")
class CurrencyPurchase(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER, parameters=[IDEMPOTENCY_KEY])
    @blp.arguments(PaymentCreateSchema)
    @idempotent
    @blp.response(201, PaymentCreatedSchema)
    @errors(401, 409, 422, 503)
    def post(self, body):
        """Start a top-up: a pending payment at the configured provider and the URL where the customer pays it

        `amount` is `amount_znc` converted at the current rate into `currency` (RUB by default). 422, before the
        provider is asked, when the provider cannot take that amount or currency (its minimum, its currencies:
        `GET /api/v1/currency/providers`). 503 and nothing stored when the provider cannot be reached (or, with
        the `mock` provider, when `MOCK_PAYMENTS_ENABLED` is off: "No payment provider is configured").
        The balance is credited once the provider confirms the payment (its callback, or the reconciliation job
        asking it); unpaid payments expire after 24 h.
        """
        return services.create_payment(current_user, body["amount_znc"], body["currency"], body.get("return_url"))


@blp.route("/payments/<uuid:payment_id>")
class OwnPayment(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.response(200, PaymentSchema)
    @errors(401, 404)
    def get(self, payment_id: uuid.UUID):
        """One of your payments (404 for anyone else's)"""
        return services.get_own_payment(current_user, payment_id)


@blp.route("/mock-purchase")
class MockPurchase(MethodView):
    decorators = [jwt_required(), mock_mode_only]

    @blp.doc(security=BEARER, parameters=[IDEMPOTENCY_KEY])
    @blp.arguments(MockPurchaseSchema)
    @idempotent
    @blp.response(201, MockPurchaseResultSchema)
    @errors(401, 404, 409, 422)
    def post(self, body):
        """Mock mode only: deposit `amount` ZNC at once (a `deposit` entry), no payment involved

        404, as if the route did not exist, when `MOCK_PAYMENTS_ENABLED` is off (the production default).
        """
        return services.mock_purchase(current_user, body["amount"])


@blp.route("/providers")
class Providers(MethodView):
    @blp.doc(security=PUBLIC)
    @blp.response(200, ProvidersSchema)
    def get(self):
        """The configured payment provider and the currencies it takes (no auth)"""
        return services.providers_summary()


SIGNATURE_PARAMETER = {
    "name": SIGNATURE_HEADER,
    "in": "header",
    "required": True,
    "schema": {"type": "string",
               "example": "t=1764000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"},
    "description": "`t=<unix seconds>,v1=<hex HMAC-SHA256(PAYMENT_WEBHOOK_SECRET, \"<t>.\" + raw body)>`; "
                   "several `v1` may be given (secret rotation), any match is enough. `t` must be within "
                   f"{SIGNATURE_TOLERANCE_SECONDS} s of our clock.",
}


def _webhook_body(provider: str) -> bytes:
    """The raw bytes the signature covers; more than 64 KiB (declared or streamed) is a 413."""
    limit = services.MAX_WEBHOOK_BODY_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise services.reject_oversized_webhook(provider, request.content_length)
    # A chunked body has no declared length: read one byte past the limit to tell "too long" from "exact".
    request.max_content_length = limit + 1
    raw = request.get_data()
    if len(raw) > limit:
        raise services.reject_oversized_webhook(provider, request.content_length)
    return raw


def _callback(provider: str) -> dict[str, bool]:
    # request.remote_addr is the client as ProxyFix found it behind TRUSTED_PROXY_HOPS (the socket peer at 0).
    return services.handle_provider_callback(provider, _webhook_body(provider), request.headers,
                                             request.remote_addr)


@webhook_blp.route("/payment")
class PaymentWebhook(MethodView):
    @webhook_blp.doc(security=PUBLIC, parameters=[SIGNATURE_PARAMETER], requestBody={
        "required": True, "content": {"application/json": {"schema": WebhookEventSchema}}})
    @webhook_blp.response(200, WebhookResultSchema)
    @errors(400, 401, 404, 413, 422)
    def post(self):
        """The `mock` or `gateway` provider's callback; the signature is checked over the raw body before anything

        401: signature missing, malformed, wrong, or `t` more than 300 s from now (nothing changes; audited).
        400: not a JSON object with `id`, `type` and `data.payment_id` (and `data.amount_znc` for the handled
        types). 404: unknown payment, or the configured provider is not `mock`/`gateway`. 422: `data.amount_znc`
        differs from the payment (nothing credited; audited). 200 `processed: true` only for the first delivery
        that moves a pending payment to `succeeded` (crediting the balance once) or `canceled`; replays, payments
        no longer pending and other event types get `processed: false`.
        """
        return _callback(services.signed_webhook_provider_name())


STRIPE_SIGNATURE_PARAMETER = {
    "name": "Stripe-Signature", "in": "header", "required": True, "schema": {"type": "string"},
    "description": "Stripe's signature of the raw body (`t=…,v1=…`), checked by the `stripe` library with "
                   "`STRIPE_WEBHOOK_SECRET` and a 300 s tolerance.",
}
PROVIDER_EVENT_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}


@webhook_blp.route("/payment/stripe")
class StripeWebhook(MethodView):
    @webhook_blp.doc(security=PUBLIC, parameters=[STRIPE_SIGNATURE_PARAMETER], requestBody=PROVIDER_EVENT_BODY)
    @webhook_blp.response(200, WebhookResultSchema)
    @errors(400, 401, 404, 413, 422)
    def post(self):
        """Stripe's webhook (`PAYMENT_PROVIDER=stripe`): Checkout Session events

        `checkout.session.completed` with `payment_status=paid` (and `checkout.session.async_payment_succeeded`)
        credits, `checkout.session.expired` (and `checkout.session.async_payment_failed`) cancels; the session's
        `amount_total` and `currency` must match the payment (else 422, audited). 401: signature missing, wrong or
        older than 300 s. Other event types: 200 `processed: false`. 404 when Stripe is not the configured
        provider, or the session names no payment of ours.
        """
        return _callback("stripe")


@webhook_blp.route("/payment/yookassa")
class YooKassaWebhook(MethodView):
    @webhook_blp.doc(security=PUBLIC, requestBody=PROVIDER_EVENT_BODY)
    @webhook_blp.response(200, WebhookResultSchema)
    @errors(400, 403, 404, 413, 422, 503)
    def post(self):
        """YooKassa's HTTP notification (`PAYMENT_PROVIDER=yookassa`); YooKassa does not sign them

        Accepted only from `YOOKASSA_WEBHOOK_NETWORKS` (the client address behind `TRUSTED_PROXY_HOPS`; 403
        otherwise, audited). The payment is then fetched again from the YooKassa API and only that answer is
        trusted: `payment.succeeded` credits, `payment.canceled` cancels; a notification the API contradicts is
        a 4xx and credits nothing. 503 when the YooKassa API cannot be reached (YooKassa retries).
        """
        return _callback("yookassa")


CHECKOUT_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · Zenzefi mock checkout</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 30rem; margin: 3rem auto; padding: 0 1rem; color: #222; }
.note { background: #fff6d5; padding: .5rem .75rem; border-radius: .25rem; font-size: .9rem; }
dl { display: grid; grid-template-columns: auto 1fr; gap: .4rem 1rem; }
dt { color: #666; } dd { margin: 0; }
form { display: inline-block; margin-right: .5rem; }
button { font-size: 1rem; padding: .5rem 1.25rem; cursor: pointer; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="note">Mock payment provider: no real money moves.</p>
{% if message %}<p>{{ message }}</p>{% endif %}
<dl>
<dt>Amount</dt><dd>{{ amount }} {{ currency }}</dd>
<dt>You receive</dt><dd>{{ amount_znc }} ZNC</dd>
<dt>Status</dt><dd>{{ status }}</dd>
<dt>Payment</dt><dd><code>{{ payment_id }}</code></dd>
</dl>
{% if pending %}
<form method="post" action="{{ succeed_url }}"><button type="submit">Pay {{ amount }} {{ currency }}</button></form>
<form method="post" action="{{ cancel_url }}"><button type="submit">Cancel</button></form>
{% endif %}
</body>
</html>
"""

# The page embeds nothing external and runs no script; it must not be framed (it has a Pay button).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(payment: Payment, title: str, message: str | None = None) -> Response:
    # render_template_string autoescapes every value.
    html = render_template_string(
        CHECKOUT_PAGE, title=title, message=message, amount=format_amount(payment.amount),
        currency=payment.currency, amount_znc=format_amount(payment.amount_znc), status=payment.status,
        payment_id=payment.id, pending=payment.status == "pending",
        succeed_url=url_for("mock-provider.succeed", payment_id=payment.id),
        cancel_url=url_for("mock-provider.cancel", payment_id=payment.id),
    )
    return Response(html, status=200, mimetype="text/html", headers=PAGE_HEADERS)


def _return_to(url: str, payment: Payment) -> str:
    parts = urlsplit(url)
    added = urlencode({"payment_id": str(payment.id), "status": payment.status})
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


def _mock_provider_sends(payment_id: uuid.UUID, event_type: str, done_title: str) -> Response:
    """The mock provider posts a signed event to our webhook handler, exactly as a real provider would."""
    raw, headers = services.mock_provider_event(services.get_mock_payment(payment_id), event_type)
    result = services.handle_provider_callback("mock", raw, headers, request.remote_addr)
    payment = services.get_payment(payment_id)
    db.session.refresh(payment)
    if payment.return_url:
        return redirect(_return_to(payment.return_url, payment), code=303)
    if result["processed"]:
        return _page(payment, done_title)
    return _page(payment, "Nothing changed", f"This payment is already {payment.status}.")


HTML_PAGE = {"content": {"text/html": {"schema": {"type": "string"}}}}


@mock_blp.route("/<uuid:payment_id>", endpoint="checkout")
class Checkout(MethodView):
    decorators = [mock_mode_only]

    @mock_blp.doc(security=PUBLIC, responses={"200": {"description": "The checkout page", **HTML_PAGE}})
    @errors(404)
    def get(self, payment_id: uuid.UUID):
        """The mock provider's checkout page: amount, currency, Pay and Cancel"""
        payment = services.get_mock_payment(payment_id)
        title = "Checkout" if payment.status == "pending" else f"Payment {payment.status}"
        return _page(payment, title)


AFTER_BUTTON = {
    "200": {"description": "Result page (when the payment has no `return_url`)", **HTML_PAGE},
    "303": {"description": "Back to the payment's `return_url`, with `payment_id` and `status` in its query"},
}


@mock_blp.route("/<uuid:payment_id>/succeed", endpoint="succeed")
class MockSucceed(MethodView):
    decorators = [mock_mode_only]

    @mock_blp.doc(security=PUBLIC, responses=AFTER_BUTTON)
    @errors(404)
    def post(self, payment_id: uuid.UUID):
        """Pay: the mock provider sends a signed `payment.succeeded` webhook through the real webhook path"""
        return _mock_provider_sends(payment_id, "payment.succeeded", "Payment succeeded")


@mock_blp.route("/<uuid:payment_id>/cancel", endpoint="cancel")
class MockCancel(MethodView):
    decorators = [mock_mode_only]

    @mock_blp.doc(security=PUBLIC, responses=AFTER_BUTTON)
    @errors(404)
    def post(self, payment_id: uuid.UUID):
        """Cancel: the mock provider sends a signed `payment.canceled` webhook through the real webhook path"""
        return _mock_provider_sends(payment_id, "payment.canceled", "Payment canceled")
