"""`{items, total, limit, offset}` lists with `limit` (1–100, default 50) and `offset` (0–1,000,000,000)."""
from __future__ import annotations

from functools import cache
from typing import Any

import sqlalchemy as sa
from marshmallow import Schema, fields, validate

from .database import db
from .schemas import BaseSchema

MAX_OFFSET = 1_000_000_000


class PageQuerySchema(BaseSchema):
    class Meta(BaseSchema.Meta):
        unknown = "exclude"

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=100))
    # Capped so that no database is ever asked for an offset beyond its integer range (that would be a 500).
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_OFFSET))


@cache
def page_schema(item_schema: type[Schema]) -> type[Schema]:
    name = item_schema.__name__.removesuffix("Schema") + "PageSchema"
    return type(name, (BaseSchema,), {
        "items": fields.List(fields.Nested(item_schema), required=True),
        "total": fields.Integer(required=True),
        "limit": fields.Integer(required=True),
        "offset": fields.Integer(required=True),
    })


def paginate(statement: sa.Select, limit: int, offset: int) -> dict[str, Any]:
    """`statement` must already be ordered (newest first unless stated otherwise)."""
    total = db.session.scalar(sa.select(sa.func.count()).select_from(statement.order_by(None).subquery()))
    items = db.session.scalars(statement.limit(limit).offset(offset)).all()
    return {"items": items, "total": total, "limit": limit, "offset": offset}
