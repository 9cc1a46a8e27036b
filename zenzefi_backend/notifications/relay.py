"""The outbox relay: turns business events into webhook deliveries and e-mails, and hands them to the workers.

Each event is relayed once: on PostgreSQL `FOR UPDATE SKIP LOCKED` hands it to one relay, and everywhere
the deliveries and e-mails it causes are deduplicated by (endpoint, message id) and by the e-mail's dedupe
key, in the same transaction that marks it dispatched; the rows it made are enqueued right after that commit.
A commit that wrote events asks for a run at once (outbox.nudge_relay); the run every 60 s (SPEC §4) also sweeps:
it enqueues every due attempt, which is what makes a Redis or worker outage harmless — the rows wait in the
database until a worker runs — and each attempt is enqueued once however often it is asked for (delivery.py).
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from ..accounts.models import User
from ..clock import now
from ..database import db, purge_in_batches
from ..ledger.services import LOW_BALANCE_THRESHOLD
from ..money import format_amount
from . import delivery, webhooks
from .email import CHANNEL as EMAIL_CHANNEL
from .email import enqueue_email, queue_email
from .models import OutboxEvent
from .outbox import take_nudge

log = logging.getLogger(__name__)

BATCH_SIZE = 200
LOW_BALANCE_QUIET = timedelta(hours=24)


def _claim_low_balance_notice(user_id: uuid.UUID, moment: datetime) -> bool:
    """At most one low-balance e-mail per user per 24 h, whichever relay gets here first."""
    return db.session.execute(
        sa.update(User)
        .where(User.id == user_id, sa.or_(User.low_balance_notified_at.is_(None),
                                          User.low_balance_notified_at <= moment - LOW_BALANCE_QUIET))
        .values(low_balance_notified_at=moment)
        .returning(User.id)
        .execution_options(synchronize_session=False)
    ).first() is not None


def _balance_low(event: OutboxEvent, user: User) -> tuple[str, dict] | None:
    if not user.email_notifications or not _claim_low_balance_notice(user.id, now()):
        return None
    return "balance_low", {"balance": event.payload["balance"], "threshold": format_amount(LOW_BALANCE_THRESHOLD)}


def _referral_bonus(event: OutboxEvent, user: User) -> tuple[str, dict] | None:
    return "referral_bonus", {"referee_username": event.payload["referee_username"],
                              "bonus_amount": event.payload["bonus_amount"]}


def _payment_receipt(event: OutboxEvent, user: User) -> tuple[str, dict] | None:
    payload = event.payload
    paid = f"  Paid:      {payload['amount']} {payload['currency']}\n" if "currency" in payload else ""
    return "payment_receipt", {
        "amount_znc": payload["amount_znc"], "payment_lines": paid,
        "reference": payload.get("payment_id") or payload.get("transaction_id") or str(event.id),
        "paid_at": event.created_at.isoformat(), "balance_after": payload["balance"],
    }


# Which events e-mail their user. The rest reach users through their webhooks only.
EMAILS: dict[str, Callable[[OutboxEvent, User], tuple[str, dict] | None]] = {
    "balance.low": _balance_low,
    "referral.bonus_awarded": _referral_bonus,
    "balance.topped_up": _payment_receipt,
}


def _email_for(event: OutboxEvent) -> uuid.UUID | None:
    rule = EMAILS.get(event.event_type)
    user = db.session.get(User, event.user_id) if rule and event.user_id else None
    if user is None or not user.is_active:
        return None
    email = rule(event, user)
    if email is None:
        return None
    kind, context = email
    message = queue_email(kind, user.email, {"username": user.username, **context}, user_id=user.id,
                          dedupe_key=f"event:{event.id}", opted_in=user.email_notifications)
    return None if message is None else message.id


def _pending_events(skip: set[uuid.UUID]) -> sa.Select:
    statement = (
        sa.select(OutboxEvent).where(OutboxEvent.dispatched_at.is_(None))
        .order_by(OutboxEvent.created_at).limit(BATCH_SIZE)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders no lock clause
    )
    return statement.where(OutboxEvent.id.not_in(skip)) if skip else statement


@dataclass
class Relayed:
    """What a relay run did: events relayed, and the deliveries and e-mails they made (enqueued already)."""

    events: int = 0
    deliveries: list[uuid.UUID] = field(default_factory=list)
    emails: list[uuid.UUID] = field(default_factory=list)


def _relay(events: list[OutboxEvent]) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Fan these events out and mark them dispatched, in the caller's transaction; (deliveries, e-mails) made."""
    endpoints = webhooks.active_endpoints({event.user_id for event in events if event.user_id is not None})
    deliveries: list[uuid.UUID] = []
    emails: list[uuid.UUID] = []
    for event in events:
        deliveries += webhooks.add_deliveries(event, endpoints.get(event.user_id, []))
        email_id = _email_for(event)
        if email_id is not None:
            emails.append(email_id)
        event.dispatched_at = now()
    return deliveries, emails


def relay_events() -> Relayed:
    """Fan every undispatched event out to webhook deliveries and e-mails, and enqueue their first attempts.

    A batch is relayed in one savepoint; if that fails, one event at a time: an event that cannot be relayed (a bug,
    bad data) is logged, counted in `attempts` and left for the next run, without holding up the others."""
    relayed = Relayed()
    broken: set[uuid.UUID] = set()
    while True:
        events = db.session.scalars(_pending_events(broken)).all()
        try:
            with db.session.begin_nested():
                deliveries, emails = _relay(events)
        except Exception:
            deliveries, emails = [], []
            for event in events:
                try:
                    with db.session.begin_nested():
                        made, mailed = _relay([event])
                    deliveries += made
                    emails += mailed
                except Exception:
                    log.exception("cannot relay an outbox event", extra={"event_id": str(event.id)})
                    broken.add(event.id)
        for event in events:
            event.attempts += 1
        db.session.commit()
        for delivery_id in deliveries:
            webhooks.enqueue_delivery(delivery_id)
        for email_id in emails:
            enqueue_email(email_id)
        relayed.events += sum(1 for event in events if event.id not in broken)
        relayed.deliveries += deliveries
        relayed.emails += emails
        if len(events) < BATCH_SIZE:
            return relayed


def enqueue_due(moment: datetime | None = None) -> dict[str, int]:
    """The sweep: hand every due e-mail and delivery attempt to the workers, each attempt once (delivery.py)."""
    moment = moment or now()
    return {"emails": delivery.enqueue_due(EMAIL_CHANNEL, moment),
            "deliveries": delivery.enqueue_due(webhooks.CHANNEL, moment)}


def relay_new_events() -> dict[str, int]:
    """The run a commit asked for: the new events only."""
    take_nudge()  # before reading: a commit from now on asks for (and gets) a run of its own
    relayed = relay_events()
    return {"events": relayed.events, "deliveries": len(relayed.deliveries), "emails": len(relayed.emails)}


def relay_outbox() -> dict[str, int]:
    """The run every 60 s: the new events (a queued asked-for run still runs), then the sweep."""
    return {"events": relay_events().events, **enqueue_due()}


def purge_dispatched_events(older_than: datetime) -> int:
    """Forget relayed events created before `older_than` (a sweep: commits per batch, see `purge_in_batches`)."""
    return purge_in_batches(OutboxEvent, OutboxEvent.dispatched_at.is_not(None), OutboxEvent.created_at < older_than)
