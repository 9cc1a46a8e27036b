"""Housekeeping sweeps: rows nobody needs any more. Plain deletes by age, so any number of workers may run
them at once (a row deleted by one is simply not there for the other)."""
from __future__ import annotations

from ..accounts.services import purge_expired_revocations
from ..clock import now
from ..idempotency import purge_expired as purge_expired_idempotency_keys


def purge_expired_job() -> dict[str, int]:
    """Idempotency keys older than 24 h and revocations of JWTs that have expired anyway."""
    moment = now()
    return {
        "idempotency_keys": purge_expired_idempotency_keys(moment),
        "revoked_jwts": purge_expired_revocations(moment),
    }
