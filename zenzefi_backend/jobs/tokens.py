"""Token sweeps (run by RQ workers inside an app context)."""
from __future__ import annotations

from ..tokens.expiry import expire_tokens


def expire_tokens_job() -> dict[str, int]:
    """Expired tokens: `token.expired`, session ended, cache cleared — once per token, on any number of workers."""
    return {"expired": expire_tokens()}
