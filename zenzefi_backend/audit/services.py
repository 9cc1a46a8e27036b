"""The audit writer: rows join the caller's transaction, so they commit (or roll back) with the change."""
from __future__ import annotations

import uuid
from typing import Any

from flask import has_request_context, request

from ..database import db
from .models import AuditLog


def record(
    action: str,
    *,
    actor_id: uuid.UUID | None = None,
    resource_type: str | None = None,
    resource_id: object | None = None,
    details: dict[str, Any] | None = None,
) -> AuditLog:
    entry = AuditLog(
        actor_id=actor_id,
        action=action,
        resource_type=resource_type,
        resource_id=None if resource_id is None else str(resource_id),
        details=details or {},
    )
    if has_request_context():
        entry.ip_address = request.remote_addr
        entry.user_agent = (request.user_agent.string or "")[:512] or None
    db.session.add(entry)
    return entry
