"""Write business events to the outbox in the caller's DB transaction (the transactional outbox)."""
from __future__ import annotations

import uuid
from typing import Any

from ..database import db
from .models import EVENT_TYPES, OutboxEvent


def emit(event_type: str, user_id: uuid.UUID | None, **payload: Any) -> OutboxEvent:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    event = OutboxEvent(event_type=event_type, user_id=user_id, payload=payload)
    db.session.add(event)
    return event
