"""What the tokens' gauge shows (the factory lists it in `metrics.compute_gauges_with`)."""
from __future__ import annotations

import sqlalchemy as sa

from ..clock import now
from .models import AccessToken


def count_tokens_in_use() -> sa.Select:
    """`active_tokens`: tokens activated, not revoked and not expired (a never-used token is not counted)."""
    return sa.select(sa.func.count()).select_from(AccessToken).where(AccessToken.in_use_at(now()))
