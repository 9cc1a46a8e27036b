"""Payment sweeps (run by RQ workers inside an app context)."""
from __future__ import annotations

from ..payments.services import expire_pending_payments, reconcile_pending_payments


def expire_pending_payments_job() -> dict[str, int]:
    """Pending payments older than 24 h become `expired`; idempotent, safe on several workers at once."""
    return {"expired": expire_pending_payments()}


def reconcile_payments_job() -> dict[str, int]:
    """Ask the provider about payments pending > 10 min and settle what it says; safe on several workers at once."""
    return reconcile_pending_payments()
