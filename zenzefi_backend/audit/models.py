from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import now
from ..database import UTCDateTime, UUIDPrimaryKey, db


class AuditLog(UUIDPrimaryKey, db.Model):
    __tablename__ = "audit_logs"

    actor_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    action: Mapped[str] = mapped_column(sa.String(64), nullable=False, index=True)
    resource_type: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    resource_id: Mapped[str | None] = mapped_column(sa.String(64))
    details: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False, default=dict)
    ip_address: Mapped[str | None] = mapped_column(sa.String(64))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=now, index=True)
