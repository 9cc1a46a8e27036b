from __future__ import annotations

from marshmallow import fields, validate

from ..accounts.models import PLANS
from ..schemas import BaseSchema, MoneyField


class PlanSchema(BaseSchema):
    name = fields.String(required=True, validate=validate.OneOf(PLANS))
    api_requests_per_minute = fields.Integer(required=True, metadata={"description": "Per user, all API routes"})
    proxy_requests_per_minute = fields.Integer(required=True, metadata={"description": "Per access token"})
    price_znc = MoneyField(required=True, metadata={"description": "Price of one period (0.00 for free)"})
    period_days = fields.Integer(required=True, metadata={"example": 30})


class PlanListSchema(BaseSchema):
    items = fields.List(fields.Nested(PlanSchema), required=True)


class PlanChoiceSchema(BaseSchema):
    plan = fields.String(required=True, validate=validate.OneOf(PLANS),
                         metadata={"description": "`premium` or `enterprise` (`free` cannot be bought: 422)"})


class PlanStateSchema(BaseSchema):
    plan = fields.String(required=True, validate=validate.OneOf(PLANS))
    plan_expires_at = fields.DateTime(allow_none=True, metadata={"description": "Null for free (or a plan "
                                                                                "granted without expiry)"})
    api_requests_per_minute = fields.Integer(required=True)
    proxy_requests_per_minute = fields.Integer(required=True)
