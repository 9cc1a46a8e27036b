"""Outgoing webhook delivery (queue "webhooks")."""
from __future__ import annotations

import uuid

from ..notifications.webhooks import deliver


def deliver_webhook_job(delivery_id: str) -> str:
    """One attempt at one delivery; a duplicate or late job finds nothing to do."""
    return deliver(uuid.UUID(delivery_id))
