from __future__ import annotations

import uuid

from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required

from ..idempotency import idempotent
from ..openapi import BEARER, IDEMPOTENCY_KEY, PUBLIC, Blueprint, errors
from ..pagination import page_schema
from . import services
from .pricing import price_list
from .schemas import (
    IssuedTokenSchema,
    MyTokensQuerySchema,
    PriceListSchema,
    PricesQuerySchema,
    PurchaseSchema,
    RevokeResultSchema,
    TokenSchema,
)

blp = Blueprint("tokens", __name__, url_prefix="/api/v1/tokens", description="Access tokens: buy, list, revoke.")


@blp.route("/prices")
class Prices(MethodView):
    @blp.doc(security=PUBLIC)
    @blp.arguments(PricesQuerySchema, location="query")
    @blp.response(200, PriceListSchema)
    @errors(422)
    def get(self, query):
        """Token prices in ZNC, optionally converted to `RUB`, `USD` or `EUR`"""
        return {"base": "ZNC", "items": price_list(query.get("currency"))}


@blp.route("/purchase")
class Purchase(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER, parameters=[IDEMPOTENCY_KEY])
    @blp.arguments(PurchaseSchema)
    @idempotent
    @blp.response(201, IssuedTokenSchema)
    @errors(401, 402, 409, 422)
    def post(self, body):
        """Buy a token; the response carries its secret, shown only this once

        402 with `required` and `available` when the balance is short; nothing changes then.
        """
        return services.purchase_token(current_user, body["duration_hours"], body["scope"])


@blp.route("/my-tokens")
class MyTokens(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.arguments(MyTokensQuerySchema, location="query")
    @blp.response(200, page_schema(TokenSchema))
    @errors(401, 422)
    def get(self, query):
        """Own tokens, newest first (by default only those not revoked and not expired); no secrets"""
        return services.list_tokens(current_user, active_only=query["active_only"], limit=query["limit"],
                                    offset=query["offset"])


@blp.route("/<uuid:token_id>")
class Token(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.response(200, TokenSchema)
    @errors(401, 404)
    def get(self, token_id: uuid.UUID):
        """One of your tokens (404 for anyone else's)"""
        return services.get_own_token(current_user, token_id)

    @blp.doc(security=BEARER)
    @blp.response(200, RevokeResultSchema)
    @errors(401, 404, 409)
    def delete(self, token_id: uuid.UUID):
        """Revoke a token for a pro-rata refund of what was paid

        Refund = paid × unused / duration, rounded down to 0.01 (the full price if never activated).
        404 if not yours or already revoked; 409 if expired.
        """
        return services.revoke_token(current_user, token_id)
