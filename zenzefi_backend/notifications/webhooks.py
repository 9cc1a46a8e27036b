"""Outgoing webhooks (SPEC §3.10): a user's endpoints, and the signed deliveries the outbox relay fans out.

A delivery row is the promise to send; Redis only carries the nudge. An attempt claims its row with a
conditional UPDATE (attempts + 1 and a lease), commits, sends with no DB transaction open, then records the
answer — only if the row is still the one it claimed (same status and attempt number), so a late worker can
never overwrite a newer attempt. At least once: a worker that dies mid-attempt leaves the row pending, and
the relay hands it out again once the lease is over. Receivers deduplicate on `webhook-id`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
import urllib3
from flask import current_app
from sqlalchemy.dialects import postgresql, sqlite

from .. import metrics
from ..accounts.models import User
from ..audit.services import record
from ..clock import ensure_utc, now
from ..database import db, purge_in_batches
from ..errors import Conflict, NotFound, ValidationFailed
from ..jobs.queues import enqueue_attempt
from ..pagination import paginate
from ..record_views import RecordView
from ..sealing import Unreadable, seal, unseal
from . import ssrf
from .models import TEST_EVENT, OutboxEvent, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

SEAL_PURPOSE = "webhook secrets"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
SECRET_BYTES = 32  # Standard Webhooks: 24–64 random bytes
MAX_ENDPOINTS_PER_USER = 10
USER_AGENT = "Zenzefi-Webhooks/1.0"
TIMEOUT_SECONDS = 10.0
# After attempt n fails, attempt n + 1 comes RETRY_DELAYS[n - 1] later; the delivery fails after the last.
RETRY_DELAYS = (timedelta(seconds=10), timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30),
                timedelta(hours=2), timedelta(hours=6))
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
FAILED_DELIVERIES_TO_DISABLE = 10
# The RQ job is killed after JOB_TIMEOUT_SECONDS (a receiver that trickles its answer), well inside the lease,
# so no second worker takes over a row while the first one may still send.
JOB_TIMEOUT_SECONDS = 30
LEASE = timedelta(seconds=2 * JOB_TIMEOUT_SECONDS)

DISABLED_GONE = "gone"
DISABLED_FAILING = "failing"
DISABLED_MANUALLY = "manual"
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


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, key = the base64-decoded part after `whsec_`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _allow_private() -> bool:
    return bool(current_app.config["WEBHOOK_ALLOW_PRIVATE_TARGETS"])


def _checked_url(url: str) -> str:
    try:
        ssrf.check_url(url, allow_private=_allow_private())
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


def _subscribed_when(event: OutboxEvent, events: list[str], subscribed_at: dict[str, str] | None,
                     created_at: datetime) -> bool:
    """Whether an endpoint subscribed to the event's type by the time the event happened."""
    if event.event_type not in events:
        return False
    since = (subscribed_at or {}).get(event.event_type)
    return event.created_at >= (datetime.fromisoformat(since) if since else created_at)


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


def _message(message_id: str, event_type: str, created_at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """The body a receiver gets (Standard Webhooks): `{id, type, created_at, data}`."""
    return {"id": message_id, "type": event_type, "created_at": ensure_utc(created_at).isoformat(), "data": data}


def send_test(user: User, endpoint_id: uuid.UUID) -> WebhookDelivery:
    """A `test.ping` delivery, whatever the endpoint subscribes to; retried like any other."""
    endpoint = get_endpoint(user, endpoint_id)
    if not endpoint.is_active:
        raise EndpointDisabled()
    moment = now()
    message_id = f"msg_{uuid.uuid4().hex}"
    delivery = WebhookDelivery(
        id=uuid.uuid4(), endpoint_id=endpoint.id, message_id=message_id, event_type=TEST_EVENT,
        payload=_message(message_id, TEST_EVENT, moment, {"endpoint_id": str(endpoint.id), "message": TEST_MESSAGE}),
        status="pending", attempts=0, next_attempt_at=moment, created_at=moment,
    )
    db.session.add(delivery)
    db.session.commit()
    enqueue_delivery(delivery.id)
    return delivery


def fan_out(event: OutboxEvent) -> int:
    """One pending delivery per active endpoint of the event's user that subscribed to its type before the event
    happened (an endpoint never receives events from before it, or its subscription, existed), in the caller's
    transaction (the caller commits, then enqueues). Calling it twice for one event adds nothing the second
    time, also when two callers race: the (endpoint, message id) pair is unique and a duplicate is skipped
    without an error. Returns how many deliveries were added."""
    if event.user_id is None:
        return 0
    if event.id is None or event.created_at is None:
        db.session.flush()
    subscribed = [endpoint_id for endpoint_id, events, subscribed_at, created_at in db.session.execute(
        sa.select(WebhookEndpoint.id, WebhookEndpoint.events, WebhookEndpoint.subscribed_at, WebhookEndpoint.created_at)
        .where(WebhookEndpoint.user_id == event.user_id, WebhookEndpoint.is_active.is_(True))
    ) if _subscribed_when(event, events, subscribed_at, created_at)]
    if not subscribed:
        return 0
    message_id = f"msg_{event.id.hex}"
    payload = _message(message_id, event.event_type, event.created_at, event.payload)
    dialect = db.session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    moment = now()
    added = 0
    for endpoint_id in subscribed:
        statement = (
            insert(WebhookDelivery)
            .values(id=uuid.uuid4(), endpoint_id=endpoint_id, message_id=message_id, event_type=event.event_type,
                    payload=payload, status="pending", attempts=0, next_attempt_at=moment, created_at=moment)
            .on_conflict_do_nothing(index_elements=["endpoint_id", "message_id"])
        )
        # RETURNING rather than rowcount: an ORM-enabled INSERT may not report a rowcount (psycopg 3).
        if db.session.execute(statement.returning(WebhookDelivery.id)).first() is not None:
            added += 1
    return added


def due_deliveries(moment: datetime, limit: int = 500) -> list[uuid.UUID]:
    """Pending deliveries whose attempt (or lease) time has come, oldest first."""
    return list(db.session.scalars(
        sa.select(WebhookDelivery.id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= moment)
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)
    ))


def enqueue_delivery(delivery_id: uuid.UUID, delay_seconds: float = 0) -> None:
    """Hand an attempt to a worker, after the commit that made the row exist (see `enqueue_attempt`)."""
    from ..jobs.webhooks import deliver_webhook_job

    if not enqueue_attempt("webhooks", deliver_webhook_job, str(delivery_id), delay_seconds=delay_seconds,
                           job_timeout=JOB_TIMEOUT_SECONDS):
        log.warning("cannot enqueue a webhook delivery; the relay will pick it up",
                    extra={"delivery_id": str(delivery_id)})


def deliver(delivery_id: uuid.UUID) -> str:
    """One attempt at one delivery. Safe to call any number of times, at once too: only one caller claims a due
    attempt; the others return why they did nothing."""
    attempt = _claim(delivery_id)
    if attempt is None:
        return _not_claimed(delivery_id)
    delivery = db.session.get(WebhookDelivery, delivery_id, populate_existing=True)
    endpoint = None if delivery is None else db.session.get(WebhookEndpoint, delivery.endpoint_id,
                                                            populate_existing=True)
    if delivery is None or endpoint is None:
        db.session.rollback()
        return "nothing to do: the endpoint was deleted"
    if not endpoint.is_active:
        return _not_sent(delivery_id, attempt)
    endpoint_id, url, message_id, payload = endpoint.id, endpoint.url, delivery.message_id, delivery.payload
    try:
        secret = unseal(SEAL_PURPOSE, endpoint.secret_sealed).decode()
    except Unreadable:
        log.error("a webhook secret cannot be unsealed (SECRET_KEY changed?)", extra={"endpoint_id": str(endpoint_id)})
        return _record(delivery_id, endpoint_id, attempt, None,
                       "the signing secret is unreadable after a server key change; re-create the endpoint",
                       final=True)
    db.session.rollback()  # no DB transaction stays open while the receiver takes its time
    status, error = _send(url, message_id, payload, secret)
    return _record(delivery_id, endpoint_id, attempt, status, error)


def _claim(delivery_id: uuid.UUID) -> int | None:
    """attempts + 1 and a lease on a due pending row; the new attempt number, or None if it was not ours."""
    moment = now()
    attempt = db.session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
               WebhookDelivery.next_attempt_at <= moment, WebhookDelivery.attempts < MAX_ATTEMPTS)
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=moment + LEASE, last_attempt_at=moment)
        .returning(WebhookDelivery.attempts)
    ).scalar()
    db.session.commit()
    return attempt


def _not_claimed(delivery_id: uuid.UUID) -> str:
    row = db.session.execute(
        sa.select(WebhookDelivery.status, WebhookDelivery.attempts, WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.id == delivery_id)
    ).first()
    db.session.rollback()
    if row is None:
        return "nothing to do: no such delivery (its endpoint was deleted, or it was purged)"
    if row.status != "pending":
        return f"nothing to do: already {row.status}"
    if ensure_utc(row.next_attempt_at) > now():
        return "nothing to do: not due yet, or another worker is attempting it"
    if row.attempts >= MAX_ATTEMPTS:
        return _abandon(delivery_id)
    return "nothing to do: claimed by another worker"


def _abandon(delivery_id: uuid.UUID) -> str:
    """The last attempt's worker died before recording an answer (its lease is over): the delivery failed."""
    moment = now()
    endpoint_id = db.session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
               WebhookDelivery.next_attempt_at <= moment, WebhookDelivery.attempts >= MAX_ATTEMPTS)
        .values(status="failed", completed_at=moment, last_error="the last attempt never reported an answer")
        .returning(WebhookDelivery.endpoint_id)
    ).scalar()
    if endpoint_id is None:
        db.session.rollback()
        return "nothing to do: claimed by another worker"
    _count_failed_delivery(endpoint_id)
    metrics.count(metrics.webhook_deliveries, result="failed")
    db.session.commit()
    return "failed: the last attempt never reported an answer"


def _ours(delivery_id: uuid.UUID, attempt: int) -> sa.Update:
    """An UPDATE of the delivery only while it is still the attempt this worker claimed."""
    return sa.update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                                            WebhookDelivery.attempts == attempt)


def _not_sent(delivery_id: uuid.UUID, attempt: int) -> str:
    done = db.session.execute(
        _ours(delivery_id, attempt)
        .values(status="failed", attempts=attempt - 1, completed_at=now(), last_error="endpoint disabled")
        .returning(WebhookDelivery.id)
    ).scalar()
    db.session.commit()
    return "not sent: endpoint disabled" if done else "nothing to do: changed by another worker"


def _send(url: str, message_id: str, payload: dict[str, Any], secret: str) -> tuple[int | None, str | None]:
    """(status, None) when the receiver answered, (None, what went wrong) when it did not."""
    timestamp = int(now().timestamp())
    body = json.dumps(payload, separators=(",", ":")).encode()  # the exact bytes that are signed and sent
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }
    try:
        return ssrf.post(url, body, headers, timeout=TIMEOUT_SECONDS, allow_private=_allow_private()), None
    except ssrf.UnsafeTarget as exc:
        return None, f"refused: {exc}"
    except urllib3.exceptions.NewConnectionError as exc:  # a subclass of ConnectTimeoutError, so first
        return None, f"cannot connect: {exc.__cause__ or exc}"
    except urllib3.exceptions.TimeoutError:
        return None, f"no answer within {TIMEOUT_SECONDS:g} s"
    except urllib3.exceptions.SSLError as exc:
        return None, f"TLS error: {exc.__cause__ or exc}"
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _record(delivery_id: uuid.UUID, endpoint_id: uuid.UUID, attempt: int, status: int | None, error: str | None,
            *, final: bool = False) -> str:
    """Write down the attempt's answer: 2xx succeeded; 410 disables the endpoint; anything else is retried
    after the next delay, and after the last attempt the delivery failed (one more failed delivery for the
    endpoint; FAILED_DELIVERIES_TO_DISABLE in a row disable it)."""
    moment = now()
    ours = _ours(delivery_id, attempt)
    retry_in: timedelta | None = None
    if status is not None and 200 <= status < 300:
        result, outcome = "success", "succeeded"
        changed = db.session.execute(
            ours.values(status="succeeded", completed_at=moment, response_status=status, last_error=None)
            .returning(WebhookDelivery.id)).scalar()
        if changed:
            db.session.execute(sa.update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                                WebhookEndpoint.consecutive_failures != 0)
                               .values(consecutive_failures=0))
    elif status == 410:
        result, outcome = "gone", "failed: 410 Gone, endpoint disabled"
        changed = db.session.execute(
            ours.values(status="failed", completed_at=moment, response_status=status,
                        last_error="HTTP 410 Gone: the endpoint was disabled").returning(WebhookDelivery.id)).scalar()
        if changed:
            _disable(endpoint_id, DISABLED_GONE)
    else:
        error = (error or f"HTTP {status}")[:255]
        if not final and attempt < MAX_ATTEMPTS:
            retry_in = RETRY_DELAYS[attempt - 1]
            result, outcome = "retry", f"failed ({error}); retry in {int(retry_in.total_seconds())} s"
            changed = db.session.execute(
                ours.values(next_attempt_at=moment + retry_in, response_status=status, last_error=error)
                .returning(WebhookDelivery.id)).scalar()
        else:
            result, outcome = "failed", f"failed for good ({error})"
            changed = db.session.execute(
                ours.values(status="failed", completed_at=moment, response_status=status, last_error=error)
                .returning(WebhookDelivery.id)).scalar()
            if changed:
                _count_failed_delivery(endpoint_id)
    if not changed:
        db.session.rollback()
        return "answer discarded: the delivery changed meanwhile (its lease ran out, or it was deleted)"
    metrics.count(metrics.webhook_deliveries, result=result)
    db.session.commit()
    log.info("webhook attempt", extra={"delivery_id": str(delivery_id), "endpoint_id": str(endpoint_id),
                                       "attempt": attempt, "status": status, "result": result})
    if retry_in is not None:
        enqueue_delivery(delivery_id, retry_in.total_seconds())
    return outcome


def _count_failed_delivery(endpoint_id: uuid.UUID) -> None:
    failures = db.session.execute(
        sa.update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
        .values(consecutive_failures=WebhookEndpoint.consecutive_failures + 1)
        .returning(WebhookEndpoint.consecutive_failures)
    ).scalar()
    if failures is not None and failures >= FAILED_DELIVERIES_TO_DISABLE:
        _disable(endpoint_id, DISABLED_FAILING, consecutive_failures=failures)


def _disable(endpoint_id: uuid.UUID, reason: str, **details: Any) -> None:
    disabled = db.session.execute(
        sa.update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.is_active.is_(True))
        .values(is_active=False, disabled_reason=reason, disabled_at=now())
        .returning(WebhookEndpoint.id)
    ).scalar()
    if disabled is not None:
        record("webhook_endpoint.disabled", resource_type="webhook_endpoint", resource_id=endpoint_id,
               details={"reason": reason, **details})


def purge_delivery_log(older_than: datetime) -> int:
    """Forget finished deliveries completed before `older_than`."""
    return purge_in_batches(WebhookDelivery, WebhookDelivery.status.in_(("succeeded", "failed")),
                            WebhookDelivery.completed_at < older_than)
