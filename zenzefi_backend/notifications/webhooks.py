"""Outgoing webhook delivery (SPEC §3.10): the outbox relay's fan-out into deliveries, and each signed attempt.

A delivery is claimed, retried, enqueued and purged by the mechanism it shares with e-mails (delivery.py); an
attempt sends with no DB transaction open, then records the answer — only if the row is still the one it claimed
(same status and attempt number), so a late worker can never overwrite a newer attempt. At least once: a worker
that dies mid-attempt leaves the row pending, and a sweep hands it out again once the lease is over. Receivers
deduplicate on `webhook-id`. Signed by the official Standard Webhooks library.
"""
from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import urllib3
from flask import current_app
from sqlalchemy.dialects import postgresql, sqlite
from standardwebhooks import Webhook

from .. import metrics
from ..audit.services import record
from ..clock import ensure_utc, now
from ..database import db
from ..sealing import Unreadable, unseal
from . import delivery, ssrf
from .models import OutboxEvent, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

SEAL_PURPOSE = "webhook secrets"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
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
CHANNEL = delivery.Channel(
    name="webhook", model=WebhookDelivery, queue="webhooks", job="zenzefi_backend.jobs.webhooks.deliver_webhook_job",
    lease=LEASE, job_timeout_seconds=JOB_TIMEOUT_SECONDS, retry_delays=RETRY_DELAYS,
    finished_states=("succeeded", "failed"), purge_age_column="completed_at",
    missing="no such delivery (its endpoint was deleted, or it was purged)",
    claim_values=lambda moment: {"last_attempt_at": moment},
)

DISABLED_GONE = "gone"
DISABLED_FAILING = "failing"
DISABLED_MANUALLY = "manual"


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, key = the base64-decoded part after `whsec_`
    (the library's own signing; the body is our compact ASCII JSON, so its text is its bytes)."""
    return Webhook(secret).sign(message_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode())


def allow_private_targets() -> bool:
    return bool(current_app.config["WEBHOOK_ALLOW_PRIVATE_TARGETS"])


def _subscribed_when(event: OutboxEvent, events: list[str], subscribed_at: dict[str, str] | None,
                     created_at: datetime) -> bool:
    """Whether an endpoint subscribed to the event's type by the time the event happened."""
    if event.event_type not in events:
        return False
    since = (subscribed_at or {}).get(event.event_type)
    return event.created_at >= (datetime.fromisoformat(since) if since else created_at)


def message_body(message_id: str, event_type: str, created_at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """The body a receiver gets (Standard Webhooks): `{id, type, created_at, data}`."""
    return {"id": message_id, "type": event_type, "created_at": ensure_utc(created_at).isoformat(), "data": data}


def fan_out(event: OutboxEvent) -> int:
    """`add_deliveries`, counted."""
    return len(add_deliveries(event))


def active_endpoints(user_ids: set[uuid.UUID]) -> dict[uuid.UUID, list[sa.Row]]:
    """The active endpoints of these users (what `add_deliveries` needs of each), by user: one query for a batch."""
    found: dict[uuid.UUID, list[sa.Row]] = {user_id: [] for user_id in user_ids}
    for endpoint in db.session.execute(
        sa.select(WebhookEndpoint.user_id, WebhookEndpoint.id, WebhookEndpoint.events, WebhookEndpoint.subscribed_at,
                  WebhookEndpoint.created_at)
        .where(WebhookEndpoint.user_id.in_(user_ids), WebhookEndpoint.is_active.is_(True))
    ):
        found[endpoint.user_id].append(endpoint)
    return found


def add_deliveries(event: OutboxEvent, endpoints: list[sa.Row] | None = None) -> list[uuid.UUID]:
    """One pending delivery per active endpoint of the event's user that subscribed to its type before the event
    happened (an endpoint never receives events from before it, or its subscription, existed), in the caller's
    transaction (the caller commits, then enqueues). Calling it twice for one event adds nothing the second
    time, also when two callers race: the (endpoint, message id) pair is unique and a duplicate is skipped
    without an error. `endpoints`: the user's, from `active_endpoints` (else they are read here). Returns the
    deliveries added."""
    if event.user_id is None:
        return []
    if event.id is None or event.created_at is None:
        db.session.flush()
    if endpoints is None:
        endpoints = active_endpoints({event.user_id})[event.user_id]
    subscribed = [endpoint.id for endpoint in endpoints
                  if _subscribed_when(event, endpoint.events, endpoint.subscribed_at, endpoint.created_at)]
    if not subscribed:
        return []
    message_id = f"msg_{event.id.hex}"
    payload = message_body(message_id, event.event_type, event.created_at, event.payload)
    dialect = db.session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    moment = now()
    added = []
    for endpoint_id in subscribed:
        statement = (
            insert(WebhookDelivery)
            .values(id=uuid.uuid4(), endpoint_id=endpoint_id, message_id=message_id, event_type=event.event_type,
                    payload=payload, status="pending", attempts=0, next_attempt_at=moment, created_at=moment)
            .on_conflict_do_nothing(index_elements=["endpoint_id", "message_id"])
        )
        # RETURNING rather than rowcount: an ORM-enabled INSERT may not report a rowcount (psycopg 3).
        delivery_id = db.session.execute(statement.returning(WebhookDelivery.id)).scalar()
        if delivery_id is not None:
            added.append(delivery_id)
    return added


def due_deliveries(moment: datetime, limit: int = 500) -> list[uuid.UUID]:
    """Pending deliveries whose attempt (or lease) time has come, oldest first."""
    return [delivery_id for delivery_id, _ in delivery.due(CHANNEL, moment, limit)]


def enqueue_delivery(delivery_id: uuid.UUID, delay_seconds: float = 0, *, attempt: int = 1) -> None:
    """Hand attempt `attempt` (the first, for a new delivery) to a worker, after the commit that made the row exist."""
    delivery.enqueue(CHANNEL, delivery_id, attempt, delay_seconds)


def deliver(delivery_id: uuid.UUID) -> str:
    """One attempt at one delivery. Safe to call any number of times, at once too: only one caller claims a due
    attempt; the others return why they did nothing."""
    claimed = delivery.claim(CHANNEL, delivery_id, WebhookDelivery.endpoint_id, WebhookDelivery.message_id,
                             WebhookDelivery.payload, commit=False)
    if claimed is None:
        return delivery.why_not_claimed(CHANNEL, delivery_id, on_abandon=_abandon)
    attempt, endpoint_id, message_id, payload = claimed
    endpoint = db.session.execute(
        sa.select(WebhookEndpoint.url, WebhookEndpoint.secret_sealed, WebhookEndpoint.is_active,
                  WebhookEndpoint.consecutive_failures).where(WebhookEndpoint.id == endpoint_id)
    ).first()
    db.session.commit()  # the claim; and no DB transaction stays open while the receiver takes its time
    if endpoint is None:
        return "nothing to do: the endpoint was deleted"
    if not endpoint.is_active:
        return _not_sent(delivery_id, attempt)
    try:
        secret = unseal(SEAL_PURPOSE, endpoint.secret_sealed).decode()
    except Unreadable:
        log.error("a webhook secret cannot be unsealed (SECRET_KEY changed?)", extra={"endpoint_id": str(endpoint_id)})
        return _record(delivery_id, endpoint_id, attempt, None,
                       "the signing secret is unreadable after a server key change; re-create the endpoint",
                       final=True)
    status, error = _send(endpoint.url, message_id, payload, secret)
    return delivery.record_answer(lambda: _record(delivery_id, endpoint_id, attempt, status, error,
                                                  failures_before=endpoint.consecutive_failures))


def _abandon(delivery_id: uuid.UUID) -> str:
    """The last attempt's worker died before recording an answer (its lease is over): the delivery failed."""
    endpoint_id = db.session.scalar(sa.select(WebhookDelivery.endpoint_id).where(WebhookDelivery.id == delivery_id))
    if endpoint_id is None or not delivery.abandon(CHANNEL, delivery_id, completed_at=now()):
        db.session.rollback()
        return "nothing to do: claimed by another worker"
    _count_failed_delivery(endpoint_id)
    metrics.count(metrics.webhook_deliveries, result="failed")
    db.session.commit()
    return "failed: the last attempt never reported an answer"


def _ours(delivery_id: uuid.UUID, attempt: int) -> sa.Update:
    """An UPDATE of the delivery only while it is still the attempt this worker claimed."""
    return (sa.update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                                             WebhookDelivery.attempts == attempt)
            .execution_options(synchronize_session=False))


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
        return ssrf.post(url, body, headers, timeout=TIMEOUT_SECONDS, allow_private=allow_private_targets()), None
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
            *, final: bool = False, failures_before: int | None = None) -> str:
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
        if changed and failures_before != 0:  # most endpoints have no failures to forget: no UPDATE for them
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
        retry_in = None if final else delivery.retry_delay(CHANNEL, attempt)
        if retry_in is not None:
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
        enqueue_delivery(delivery_id, retry_in.total_seconds(), attempt=attempt + 1)
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
    return delivery.purge(CHANNEL, older_than)
