from __future__ import annotations

from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required

from ..openapi import BEARER, PUBLIC, Blueprint, errors
from ..pagination import page_schema
from ..tokens.pricing import rates
from . import services
from .schemas import BalanceSchema, RatesSchema, TransactionSchema, TransactionsQuerySchema

blp = Blueprint("currency", __name__, url_prefix="/api/v1/currency", description="ZNC balance, ledger and rates.")


@blp.route("/balance")
class Balance(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.response(200, BalanceSchema)
    @errors(401)
    def get(self):
        """Your ZNC balance"""
        return {"balance": current_user.balance, "currency": "ZNC"}


@blp.route("/transactions")
class Transactions(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.arguments(TransactionsQuerySchema, location="query")
    @blp.response(200, page_schema(TransactionSchema))
    @errors(401, 422)
    def get(self, query):
        """Your ledger, newest first"""
        return services.transactions_of(current_user.id, query.get("transaction_type"), query["limit"],
                                        query["offset"])


@blp.route("/rates")
class Rates(MethodView):
    @blp.doc(security=PUBLIC)
    @blp.response(200, RatesSchema)
    def get(self):
        """How much one ZNC costs in each payment currency"""
        return {"base": "ZNC", "rates": rates()}
