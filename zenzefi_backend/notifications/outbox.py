"""Write business events to the outbox in the caller's DB transaction (the transactional outbox).

The relay (every 60 s) delivers them; a commit that wrote events also asks for a relay run at once, so
deliveries are prompt when Redis and the workers are up, and merely late (never lost) when they are not.

At most one asked-for run waits in the queue at a time, and none is skipped: a flag in Redis says "a run is
queued"; a commit sets it and enqueues a run only if it was not set, and the run clears it before it reads the
outbox. A commit that found the flag set is therefore seen by the queued run, and the last commit of a burst is
relayed within the time one run takes — never left for the next minute. The flag expires, so a run lost with
its Redis data stops no later nudge.

Everything here is a piece of the caller's transaction: nothing commits or rolls back (forgetting relayed events,
a sweep that commits per batch, is the relay's: `relay.purge_dispatched_events`).
"""
from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

from blinker import Namespace
from flask import current_app, has_app_context
from redis.exceptions import RedisError

from ..database import after_commit, db
from ..extensions import get_queue, get_redis
from .models import EVENT_TYPES, OutboxEvent

log = logging.getLogger(__name__)

NUDGE_KEY = "zenzefi:outbox:relay-queued"
NUDGE_EXPIRES_SECONDS = 30  # a queued run lost with Redis's data holds up later nudges no longer than this
RELAY_JOB = "zenzefi_backend.jobs.notifications.relay_new_events_job"  # by name: the worker imports it, not us
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
    redis = get_redis()
    try:
        if redis.set(NUDGE_KEY, 1, nx=True, ex=NUDGE_EXPIRES_SECONDS):
            try:
                get_queue("default").enqueue(RELAY_JOB, result_ttl=0)
            except RedisError:
                with contextlib.suppress(RedisError):
                    redis.delete(NUDGE_KEY)
                raise
    except RedisError:
        log.warning("cannot nudge the outbox relay; it runs every minute anyway")


def take_nudge() -> None:
    """Called by a relay run before it reads the outbox: commits from now on ask for a run of their own."""
    with contextlib.suppress(RedisError):
        get_redis().delete(NUDGE_KEY)
