"""The audit writer: rows join the caller's transaction, so they commit (or roll back) with the change.
`record_outcome` writes one business outcome every way it is told (audit row, outbox events, metrics) in one
call. Also the audit trail as superusers read it. Everything here is a piece: nothing commits or rolls back (the
retention sweep, which commits per batch, is `audit.retention`)."""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import has_request_context, request

from .. import metrics
from ..database import db
from ..notifications.outbox import emit
from ..pagination import paginate
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


def record_outcome(
    action: str,
    *,
    actor_id: uuid.UUID | None,
    resource_type: str,
    resource_id: object,
    details: dict[str, Any],
    events: Iterable[tuple[str, uuid.UUID | None, dict[str, Any]]] = (),
    counts: Iterable[tuple[Any, int | Any, dict[str, str]]] = (),
) -> AuditLog:
    """What happened, in the caller's transaction: the outbox `events` (event type, user id, payload), the audit
    row, and the metric `counts` (counter, amount, labels), which count when the transaction commits."""
    for event_type, user_id, payload in events:
        emit(event_type, user_id, **payload)
    entry = record(action, actor_id=actor_id, resource_type=resource_type, resource_id=resource_id, details=details)
    for counter, amount, labels in counts:
        metrics.count(counter, amount, **labels)
    return entry


def audit_logs(*, actor_id: uuid.UUID | None = None, action: str | None = None, resource_type: str | None = None,
               since: datetime | None = None, limit: int, offset: int) -> dict[str, Any]:
    """The trail, newest first; every filter is an exact match (`since` inclusive)."""
    statement = sa.select(AuditLog).order_by(AuditLog.created_at.desc(), AuditLog.id.desc())
    if actor_id is not None:
        statement = statement.where(AuditLog.actor_id == actor_id)
    if action:
        statement = statement.where(AuditLog.action == action)
    if resource_type:
        statement = statement.where(AuditLog.resource_type == resource_type)
    if since is not None:
        statement = statement.where(AuditLog.created_at >= since)
    return paginate(statement, limit, offset)
