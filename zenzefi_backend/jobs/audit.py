"""Audit retention (daily, SPEC §4): rows older than AUDIT_RETENTION_DAYS are deleted."""
from __future__ import annotations

from datetime import timedelta

from flask import current_app

from ..audit.retention import purge_audit_logs
from ..clock import now


def audit_retention() -> dict[str, int]:
    """Idempotent and safe on several workers at once (see `purge_audit_logs`)."""
    cutoff = now() - timedelta(days=current_app.config["AUDIT_RETENTION_DAYS"])
    return {"purged": purge_audit_logs(cutoff)}
