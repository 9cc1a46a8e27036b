from __future__ import annotations

from marshmallow import fields, validate

from ..schemas import BaseSchema, MoneyField


class BalanceAdjustmentSchema(BaseSchema):
    amount = MoneyField(required=True, allow_negative=True, metadata={"description": "Signed, not 0"})
    reason = fields.String(required=True, validate=validate.Length(min=1, max=255))
