from __future__ import annotations

import uuid

from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required

from ..accounts.auth import require_superuser, superuser_required
from ..idempotency import idempotent
from ..openapi import BEARER, IDEMPOTENCY_KEY, PUBLIC, Blueprint, errors
from . import services
from .schemas import (
    BundleCreateSchema,
    BundleListQuerySchema,
    BundleListSchema,
    BundlePurchaseResultSchema,
    BundlePurchaseSchema,
    BundleSchema,
    BundleUpdateSchema,
)

blp = Blueprint("bundles", __name__, url_prefix="/api/v1/bundles",
                description="Bundles: several tokens of one duration at a discount.")

OPTIONAL_BEARER = [{}, *BEARER]


@blp.route("")
class Bundles(MethodView):
    @blp.doc(security=OPTIONAL_BEARER)
    @blp.arguments(BundleListQuerySchema, location="query")
    @blp.response(200, BundleListSchema)
    @errors(401, 403, 422)
    def get(self, query):
        """Active bundles, cheapest first (by `total_price`)

        Public. `include_inactive=true` also lists deactivated bundles and needs a superuser's JWT:
        401 without one, 403 for anyone else (the request is refused rather than silently narrowed).
        """
        if query["include_inactive"]:
            require_superuser()
        return {"items": services.list_bundles(include_inactive=query["include_inactive"])}

    @superuser_required
    @blp.doc(security=BEARER)
    @blp.arguments(BundleCreateSchema)
    @blp.response(201, BundleSchema)
    @errors(401, 403, 409, 422)
    def post(self, body):
        """Create a bundle (superuser); the server computes its prices

        `base_price = token_count × price(duration_hours)`, `total_price = base_price × (1 − discount_percent/100)`
        half-even to the cent. Sending any price is a 422. A name already in use (ignoring case) is a 409.
        """
        return services.create_bundle(current_user, body)


@blp.route("/<uuid:bundle_id>")
class BundleItem(MethodView):
    @blp.doc(security=PUBLIC)
    @blp.response(200, BundleSchema)
    @errors(404)
    def get(self, bundle_id: uuid.UUID):
        """One active bundle (404 for an unknown or deactivated one)"""
        return services.get_active_bundle(bundle_id)

    @superuser_required
    @blp.doc(security=BEARER)
    @blp.arguments(BundleUpdateSchema)
    @blp.response(200, BundleSchema)
    @errors(401, 403, 404, 409, 422)
    def patch(self, changes, bundle_id: uuid.UUID):
        """Change a bundle (superuser); prices are recomputed from the current price table

        Also works on a deactivated bundle; `is_active: true` brings it back. Sending any price is a 422.
        """
        return services.update_bundle(current_user, bundle_id, changes)

    @superuser_required
    @blp.doc(security=BEARER)
    @blp.response(204)
    @errors(401, 403, 404)
    def delete(self, bundle_id: uuid.UUID):
        """Deactivate a bundle (superuser): a soft delete; tokens already bought from it keep working

        Deactivating an already deactivated bundle is a 204 too.
        """
        services.deactivate_bundle(current_user, bundle_id)


@blp.route("/<uuid:bundle_id>/purchase")
class Purchase(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER, parameters=[IDEMPOTENCY_KEY])
    @blp.arguments(BundlePurchaseSchema, required=False)
    @idempotent
    @blp.response(201, BundlePurchaseResultSchema)
    @errors(401, 402, 404, 409, 422)
    def post(self, _body, bundle_id: uuid.UUID):
        """Buy a bundle: one `purchase` entry for `total_price` and `token_count` tokens, each with its secret

        The secrets are shown only in this response. Each token's `paid_znc` is `price_per_token`
        (`total_price / token_count` rounded down); a revoke refunds from that, so the cents the rounding leaves
        over are never refundable. 402 with `required` and `available` when the balance is short (nothing
        changes then); 404 for an unknown or deactivated bundle.
        """
        return services.purchase_bundle(current_user, bundle_id)
