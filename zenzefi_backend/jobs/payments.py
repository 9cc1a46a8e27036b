"""Payment sweeps (run by RQ workers inside an app context)."""
from __future__ import annotations

from ..payments.services import expire_pending_payments


def expire_pending_payments_job() -> dict[str, int]:
    """Pending payments older than 24 h become `expired`; idempotent, safe on several workers at once."""
    return {"expired": expire_pending_payments()}
