from __future__ import annotations

from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required

from ..idempotency import idempotent
from ..openapi import BEARER, IDEMPOTENCY_KEY, PUBLIC, Blueprint, errors
from . import services
from .schemas import PlanChoiceSchema, PlanListSchema, PlanStateSchema

blp = Blueprint("plans", __name__, url_prefix="/api/v1", description="Plans: rate-limit tiers and their purchase.")


@blp.route("/plans")
class Plans(MethodView):
    @blp.doc(security=PUBLIC)
    @blp.response(200, PlanListSchema)
    @errors(429)
    def get(self):
        """The plans: API requests per minute per user, proxied requests per minute per token, price per 30 days"""
        return {"items": services.catalogue()}


@blp.route("/users/me/plan")
class MyPlan(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.response(200, PlanStateSchema)
    @errors(401, 429)
    def get(self):
        """Your plan as it applies now (a plan past its expiry is already free)"""
        return services.plan_state(current_user)

    @blp.doc(security=BEARER, parameters=[IDEMPOTENCY_KEY])
    @blp.arguments(PlanChoiceSchema)
    @idempotent
    @blp.response(200, PlanStateSchema)
    @errors(401, 402, 409, 422, 429)
    def post(self, body):
        """Buy 30 days of a paid plan

        Charges the plan's price (a `plan` ledger entry; 402 with `required` and `available` when the balance
        is short, nothing changes then). Buying the plan you have, while it runs, extends it by 30 days from
        its current expiry; buying another paid plan starts its 30 days now and forfeits the rest of the old
        one (no proration, no refund). `free` cannot be bought (422): plans never renew by themselves, and a
        paid plan falls back to free when it expires. A plan granted without expiry cannot be renewed (409).
        The new limits apply from the next request, proxy included.
        """
        return services.purchase_plan(current_user, body["plan"])
