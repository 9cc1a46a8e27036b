"""What the accounts' gauge shows (the factory lists it in `metrics.compute_gauges_with`)."""
from __future__ import annotations

import sqlalchemy as sa

from .models import User


def count_users() -> sa.Select:
    """`total_users`: registered users."""
    return sa.select(sa.func.count()).select_from(User)
