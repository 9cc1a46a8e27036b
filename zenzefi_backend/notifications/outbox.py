"""Write business events to the outbox in the caller's DB transaction (the transactional outbox).

The relay (every 60 s) delivers them; a commit that wrote events also nudges a relay run at once, so
deliveries are prompt when Redis and the workers are up, and merely late (never lost) when they are not.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from blinker import Namespace
from flask import current_app, has_app_context
from redis.exceptions import RedisError

from ..database import after_commit, db, purge_in_batches
from .models import EVENT_TYPES, OutboxEvent

log = logging.getLogger(__name__)

NUDGE_KEY = "zenzefi:outbox:nudge"
NUDGE_DEBOUNCE_MS = 1000  # at most one extra relay run per second, however many commits wrote events
RELAY_JOB = "zenzefi_backend.jobs.notifications.relay_outbox_job"  # by name: the worker imports it, not us
# Sent (with the app as sender) after a commit that wrote events, on the embedded default.
relay_wanted = Namespace().signal("outbox-relay-wanted")


def emit(event_type: str, user_id: uuid.UUID | None, **payload: Any) -> OutboxEvent:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    outbox_event = OutboxEvent(event_type=event_type, user_id=user_id, payload=payload)
    db.session.add(outbox_event)
    after_commit(nudge_relay, once_as="outbox relay nudge")
    return outbox_event


def nudge_relay() -> None:
    """Ask for a relay run now: a worker's job where jobs run in workers; on the embedded default (inline jobs,
    which cannot run inside a commit) whoever runs the schedule in this process listens to `relay_wanted`."""
    if not has_app_context():
        return
    if current_app.config["EMBEDDED"]:
        relay_wanted.send(current_app._get_current_object())
        return
    from ..extensions import get_queue, get_redis

    try:
        if get_redis().set(NUDGE_KEY, 1, nx=True, px=NUDGE_DEBOUNCE_MS):
            get_queue("default").enqueue(RELAY_JOB, result_ttl=0)
    except RedisError:
        log.warning("cannot nudge the outbox relay; it runs every minute anyway")


def purge_dispatched_events(older_than: datetime) -> int:
    """Forget relayed events created before `older_than`."""
    return purge_in_batches(OutboxEvent, OutboxEvent.dispatched_at.is_not(None), OutboxEvent.created_at < older_than)
