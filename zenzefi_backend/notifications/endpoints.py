"""A user's webhook endpoints (SPEC §3.10): registration with its signing secret, changes, deletion, the delivery
log and the test ping. Sending is webhooks.py's business."""
from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from ..accounts.models import User
from ..audit.services import record
from ..clock import now
from ..database import db
from ..errors import Conflict, NotFound, ValidationFailed
from ..pagination import paginate
from ..record_views import RecordView
from ..sealing import seal
from . import ssrf
from .models import TEST_EVENT, WebhookDelivery, WebhookEndpoint
from .webhooks import (
    DISABLED_MANUALLY,
    SEAL_PURPOSE,
    SECRET_PREFIX,
    allow_private_targets,
    enqueue_delivery,
    message_body,
)

SECRET_BYTES = 32  # Standard Webhooks: 24–64 random bytes
MAX_ENDPOINTS_PER_USER = 10
TEST_MESSAGE = "A test event from Zenzefi: your endpoint is reachable and you can check the signature."


class WebhookEndpointNotFound(NotFound):
    message = "Webhook endpoint not found."


class TooManyEndpoints(Conflict):
    message = f"At most {MAX_ENDPOINTS_PER_USER} webhook endpoints per user; delete one first."


class EndpointDisabled(Conflict):
    message = "The endpoint is disabled; set `is_active` to true first."


@dataclass
class CreatedEndpoint(RecordView):
    """A new endpoint together with its signing secret, which exists only in the create response."""

    record: WebhookEndpoint
    secret: str


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()



def _checked_url(url: str) -> str:
    try:
        ssrf.check_url(url, allow_private=allow_private_targets())
    except ssrf.UnsafeTarget as exc:
        raise ValidationFailed({"url": [str(exc)]}) from None
    return url


def _folded(events: list[str]) -> list[str]:
    return list(dict.fromkeys(events))


def _subscribe(endpoint: WebhookEndpoint, events: list[str], moment: datetime) -> None:
    """Set the endpoint's event types; a type it already had keeps its subscription time, a new one starts now."""
    kept = {event_type: since for event_type, since in (endpoint.subscribed_at or {}).items()
            if event_type in (endpoint.events or [])}
    endpoint.events = _folded(events)
    endpoint.subscribed_at = {event_type: kept.get(event_type, moment.isoformat()) for event_type in endpoint.events}


def _audit_view(endpoint: WebhookEndpoint) -> dict[str, Any]:
    # Receivers sometimes put a token in the query string: the audit trail keeps the URL without it.
    return {"url": urlsplit(endpoint.url)._replace(query="").geturl(), "events": list(endpoint.events),
            "is_active": endpoint.is_active}


def create_endpoint(user: User, url: str, events: list[str]) -> CreatedEndpoint:
    url = _checked_url(url)  # DNS before any row lock
    db.session.execute(sa.select(User.id).where(User.id == user.id).with_for_update())  # serialises the cap
    owned = db.session.scalar(sa.select(sa.func.count()).select_from(WebhookEndpoint)
                              .where(WebhookEndpoint.user_id == user.id))
    if owned >= MAX_ENDPOINTS_PER_USER:
        raise TooManyEndpoints()
    secret = new_secret()
    moment = now()
    endpoint = WebhookEndpoint(id=uuid.uuid4(), user_id=user.id, url=url,
                               secret_sealed=seal(SEAL_PURPOSE, secret.encode()), is_active=True,
                               consecutive_failures=0, created_at=moment, updated_at=moment)
    _subscribe(endpoint, events, moment)
    db.session.add(endpoint)
    record("webhook_endpoint.created", actor_id=user.id, resource_type="webhook_endpoint", resource_id=endpoint.id,
           details=_audit_view(endpoint))
    db.session.commit()
    return CreatedEndpoint(endpoint, secret)


def get_endpoint(user: User, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = db.session.scalar(sa.select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                                  WebhookEndpoint.user_id == user.id))
    if endpoint is None:
        raise WebhookEndpointNotFound()
    return endpoint


def list_endpoints(user: User, limit: int, offset: int) -> dict[str, Any]:
    statement = (sa.select(WebhookEndpoint).where(WebhookEndpoint.user_id == user.id)
                 .order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id.desc()))
    return paginate(statement, limit, offset)


def update_endpoint(user: User, endpoint_id: uuid.UUID, changes: dict[str, Any]) -> WebhookEndpoint:
    """`url`, `events`, `is_active`. A new URL or re-enabling starts the failure count afresh."""
    endpoint = get_endpoint(user, endpoint_id)
    before = _audit_view(endpoint)
    if "url" in changes and changes["url"] != endpoint.url:
        endpoint.url = _checked_url(changes["url"])
        endpoint.consecutive_failures = 0
    if "events" in changes:
        _subscribe(endpoint, changes["events"], now())
    if "is_active" in changes and changes["is_active"] != endpoint.is_active:
        endpoint.is_active = changes["is_active"]
        if endpoint.is_active:
            endpoint.consecutive_failures = 0
            endpoint.disabled_reason = None
            endpoint.disabled_at = None
        else:
            endpoint.disabled_reason = DISABLED_MANUALLY
            endpoint.disabled_at = now()
    after = _audit_view(endpoint)
    changed = {key: {"from": before[key], "to": value} for key, value in after.items() if before[key] != value}
    if changed:
        record("webhook_endpoint.updated", actor_id=user.id, resource_type="webhook_endpoint",
               resource_id=endpoint.id, details={"changed": changed})
    db.session.commit()
    return endpoint


def delete_endpoint(user: User, endpoint_id: uuid.UUID) -> None:
    """Its deliveries go with it (ON DELETE CASCADE); a job still queued for one finds nothing to do."""
    endpoint = get_endpoint(user, endpoint_id)
    record("webhook_endpoint.deleted", actor_id=user.id, resource_type="webhook_endpoint", resource_id=endpoint.id,
           details=_audit_view(endpoint))
    db.session.delete(endpoint)
    db.session.commit()


def list_deliveries(user: User, endpoint_id: uuid.UUID, limit: int, offset: int) -> dict[str, Any]:
    endpoint = get_endpoint(user, endpoint_id)
    statement = (sa.select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
                 .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()))
    return paginate(statement, limit, offset)


def send_test(user: User, endpoint_id: uuid.UUID) -> WebhookDelivery:
    """A `test.ping` delivery, whatever the endpoint subscribes to; retried like any other."""
    endpoint = get_endpoint(user, endpoint_id)
    if not endpoint.is_active:
        raise EndpointDisabled()
    moment = now()
    message_id = f"msg_{uuid.uuid4().hex}"
    delivery = WebhookDelivery(
        id=uuid.uuid4(), endpoint_id=endpoint.id, message_id=message_id, event_type=TEST_EVENT,
        payload=message_body(message_id, TEST_EVENT, moment,
                             {"endpoint_id": str(endpoint.id), "message": TEST_MESSAGE}),
        status="pending", attempts=0, next_attempt_at=moment, created_at=moment,
    )
    db.session.add(delivery)
    db.session.commit()
    enqueue_delivery(delivery.id)
    return delivery


