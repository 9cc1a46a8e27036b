from __future__ import annotations

from marshmallow import fields, validate

from ..schemas import BaseSchema

STATUSES = ("healthy", "degraded", "unhealthy")


class HealthSchema(BaseSchema):
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    timestamp = fields.String(required=True, metadata={"description": "When the cached check ran (ISO 8601)"})
    message = fields.String()


class ProbeSchema(BaseSchema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String())


class CheckSchema(BaseSchema):
    status = fields.String(required=True, validate=validate.OneOf(("up", "down")))
    latency_ms = fields.Float(allow_none=True)
    error = fields.String(allow_none=True)


class QueueSchema(BaseSchema):
    name = fields.String(required=True)
    depth = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    scheduled = fields.Integer(required=True)


class DetailedHealthSchema(BaseSchema):
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    timestamp = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.Nested(CheckSchema), required=True)
    queues = fields.List(fields.Nested(QueueSchema), required=True)
    workers = fields.Integer(required=True)
    shared_report = fields.Dict(allow_none=True,
                                metadata={"description": "Last report published by any process (worker job)"})
    queue_error = fields.String(allow_none=True)
