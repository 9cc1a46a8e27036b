from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate

from ..accounts.models import PLANS
from ..accounts.schemas import UserSchema
from ..ledger.schemas import TransactionsQuerySchema
from ..pagination import PageQuerySchema
from ..schemas import BaseSchema, MoneyField
from ..tokens.schemas import STATUSES, TokenSchema


class BalanceAdjustmentSchema(BaseSchema):
    amount = MoneyField(required=True, allow_negative=True, metadata={"description": "Signed, not 0"})
    reason = fields.String(required=True, validate=validate.Length(min=1, max=255))


class StrictBoolean(fields.Boolean):
    """A JSON `true` or `false` only: not `"true"`, `1` or `"yes"` (which marshmallow would otherwise take)."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        return value


# Query strings escape the NUL check of BaseSchema (it looks at JSON bodies); PostgreSQL cannot take NUL.
NO_NUL = validate.Regexp(r"^[^\x00]*$", error="Must not contain NUL characters.")


def _aware(**kwargs: Any) -> fields.AwareDateTime:
    description = "ISO 8601 with a UTC offset, e.g. `2026-01-05T10:00:00+00:00`"
    metadata = {"description": kwargs.pop("description", description)}
    return fields.AwareDateTime(format="iso", metadata=metadata, **kwargs)


class AdminUserSchema(UserSchema):
    token_count = fields.Integer(required=True, metadata={"description": "Every token the user ever had"})
    active_token_count = fields.Integer(
        required=True, metadata={"description": "Tokens neither revoked nor expired (`ready` or `active`)"})
    transaction_count = fields.Integer(required=True, metadata={"description": "Ledger entries"})


class UsersQuerySchema(PageQuerySchema):
    search = fields.String(validate=[validate.Length(max=255), NO_NUL],
                           metadata={"description": "Case-insensitive substring of the e-mail or username"})
    is_active = fields.Boolean()
    plan = fields.String(validate=validate.OneOf(PLANS))


class UserUpdateSchema(BaseSchema):
    """Only these four fields; anything else (`balance`, `email`, …) is a 422."""

    is_active = StrictBoolean()
    is_superuser = StrictBoolean()
    plan = fields.String(validate=validate.OneOf(PLANS))
    plan_expires_at = _aware(allow_none=True,
                             description="ISO 8601 with offset; null = never. Must be null for the free plan.")


class AdminTokenSchema(TokenSchema):
    user_id = fields.UUID(required=True)


class TokensQuerySchema(PageQuerySchema):
    user_id = fields.UUID()
    status = fields.String(validate=validate.OneOf(STATUSES))


class SessionSchema(BaseSchema):
    id = fields.UUID(required=True)
    token_id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    device_id = fields.String(required=True)
    ip_address = fields.String(allow_none=True)
    user_agent = fields.String(allow_none=True)
    started_at = fields.DateTime(required=True)
    last_activity = fields.DateTime(
        required=True, metadata={"description": "As last flushed from the hot path (at most ~60 s behind)"})
    ended_at = fields.DateTime(allow_none=True)
    request_count = fields.Integer(required=True)
    bytes_in = fields.Integer(required=True)
    bytes_out = fields.Integer(required=True)
    is_active = fields.Boolean(required=True)


class SessionsQuerySchema(PageQuerySchema):
    active_only = fields.Boolean(load_default=False)
    user_id = fields.UUID()


class AdminTransactionsQuerySchema(TransactionsQuerySchema):
    user_id = fields.UUID()


class AuditLogSchema(BaseSchema):
    id = fields.UUID(required=True)
    actor_id = fields.UUID(allow_none=True, metadata={"description": "Who did it; null for the system"})
    action = fields.String(required=True, metadata={"example": "admin.user_updated"})
    resource_type = fields.String(allow_none=True)
    resource_id = fields.String(allow_none=True)
    details = fields.Dict(required=True)
    ip_address = fields.String(allow_none=True)
    user_agent = fields.String(allow_none=True)
    created_at = fields.DateTime(required=True)


class AuditLogsQuerySchema(PageQuerySchema):
    user_id = fields.UUID(metadata={"description": "The actor"})
    action = fields.String(validate=[validate.Length(min=1, max=64), NO_NUL])
    resource_type = fields.String(validate=[validate.Length(min=1, max=64), NO_NUL])
    since = _aware(description="Only entries at or after this moment (ISO 8601 with offset)")
