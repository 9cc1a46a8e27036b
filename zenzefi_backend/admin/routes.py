"""Superuser routes: thin wrappers over the domain services."""
from __future__ import annotations

import uuid

from flask.views import MethodView
from flask_jwt_extended import current_user

from ..accounts.auth import superuser_required
from ..idempotency import idempotent
from ..ledger import services as ledger
from ..ledger.schemas import LedgerVerificationSchema, TransactionSchema
from ..openapi import BEARER, IDEMPOTENCY_KEY, Blueprint, errors
from .schemas import BalanceAdjustmentSchema

blp = Blueprint("admin", __name__, url_prefix="/api/v1/admin", description="Superuser operations.")


@blp.route("/users/<uuid:user_id>/balance-adjustments")
class BalanceAdjustments(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER, parameters=[IDEMPOTENCY_KEY])
    @blp.arguments(BalanceAdjustmentSchema)
    @idempotent
    @blp.response(201, TransactionSchema)
    @errors(401, 403, 404, 409, 422)
    def post(self, body, user_id: uuid.UUID):
        """Credit or debit a user's balance (an `adjustment` entry); never below zero (409)"""
        return ledger.adjust(current_user, user_id, body["amount"], body["reason"])


@blp.route("/ledger/verify")
class LedgerVerify(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.response(200, LedgerVerificationSchema)
    @errors(401, 403)
    def get(self):
        """Check `balance == sum(ledger)` and `balance >= 0` for every user"""
        return ledger.verify()
