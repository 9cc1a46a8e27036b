"""The tokens' gauge, computed when `/metrics` is read (the factory lists it in `metrics.refresh_gauges_with`)."""
from __future__ import annotations

import sqlalchemy as sa

from .. import metrics
from ..clock import now
from ..database import db
from .models import AccessToken


def refresh_token_gauges() -> None:
    """`active_tokens`: tokens activated, not revoked and not expired (a never-used token is not counted)."""
    moment = now()
    metrics.active_tokens.set(db.session.scalar(
        sa.select(sa.func.count()).select_from(AccessToken)
        .where(AccessToken.revoked_at.is_(None), AccessToken.activated_at.is_not(None),
               AccessToken.expires_at > moment)
    ))
