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
    # Only when the request carries X-Device-ID (the desktop client sends only X-Access-Token): the device rule
    # for that device, as its next proxied request would meet it. Asking never claims the token.
    device_can_use = fields.Boolean(metadata={
        "description": "Only with X-Device-ID: a proxied request from this device would not be refused with 409 "
                       "(another device holding the token); rate limits are not considered"})
    held_by_other_device = fields.Boolean(metadata={
        "description": "Only with X-Device-ID: another device holds the token and has not been idle long enough"})
    retry_after_seconds = fields.Integer(allow_none=True, metadata={
        "description": "Only with X-Device-ID: seconds until the other device's hold lapses if it stays idle (the "
                       "409's Retry-After); null when this device can use the token"})
    available_at = fields.DateTime(allow_none=True, metadata={
        "description": "Only with X-Device-ID: UTC moment the other device's hold lapses if it stays idle; null "
                       "when this device can use the token"})
