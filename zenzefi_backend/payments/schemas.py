from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields, validate

from ..ledger.schemas import TransactionSchema
from ..schemas import BaseSchema, MoneyField
from ..tokens.pricing import CURRENCIES
from .models import MAX_RETURN_URL_LENGTH, PAYMENT_STATUSES
from .services import payment_url

PAYMENT_URL_DOC = {"type": "string", "format": "uri",
                   "description": "Absolute URL of the provider's checkout page; send the customer there."}


class PaymentCreateSchema(BaseSchema):
    amount_znc = MoneyField(required=True, metadata={"description": "ZNC to buy: > 0, ≤ 1,000,000.00, 2 decimals"})
    currency = fields.String(load_default="RUB", validate=validate.OneOf(CURRENCIES),
                             metadata={"description": "Currency to pay in (rates: `/api/v1/currency/rates`)"})
    return_url = fields.URL(
        schemes={"http", "https"}, require_tld=False, validate=validate.Length(max=MAX_RETURN_URL_LENGTH),
        metadata={"description": "Where the checkout sends the customer afterwards, with `payment_id` and "
                                 "`status` added to its query"},
    )


class PaymentCreatedSchema(BaseSchema):
    payment_id = fields.UUID(required=True, attribute="id")
    payment_url = fields.Function(payment_url, required=True, metadata=PAYMENT_URL_DOC)
    amount_znc = MoneyField(required=True)
    amount = MoneyField(required=True, metadata={"description": "What the customer pays, in `currency`"})
    currency = fields.String(required=True, validate=validate.OneOf(CURRENCIES))
    status = fields.String(required=True, validate=validate.OneOf(PAYMENT_STATUSES))
    expires_at = fields.DateTime(required=True, metadata={"description": "Unpaid by then → `expired` (24 h)"})


class PaymentSchema(BaseSchema):
    id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    amount_znc = MoneyField(required=True)
    currency = fields.String(required=True, validate=validate.OneOf(CURRENCIES))
    amount = MoneyField(required=True, metadata={"description": "What the customer pays, in `currency`"})
    status = fields.String(required=True, validate=validate.OneOf(PAYMENT_STATUSES))
    provider = fields.String(required=True)
    provider_payment_id = fields.String(required=True)
    payment_url = fields.Function(payment_url, required=True, metadata=PAYMENT_URL_DOC)
    return_url = fields.String(allow_none=True)
    created_at = fields.DateTime(required=True)
    expires_at = fields.DateTime(required=True)
    completed_at = fields.DateTime(allow_none=True,
                                   metadata={"description": "When it left `pending` (succeeded, canceled, expired)"})


class WebhookEventDataSchema(Schema):
    class Meta:
        unknown = INCLUDE  # providers add fields; only these are read

    payment_id = fields.UUID(required=True, metadata={"description": "Our payment id (`payment_id` at creation)"})
    amount_znc = MoneyField(required=True, metadata={"description": "Must equal the payment's `amount_znc`"})


class WebhookEventSchema(Schema):
    """Documentation only: the webhook is parsed from its raw bytes, after the signature check."""

    class Meta:
        unknown = INCLUDE
        ordered = True

    id = fields.String(required=True, metadata={"description": "The provider's event id; replays are ignored"})
    type = fields.String(required=True, metadata={"description": "`payment.succeeded` or `payment.canceled`; "
                                                                 "others are acknowledged and ignored"})
    data = fields.Nested(WebhookEventDataSchema, required=True)


class WebhookResultSchema(BaseSchema):
    received = fields.Boolean(required=True)
    processed = fields.Boolean(required=True, metadata={
        "description": "False for a replayed event id, a payment no longer pending, or a type we don't handle"})


class MockPurchaseSchema(BaseSchema):
    amount = MoneyField(required=True, metadata={"description": "ZNC to deposit at once"})


class MockPurchaseResultSchema(BaseSchema):
    transaction = fields.Nested(TransactionSchema, required=True)
    new_balance = MoneyField(required=True)


class ProvidersSchema(BaseSchema):
    provider = fields.String(required=True, metadata={
        "description": "The configured payment provider (`PAYMENT_PROVIDER`): `mock`, `gateway`, `stripe` or "
                       "`yookassa`"})
    available = fields.Boolean(required=True, metadata={
        "description": "Whether top-ups can be started now (false only for `mock` with mock payments off)"})
    currencies = fields.List(fields.String(), required=True, metadata={
        "description": "Currencies `POST /currency/purchase` accepts with this provider; empty when unavailable"})
    minimums = fields.Dict(keys=fields.String(), values=fields.String(), required=True, metadata={
        "description": "The provider's smallest payment per currency (a decimal string), where it has one"})
    reconciles = fields.Boolean(required=True, metadata={
        "description": "Whether pending payments are also asked about at the provider (every 5 min, after 10 min)"})
