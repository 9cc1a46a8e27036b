"""What the proxy's gauge shows (the factory lists it in `metrics.compute_gauges_with`)."""
from __future__ import annotations

import sqlalchemy as sa

from .models import ProxySession


def count_open_sessions() -> sa.Select:
    """`active_sessions`: open proxy sessions."""
    return sa.select(sa.func.count()).select_from(ProxySession).where(ProxySession.is_active.is_(True))
