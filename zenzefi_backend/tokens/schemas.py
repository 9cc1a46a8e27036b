from __future__ import annotations

from marshmallow import fields, validate

from ..accounts.schemas import EmailAddress
from ..pagination import PageQuerySchema
from ..schemas import BaseSchema, MoneyField
from .models import SCOPES, SOURCES, STATUSES
from .pricing import CURRENCIES, DURATIONS


class TokenSchema(BaseSchema):
    id = fields.UUID(required=True)
    token_hint = fields.String(required=True, metadata={"description": "First 6 and last 4 characters"})
    duration_hours = fields.Integer(required=True)
    scope = fields.String(required=True, validate=validate.OneOf(SCOPES))
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    paid_znc = MoneyField(required=True)
    created_at = fields.DateTime(required=True)
    activated_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(allow_none=True, metadata={"description": "Null until the first proxied request"})
    revoked_at = fields.DateTime(allow_none=True)
    source = fields.String(required=True, validate=validate.OneOf(SOURCES))
    bundle_id = fields.UUID(allow_none=True)
    gifted_to_email = fields.String(allow_none=True, metadata={
        "description": "Who the token was gifted to (null unless gifted); the new secret went only there"})
    gifted_at = fields.DateTime(allow_none=True, metadata={"description": "When it was gifted (null unless gifted)"})


class IssuedTokenSchema(TokenSchema):
    token = fields.String(required=True, attribute="secret",
                          metadata={"description": "The secret: shown only in this response"})


class PurchaseSchema(BaseSchema):
    duration_hours = fields.Integer(required=True, strict=True, validate=validate.OneOf(DURATIONS))
    scope = fields.String(load_default="full", validate=validate.OneOf(SCOPES))


class GiftSchema(BaseSchema):
    recipient_email = EmailAddress(required=True, metadata={
        "description": "Checked like a registration e-mail; stored in its normalised form"})


class GiftResultSchema(BaseSchema):
    token_id = fields.UUID(required=True)
    recipient_email = fields.String(required=True, metadata={"description": "Normalised (as registration e-mails are)"})
    gifted_at = fields.DateTime(required=True)


class MyTokensQuerySchema(PageQuerySchema):
    active_only = fields.Boolean(load_default=True)


class PricesQuerySchema(BaseSchema):
    class Meta(BaseSchema.Meta):
        unknown = "exclude"

    currency = fields.String(validate=validate.OneOf(CURRENCIES))


class PriceSchema(BaseSchema):
    duration_hours = fields.Integer(required=True)
    price_znc = MoneyField(required=True)
    currency = fields.String()
    price = MoneyField()


class PriceListSchema(BaseSchema):
    items = fields.List(fields.Nested(PriceSchema), required=True)
    base = fields.String(required=True)


class RevokeResultSchema(BaseSchema):
    revoked = fields.Boolean(required=True)
    refund_amount = MoneyField(required=True)
    new_balance = MoneyField(required=True)
    message = fields.String(required=True)


class AutoRenewalSchema(BaseSchema):
    enabled = fields.Boolean(required=True)
    duration_hours = fields.Integer(required=True, strict=True, validate=validate.OneOf(DURATIONS),
                                    metadata={"description": "Duration of each replacement token (a priced one)"})
    scope = fields.String(required=True, validate=validate.OneOf(SCOPES),
                          metadata={"description": "Scope of each replacement token"})


class AutoRenewalStateSchema(AutoRenewalSchema):
    cost_per_renewal = MoneyField(required=True, metadata={
        "description": "Today's price of one replacement token; each renewal is charged the price of its day"})
