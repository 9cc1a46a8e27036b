from __future__ import annotations

from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required

from ..openapi import BEARER, Blueprint, errors
from . import services
from .schemas import ReferralSummarySchema

blp = Blueprint("referrals", __name__, url_prefix="/api/v1/users",
                description="Referrals: your code and link, who registered with it, the bonuses it earned.")


@blp.route("/me/referrals")
class MyReferrals(MethodView):
    decorators = [jwt_required()]

    @blp.doc(security=BEARER)
    @blp.response(200, ReferralSummarySchema)
    @errors(401)
    def get(self):
        """Your referral code and link, the users who registered with it, and what their purchases earned you

        A referee's first purchase (token or bundle) of more than 100.00 ZNC credits you 10 % of it, once per
        referee. Refunds of that purchase's tokens claw the bonus back in proportion (never below your zero).
        """
        return services.summary(current_user)
