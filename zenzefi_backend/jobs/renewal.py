"""Auto-renewal (SPEC §3.9, hourly; run by RQ workers inside an app context)."""
from __future__ import annotations

from ..tokens.renewal import renew_expiring_tokens


def auto_renewal_job() -> dict[str, int]:
    """One replacement per token expiring within 24 h of a user with auto-renewal on — once per token, on any
    number of workers; on a short balance auto-renewal is turned off and the user e-mailed."""
    return renew_expiring_tokens()
