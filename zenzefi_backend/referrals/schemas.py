from __future__ import annotations

from marshmallow import fields

from ..schemas import BaseSchema, MoneyField


class ReferredUserSchema(BaseSchema):
    username = fields.String(required=True)
    joined_at = fields.DateTime(required=True)
    has_qualifying_purchase = fields.Boolean(required=True, metadata={
        "description": "Their first purchase over 100.00 ZNC earned you a bonus (even if it was later refunded)"})


class ReferralSummarySchema(BaseSchema):
    referral_code = fields.String(required=True, metadata={"example": "7KQ2M9XA4BZT"})
    referral_link = fields.String(required=True, metadata={"example": "http://localhost:3000/register?ref=7KQ2M9XA4BZT"})
    total_referrals = fields.Integer(required=True, metadata={"description": "Users who registered with your code"})
    qualifying_referrals = fields.Integer(required=True,
                                          metadata={"description": "Of those, how many earned you a bonus"})
    total_bonus_earned = MoneyField(required=True, metadata={"description": "Bonuses credited less clawbacks taken"})
    referred_users = fields.List(fields.Nested(ReferredUserSchema), required=True,
                                 metadata={"description": "Newest first; usernames only, never e-mail addresses"})
