from __future__ import annotations

from marshmallow import fields, validate

from ..schemas import BaseSchema


class ProxyStatusSchema(BaseSchema):
    connected = fields.Boolean(required=True)
    user_id = fields.UUID(required=True)
    token_id = fields.UUID(required=True)
    scope = fields.String(required=True)
    is_activated = fields.Boolean(required=True)
    status = fields.String(required=True, validate=validate.OneOf(("ready", "active")))
    duration_hours = fields.Integer(required=True)
    expires_at = fields.DateTime(allow_none=True, metadata={"description": "UTC; null until the first request"})
    time_remaining_seconds = fields.Integer(
        required=True, metadata={"description": "Until expiry; the whole duration while not yet activated"})
