from __future__ import annotations

from marshmallow import fields, validate

from ..pagination import PageQuerySchema
from ..schemas import BaseSchema, MoneyField
from .models import TRANSACTION_TYPES


class BalanceSchema(BaseSchema):
    balance = MoneyField(required=True)
    currency = fields.String(required=True, metadata={"example": "ZNC"})


class TransactionSchema(BaseSchema):
    id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    amount = MoneyField(required=True, metadata={"description": "Signed: negative for debits"})
    balance_after = MoneyField(required=True)
    transaction_type = fields.String(required=True, validate=validate.OneOf(TRANSACTION_TYPES))
    description = fields.String(required=True)
    reference_type = fields.String(allow_none=True)
    reference_id = fields.String(allow_none=True)
    created_at = fields.DateTime(required=True)


class TransactionsQuerySchema(PageQuerySchema):
    transaction_type = fields.String(validate=validate.OneOf(TRANSACTION_TYPES))


class RatesSchema(BaseSchema):
    base = fields.String(required=True)
    rates = fields.Dict(keys=fields.String(), values=MoneyField(), required=True)


class MismatchSchema(BaseSchema):
    user_id = fields.String(required=True)
    balance = MoneyField(required=True)
    ledger_sum = MoneyField(required=True)


class LedgerVerificationSchema(BaseSchema):
    ok = fields.Boolean(required=True)
    users_checked = fields.Integer(required=True)
    mismatches = fields.List(fields.Nested(MismatchSchema), required=True)
