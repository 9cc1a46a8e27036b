"""Audit retention: a sweep that owns its transactions (it commits per batch), so it is no piece of the audit
writer's (`audit.services`)."""
from __future__ import annotations

from datetime import datetime

from ..database import purge_in_batches
from .models import AuditLog


def purge_audit_logs(older_than: datetime) -> int:
    """Delete the rows created before `older_than` (see `purge_in_batches`)."""
    return purge_in_batches(AuditLog, AuditLog.created_at < older_than)
