from __future__ import annotations

import uuid

from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required

from ..openapi import BEARER, Blueprint, errors
from ..pagination import PageQuerySchema, page_schema
from . import endpoints as services
from . import webhooks as delivery
from .schemas import (
    WebhookDeliverySchema,
    WebhookEndpointCreatedSchema,
    WebhookEndpointCreateSchema,
    WebhookEndpointSchema,
    WebhookEndpointUpdateSchema,
    WebhookTestSchema,
)

blp = Blueprint(
    "webhooks", __name__, url_prefix="/api/v1/webhooks/endpoints",
    description=f"""Outgoing webhooks: your endpoints receive the events they subscribe to, signed.

**Delivery** ([Standard Webhooks](https://www.standardwebhooks.com/)): `POST` with the compact JSON body
`{{id, type, created_at, data}}`, `Content-Type: application/json`, `User-Agent: {delivery.USER_AGENT}` and the
headers `webhook-id` (the same on every attempt of one message: deduplicate on it), `webhook-timestamp` (Unix
seconds of this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<raw
body>")>`, where `key` is the base64-decoded part of your secret after `whsec_`. Check the signature against the raw
body bytes and reject timestamps more than 5 minutes off.

**Success** is any 2xx answer within {delivery.TIMEOUT_SECONDS:g} s. Redirects are never followed (a 3xx is a failure),
the answer's body is ignored. A failed attempt (non-2xx, timeout, connection or TLS error, an address the SSRF guard
refuses) is retried after 10 s, 1 min, 5 min, 30 min, 2 h and 6 h — {delivery.MAX_ATTEMPTS} attempts in all — with
the same `webhook-id`; a delivery whose attempts all failed is a **failed delivery**. A `410 Gone` answer disables the
endpoint at once; {delivery.FAILED_DELIVERIES_TO_DISABLE} failed deliveries in a row disable it too; any successful
delivery resets the count. While an endpoint is disabled its pending deliveries are not sent (they end `failed`,
`last_error: endpoint disabled`) and no new ones are created; `PATCH {{"is_active": true}}` re-enables it.

**Limits**: at most {services.MAX_ENDPOINTS_PER_USER} endpoints per user (409 beyond). URLs are `http` or `https`
without credentials or fragment; IPv4 addresses only in dotted-decimal form. In production the port must be 80, 443 or
1024–65535 and the host must be, and resolve only to, public addresses — checked at registration (422) and again on
every attempt, where the connection goes to the very address that was checked (https: SNI and certificate checked
against the host name). Development and test setups (`WEBHOOK_ALLOW_PRIVATE_TARGETS`) skip the port and address
checks.""",
)


@blp.route("")
class Endpoints(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_schema(WebhookEndpointSchema))
    @errors(401, 422)
    def get(self, query):
        """Your webhook endpoints, newest first (never their secrets)"""
        return services.list_endpoints(current_user, query["limit"], query["offset"])

    @blp.doc(security=BEARER)
    @blp.arguments(WebhookEndpointCreateSchema)
    @blp.response(201, WebhookEndpointCreatedSchema)
    @errors(401, 409, 422)
    def post(self, body):
        """Register an endpoint; the response carries its signing secret, shown only this once

        422 for a URL the SSRF guard refuses (the message says why) or an unknown event type; 409 when you already
        have 10 endpoints.
        """
        return services.create_endpoint(current_user, body["url"], body["events"])


@blp.route("/<uuid:endpoint_id>")
class EndpointItem(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.response(200, WebhookEndpointSchema)
    @errors(401, 404)
    def get(self, endpoint_id: uuid.UUID):
        """One of your endpoints (404 for anyone else's)"""
        return services.get_endpoint(current_user, endpoint_id)

    @blp.doc(security=BEARER)
    @blp.arguments(WebhookEndpointUpdateSchema)
    @blp.response(200, WebhookEndpointSchema)
    @errors(401, 404, 422)
    def patch(self, changes, endpoint_id: uuid.UUID):
        """Change `url`, `events` or `is_active`

        A new URL is checked like a new endpoint's and starts the failure count afresh; `is_active: true` re-enables
        a disabled endpoint and resets `consecutive_failures`. The secret cannot be changed (create a new endpoint).
        """
        return services.update_endpoint(current_user, endpoint_id, changes)

    @blp.doc(security=BEARER)
    @blp.response(204)
    @errors(401, 404)
    def delete(self, endpoint_id: uuid.UUID):
        """Delete an endpoint and its delivery log; nothing more is sent to it"""
        services.delete_endpoint(current_user, endpoint_id)


@blp.route("/<uuid:endpoint_id>/deliveries")
class Deliveries(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_schema(WebhookDeliverySchema))
    @errors(401, 404, 422)
    def get(self, query, endpoint_id: uuid.UUID):
        """The endpoint's deliveries, newest first: status, attempts, the last answer's status or error

        Finished deliveries are kept `DELIVERY_LOG_RETENTION_DAYS` (30 by default).
        """
        return services.list_deliveries(current_user, endpoint_id, query["limit"], query["offset"])


@blp.route("/<uuid:endpoint_id>/test")
class SendTest(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.arguments(WebhookTestSchema, required=False)
    @blp.response(202, WebhookDeliverySchema)
    @errors(401, 404, 409, 422)
    def post(self, _body, endpoint_id: uuid.UUID):
        """Send a `test.ping` to the endpoint (queued; follow it in `/deliveries`)

        Signed and retried like any other delivery. 409 when the endpoint is disabled.
        """
        return services.send_test(current_user, endpoint_id)
