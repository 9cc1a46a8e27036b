"""The accounts' gauge, computed when `/metrics` is read (the factory lists it in `metrics.refresh_gauges_with`)."""
from __future__ import annotations

import sqlalchemy as sa

from .. import metrics
from ..database import db
from .models import User


def refresh_user_gauges() -> None:
    """`total_users`: registered users."""
    metrics.total_users.set(db.session.scalar(sa.select(sa.func.count()).select_from(User)))
