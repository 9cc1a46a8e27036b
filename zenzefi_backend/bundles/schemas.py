from __future__ import annotations

from marshmallow import fields, validate

from ..schemas import BaseSchema, MoneyField
from ..tokens.models import SCOPES
from ..tokens.pricing import DURATIONS
from ..tokens.schemas import IssuedTokenSchema
from .models import MAX_DISCOUNT_PERCENT, MAX_TOKEN_COUNT

NAME = [validate.Length(min=1, max=100),
        validate.Regexp(r"^\S(?:.*\S)?$", error="One line, without leading or trailing spaces.")]
DESCRIPTION = validate.Length(max=1000)
TOKEN_COUNT = validate.Range(min=1, max=MAX_TOKEN_COUNT)
DISCOUNT = validate.Range(min=0, max=MAX_DISCOUNT_PERCENT)
DISCOUNT_DOC = {"description": f"Whole percent, 0–{MAX_DISCOUNT_PERCENT}"}


class BundleSchema(BaseSchema):
    id = fields.UUID(required=True)
    name = fields.String(required=True)
    description = fields.String(allow_none=True)
    token_count = fields.Integer(required=True)
    duration_hours = fields.Integer(required=True)
    scope = fields.String(required=True, validate=validate.OneOf(SCOPES))
    discount_percent = fields.Integer(required=True, metadata=DISCOUNT_DOC)
    base_price = MoneyField(required=True, metadata={"description": "token_count × the price of one token"})
    total_price = MoneyField(required=True, metadata={"description": "base_price less the discount, to the cent"})
    savings = MoneyField(required=True, metadata={"description": "base_price − total_price"})
    price_per_token = MoneyField(required=True, metadata={
        "description": "total_price / token_count rounded down: what each token is paid at and refunded from"})
    is_active = fields.Boolean(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class BundleListSchema(BaseSchema):
    items = fields.List(fields.Nested(BundleSchema), required=True)


class BundleListQuerySchema(BaseSchema):
    class Meta(BaseSchema.Meta):
        unknown = "exclude"

    include_inactive = fields.Boolean(load_default=False, metadata={
        "description": "Superusers only (401 without a JWT, 403 for anyone else): list deactivated bundles too"})


class BundleCreateSchema(BaseSchema):
    name = fields.String(required=True, validate=NAME)
    description = fields.String(allow_none=True, validate=DESCRIPTION)
    token_count = fields.Integer(required=True, strict=True, validate=TOKEN_COUNT)
    duration_hours = fields.Integer(required=True, strict=True, validate=validate.OneOf(DURATIONS),
                                    metadata={"description": "One of the priced durations"})
    scope = fields.String(load_default="full", validate=validate.OneOf(SCOPES))
    discount_percent = fields.Integer(required=True, strict=True, validate=DISCOUNT, metadata=DISCOUNT_DOC)


class BundleUpdateSchema(BaseSchema):
    name = fields.String(validate=NAME)
    description = fields.String(allow_none=True, validate=DESCRIPTION)
    token_count = fields.Integer(strict=True, validate=TOKEN_COUNT)
    duration_hours = fields.Integer(strict=True, validate=validate.OneOf(DURATIONS))
    scope = fields.String(validate=validate.OneOf(SCOPES))
    discount_percent = fields.Integer(strict=True, validate=DISCOUNT, metadata=DISCOUNT_DOC)
    is_active = fields.Boolean(metadata={"description": "`true` brings a deactivated bundle back"})


class BundlePurchaseSchema(BaseSchema):
    """No fields: the bundle in the path is the whole order."""


class BundlePurchaseResultSchema(BaseSchema):
    bundle_id = fields.UUID(required=True)
    bundle_name = fields.String(required=True)
    tokens_generated = fields.Integer(required=True)
    cost_znc = MoneyField(required=True)
    new_balance = MoneyField(required=True)
    tokens = fields.List(fields.Nested(IssuedTokenSchema), required=True,
                         metadata={"description": "Each token with its secret, shown only in this response"})
