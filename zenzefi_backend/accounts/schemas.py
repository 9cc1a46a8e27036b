from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate

from ..schemas import BaseSchema, MoneyField
from .emails import InvalidEmail, canonical_email

USERNAME = validate.And(
    validate.Length(min=3, max=50),
    validate.Regexp(r"^[A-Za-z0-9_.-]+$", error="Only letters, digits, '_', '.' and '-'."),
)
PASSWORD = validate.Length(min=8, max=128)


class EmailAddress(fields.String):
    """An e-mail address in, its canonical form out of `load` (accounts/emails.py): what is stored and compared."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("validate", validate.Length(max=255))
        kwargs["metadata"] = {"format": "email", **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr, data, **kwargs) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return canonical_email(text)
        except InvalidEmail as exc:
            raise ValidationError(str(exc)) from None


class RegisterSchema(BaseSchema):
    email = EmailAddress(required=True, metadata={
        "description": "Stored and compared in its normalised form (Unicode and IDNA normalised, lower-cased)"})
    username = fields.String(required=True, validate=USERNAME)
    password = fields.String(required=True, load_only=True, validate=PASSWORD)
    full_name = fields.String(allow_none=True, validate=validate.Length(max=255))
    referral_code = fields.String(allow_none=True, validate=validate.Length(min=1, max=32))


class RegisterQuerySchema(BaseSchema):
    ref = fields.String(validate=validate.Length(min=1, max=32))


class UserSchema(BaseSchema):
    id = fields.UUID(required=True)
    email = fields.String(required=True)
    username = fields.String(required=True)
    full_name = fields.String(allow_none=True)
    is_active = fields.Boolean(required=True)
    is_superuser = fields.Boolean(required=True)
    plan = fields.String(required=True)
    plan_expires_at = fields.DateTime(allow_none=True)
    referral_code = fields.String(required=True)
    balance = MoneyField(required=True)
    email_notifications = fields.Boolean(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class LoginSchema(BaseSchema):
    email = fields.String(required=True, validate=validate.Length(min=1, max=255))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=1024))


class TokenPairSchema(BaseSchema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "bearer"})
    expires_in = fields.Integer(required=True, metadata={"description": "Access token lifetime in seconds"})


class AccessTokenSchema(BaseSchema):
    access_token = fields.String(required=True)
    token_type = fields.String(required=True)
    expires_in = fields.Integer(required=True)


class LogoutSchema(BaseSchema):
    refresh_token = fields.String(load_default=None, allow_none=True,
                                  metadata={"description": "Also revoke this refresh token"})


class ProfileUpdateSchema(BaseSchema):
    full_name = fields.String(allow_none=True, validate=validate.Length(max=255))
    email_notifications = fields.Boolean()


class PasswordChangeSchema(BaseSchema):
    current_password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=1024))
    new_password = fields.String(required=True, load_only=True, validate=PASSWORD)
