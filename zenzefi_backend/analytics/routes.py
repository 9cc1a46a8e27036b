"""`/api/v1/analytics/usage` (JWT) and `/api/v1/analytics/admin/global` (superuser), cached 5 minutes."""
from __future__ import annotations

from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required
from marshmallow import RAISE

from ..accounts.auth import superuser_required
from ..openapi import BEARER, Blueprint, errors
from . import cache, services
from .schemas import GlobalSchema, PeriodQuerySchema, UsageSchema

blp = Blueprint("analytics", __name__, url_prefix="/api/v1/analytics",
                description="Usage and business figures per UTC day, read from daily rollups.")

@blp.route("/usage")
class Usage(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.arguments(PeriodQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, UsageSchema)
    @errors(401, 422, 429)
    def get(self, query):
        """Your proxy usage and spend, per UTC day of the period

        `period` is `day` (today, UTC), `week` (the last 7 calendar days) or `month` (the last 30), today
        included; `daily` has one entry per day, zeros included. Any other period, or any other query parameter,
        is a 422. 429 once the per-user API rate limit of your plan is reached.

        Answers are kept for 5 minutes per user and period, so the figures can be that old; proxied requests
        reach them with the periodic counter flush (every 60 s).
        """
        window = services.window_of(query["period"])
        return cache.cached_json(cache.usage_key(current_user.id, window),
                                 lambda: UsageSchema().dump(services.user_usage(current_user.id, window)))


@blp.route("/admin/global")
class Global(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.arguments(PeriodQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, GlobalSchema)
    @errors(401, 403, 422, 429)
    def get(self, query):
        """Superuser: sign-ups, active users, sales, money moved and proxy traffic, per UTC day of the period

        Periods as for `/analytics/usage`. Money figures come from the ledger by transaction type; a UTC day is
        read from its daily rollup once it is over, the days not closed yet (today) from the ledger itself.
        401 without a valid JWT, 403 for anyone but a superuser (a non-superuser may meet the API rate limit,
        429, first; superusers have none).

        Answers are kept for 5 minutes per period (the figures are the same for every superuser).
        """
        window = services.window_of(query["period"])
        return cache.cached_json(cache.global_key(window),
                                 lambda: GlobalSchema().dump(services.global_figures(window)))

