"""The proxy's gauge, computed when `/metrics` is read (the factory lists it in `metrics.refresh_gauges_with`)."""
from __future__ import annotations

import sqlalchemy as sa

from .. import metrics
from ..database import db
from .models import ProxySession


def refresh_session_gauges() -> None:
    """`active_sessions`: open proxy sessions."""
    metrics.active_sessions.set(db.session.scalar(
        sa.select(sa.func.count()).select_from(ProxySession).where(ProxySession.is_active.is_(True))
    ))
