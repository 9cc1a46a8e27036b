from __future__ import annotations

from marshmallow import fields, validate

from ..schemas import BaseSchema
from .models import DELIVERY_STATES, EVENT_TYPES
from .webhooks import DISABLED_FAILING, DISABLED_GONE, DISABLED_MANUALLY

URL = validate.Length(min=1, max=2048)
URL_DOC = {
    "format": "uri",
    "description": "`http://` or `https://`, without credentials or fragment. In production the port must be 80, "
                   "443 or 1024–65535 and the host must be, and resolve only to, public addresses (checked now and "
                   "on every attempt). https certificates are always verified against the host name.",
}
EVENTS_DOC = {"description": "Non-empty; any of " + ", ".join(f"`{name}`" for name in EVENT_TYPES)
              + ". Duplicates are folded. `test.ping` is always sent on request and needs no subscription."}


def _events(*, required: bool) -> fields.List:
    return fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)), required=required,
                       validate=validate.Length(min=1), metadata=EVENTS_DOC)


class WebhookEndpointSchema(BaseSchema):
    id = fields.UUID(required=True)
    url = fields.String(required=True)
    events = fields.List(fields.String(), required=True)
    is_active = fields.Boolean(required=True)
    consecutive_failures = fields.Integer(required=True, metadata={
        "description": "Failed deliveries in a row (a delivery fails once all its attempts have); 10 disable the "
                       "endpoint, any successful delivery resets it"})
    disabled_reason = fields.String(allow_none=True, metadata={
        "description": f"`{DISABLED_GONE}`: the receiver answered 410; `{DISABLED_FAILING}`: 10 failed deliveries in "
                       f"a row; `{DISABLED_MANUALLY}`: you set `is_active` to false; null while active"})
    disabled_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class WebhookEndpointCreatedSchema(WebhookEndpointSchema):
    secret = fields.String(required=True, metadata={
        "description": "`whsec_` + base64 of 32 random bytes: the Standard Webhooks signing key (the base64 part, "
                       "decoded). Shown only in this response; it cannot be read back later."})


class WebhookEndpointCreateSchema(BaseSchema):
    url = fields.String(required=True, validate=URL, metadata=URL_DOC)
    events = _events(required=True)


class WebhookEndpointUpdateSchema(BaseSchema):
    url = fields.String(validate=URL, metadata=URL_DOC)
    events = _events(required=False)
    is_active = fields.Boolean(metadata={
        "description": "`false` pauses the endpoint (pending deliveries are then not sent); `true` re-enables it "
                       "and resets `consecutive_failures`"})


class WebhookTestSchema(BaseSchema):
    """No fields: the endpoint in the path is the whole request."""


class WebhookDeliverySchema(BaseSchema):
    id = fields.UUID(required=True)
    endpoint_id = fields.UUID(required=True)
    message_id = fields.String(required=True, metadata={
        "description": "The `webhook-id` header: the same on every attempt, the key to deduplicate on"})
    event_type = fields.String(required=True)
    payload = fields.Dict(required=True, metadata={"description": "The body sent: `{id, type, created_at, data}`"})
    status = fields.String(required=True, validate=validate.OneOf(DELIVERY_STATES))
    attempts = fields.Integer(required=True, metadata={"description": "HTTP attempts made so far (at most 7)"})
    next_attempt_at = fields.DateTime(required=True, metadata={
        "description": "While pending: when the next attempt is due"})
    last_attempt_at = fields.DateTime(allow_none=True)
    response_status = fields.Integer(allow_none=True, metadata={
        "description": "The status of the last answer; null when there was none (timeout, connection error)"})
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime(required=True)
    completed_at = fields.DateTime(allow_none=True)
