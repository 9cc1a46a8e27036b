"""E-mail delivery (queue "emails")."""
from __future__ import annotations

import uuid

from ..notifications.email import send_email


def send_email_job(email_id: str) -> str:
    """One attempt at one queued e-mail; a duplicate or late job finds nothing to do."""
    return send_email(uuid.UUID(email_id))
