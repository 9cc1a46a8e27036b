from __future__ import annotations

import uuid

from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required

from ..idempotency import idempotent
from ..openapi import BEARER, IDEMPOTENCY_KEY, PUBLIC, Blueprint, errors
from ..pagination import page_schema
from . import gifts, renewal, services
from .pricing import price_list
from .schemas import (
    AutoRenewalSchema,
    AutoRenewalStateSchema,
    GiftResultSchema,
    GiftSchema,
    IssuedTokenSchema,
    MyTokensQuerySchema,
    PriceListSchema,
    PricesQuerySchema,
    PurchaseSchema,
    RevokeResultSchema,
    TokenSchema,
)

blp = Blueprint("tokens", __name__, url_prefix="/api/v1/tokens",
                description="Access tokens: buy, list, revoke, gift.")
renewal_blp = Blueprint("auto-renewal", __name__, url_prefix="/api/v1/users/me",
                        description="Auto-renewal: a replacement token bought shortly before a token expires.")

AUTO_RENEWAL_RULES = """
An hourly job looks for tokens that are activated, not revoked, not renewed yet, and **expire within 24 h**
(`now < expires_at <= now + 24 h` when the run starts), of an active user with auto-renewal on. For each such
token it buys exactly **one** replacement — once per token, however often and on however many workers the
job runs — with the `duration_hours` and `scope` chosen here, at the price of the day, exactly as
`POST /api/v1/tokens/purchase` would (a `purchase` ledger entry, `token.purchased` with `source:
"auto_renewal"`, referral bonus, `balance.low`). Tokens that were never activated are not renewed, a
token that expired before a run could renew it is not renewed either, and a token you gifted is never renewed.

The replacement is `ready`: its clock starts with its first proxied request. **Its secret is e-mailed** to
the account's address (the `auto_renewal_done` e-mail, sent even with `email_notifications=false`: it is the
purchase's receipt and the only place the secret is ever shown); it is listed in `/tokens/my-tokens` with
`source: "auto_renewal"`, without the secret.

**Insufficient balance**: nothing is charged, auto-renewal is turned **off**, and the user gets one
`auto_renewal_failed` e-mail (unless opted out of notifications). Top up and turn it on again: a token still
within its last 24 h is then renewed by the next run.
"""

GIFT_RULES = f"""
Only **your own** token (anyone else's, or an unknown id: 404) that was **never used**: `ready` — not activated,
not revoked, not gifted before (otherwise 409, with the reason in `message`).

- The secret is **rotated**: the old one stops working at once (also at the proxy, cached or not, on the very
  next request), and any proxy session of yours on the token is closed, freeing the device for the recipient.
- The new secret is e-mailed **only** to `recipient_email` (the `gift_received` e-mail, sent even when either
  side turned notifications off). It is never in this response, and the database keeps only its hash (the
  e-mail body is sealed until sent, then dropped).
- The token stays yours in your token list (with `gifted_to_email` and `gifted_at`; the proxy still reports
  your `user_id`), but it can **no longer be revoked for a refund** (`DELETE` → 409) and is never auto-renewed.
  A superuser can still revoke it (without refund).
- `recipient_email` is checked like a registration e-mail (syntax only, no DNS lookup) and lower-cased. It
  need not belong to a Zenzefi account. **Your own address is allowed**: it rotates the secret and mails the new
  one to you — the token then counts as gifted (no refund) like any other gift.
- At most **{gifts.GIFTS_PER_WINDOW} gifts in any rolling 24 h** per user (counted from `gifted_at`, exact under
  concurrency); over it → 429 with `Retry-After`: the seconds until your oldest gift in the window leaves it.
- No `Idempotency-Key`: no money moves, and a repeated request is answered 409 (already gifted).
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
        404 if not yours or already revoked; 409 if expired or gifted (a gifted token is not refundable).
        """
        return services.revoke_token(current_user, token_id)


@blp.route("/<uuid:token_id>/gift")
class Gift(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER, description=GIFT_RULES)
    @blp.arguments(GiftSchema)
    @blp.response(200, GiftResultSchema)
    @errors(401, 404, 409, 422, 429)
    def post(self, body, token_id: uuid.UUID):
        """Gift an unused token: its secret is rotated and the new one e-mailed to the recipient"""
        return gifts.gift_token(current_user, token_id, body["recipient_email"])


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
