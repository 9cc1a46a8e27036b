from __future__ import annotations

import uuid

from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required

from ..idempotency import idempotent
from ..openapi import BEARER, IDEMPOTENCY_KEY, PUBLIC, Blueprint, errors
from ..pagination import page_schema
from . import renewal, services
from .pricing import price_list
from .schemas import (
    AutoRenewalSchema,
    AutoRenewalStateSchema,
    IssuedTokenSchema,
    MyTokensQuerySchema,
    PriceListSchema,
    PricesQuerySchema,
    PurchaseSchema,
    RevokeResultSchema,
    TokenSchema,
)

blp = Blueprint("tokens", __name__, url_prefix="/api/v1/tokens", description="Access tokens: buy, list, revoke.")
renewal_blp = Blueprint("auto-renewal", __name__, url_prefix="/api/v1/users/me",
                        description="Auto-renewal: a replacement token bought shortly before a token expires.")

AUTO_RENEWAL_RULES = """
An hourly job looks for tokens that are activated, not revoked, not renewed yet, and **expire within 24 h**
(`now < expires_at <= now + 24 h` when the run starts), of an active user with auto-renewal on. For each such
token it buys exactly **one** replacement — once per token, however often and on however many workers the
job runs — with the `duration_hours` and `scope` chosen here, at the price of the day, exactly as
`POST /api/v1/tokens/purchase` would (a `purchase` ledger entry, `token.purchased` with `source:
"auto_renewal"`, referral bonus, `balance.low`). Tokens that were never activated are not renewed, and a
token that expired before a run could renew it is not renewed either.

The replacement is `ready`: its clock starts with its first proxied request. **Its secret is e-mailed** to
the account's address (the `auto_renewal_done` e-mail, sent even with `email_notifications=false`: it is the
purchase's receipt and the only place the secret is ever shown); it is listed in `/tokens/my-tokens` with
`source: "auto_renewal"`, without the secret.

**Insufficient balance**: nothing is charged, auto-renewal is turned **off**, and the user gets one
`auto_renewal_failed` e-mail (unless opted out of notifications). Top up and turn it on again: a token still
within its last 24 h is then renewed by the next run.
"""


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


@renewal_blp.route("/auto-renewal")
class AutoRenewal(MethodView):
    decorators = [jwt_required()]

    @renewal_blp.doc(security=BEARER, description=AUTO_RENEWAL_RULES)
    @renewal_blp.response(200, AutoRenewalStateSchema)
    @errors(401)
    def get(self):
        """Your auto-renewal choice (never set: off, 24 h, `full`) and today's cost of one renewal"""
        return renewal.settings_of(current_user)

    @renewal_blp.doc(security=BEARER, description=AUTO_RENEWAL_RULES)
    @renewal_blp.arguments(AutoRenewalSchema)
    @renewal_blp.response(200, AutoRenewalStateSchema)
    @errors(401, 422)
    def put(self, body):
        """Set auto-renewal: all of `enabled`, `duration_hours` (a priced duration) and `scope` are required"""
        return renewal.update_settings(current_user, body["enabled"], body["duration_hours"], body["scope"])
