"""Plan expiry (run hourly by RQ workers inside an app context)."""
from __future__ import annotations

from ..plans.services import expire_plans


def expire_plans_job() -> dict[str, int]:
    """Paid plans past their expiry fall back to free; idempotent, safe on several workers at once."""
    return {"expired": expire_plans()}
