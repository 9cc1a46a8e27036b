from __future__ import annotations

from flask import current_app, request
from flask.views import MethodView
from flask_jwt_extended import current_user, get_jwt, jwt_required
from flask_limiter.util import get_remote_address

from ..extensions import limiter
from ..openapi import BEARER, PUBLIC, REFRESH, Blueprint, errors
from . import services
from .auth import bearer_is_superuser
from .emails import lookup_form
from .schemas import (
    AccessTokenSchema,
    LoginSchema,
    LogoutSchema,
    PasswordChangeSchema,
    ProfileUpdateSchema,
    RegisterQuerySchema,
    RegisterSchema,
    TokenPairSchema,
    UserSchema,
)

auth_blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Registration, login and JWTs.")
users_blp = Blueprint("users", __name__, url_prefix="/api/v1/users", description="The signed-in user.")


def _login_limit_key() -> str:
    body = request.get_json(silent=True)
    email = body.get("email") if isinstance(body, dict) else None
    return f"{get_remote_address()}|{lookup_form(email) if isinstance(email, str) else ''}"


register_limit = limiter.limit(
    lambda: current_app.config["RATELIMIT_REGISTER"], exempt_when=bearer_is_superuser, scope="register",
    error_message="Too many registrations from this address",
)
failed_login_limit = limiter.limit(
    lambda: current_app.config["RATELIMIT_LOGIN_FAILED"],
    key_func=_login_limit_key,
    deduct_when=lambda response: response.status_code == 401,
    scope="login-failed",
    error_message="Too many failed sign-ins with this e-mail address from this address",
)


@auth_blp.route("/register")
class Register(MethodView):
    decorators = [register_limit]

    @auth_blp.doc(security=PUBLIC)
    @auth_blp.arguments(RegisterQuerySchema, location="query")
    @auth_blp.arguments(RegisterSchema)
    @auth_blp.response(201, UserSchema)
    @errors(409, 422, 429)
    def post(self, query, body):
        """Create an account

        Email and username are unique regardless of case. A referral code may come in the body or as `?ref=`.
        """
        referral_code = body.pop("referral_code", None) or query.get("ref")
        return services.register_user(referral_code=referral_code, **body)


@auth_blp.route("/login")
class Login(MethodView):
    decorators = [failed_login_limit]

    @auth_blp.doc(security=PUBLIC)
    @auth_blp.arguments(LoginSchema)
    @auth_blp.response(200, TokenPairSchema)
    @errors(401, 429)
    def post(self, body):
        """Exchange e-mail and password for an access and a refresh token

        Unknown e-mail, wrong password and an inactive account all get the same 401.
        Five failed attempts per hour per client IP and e-mail, then 429.
        """
        return services.issue_tokens(services.authenticate(body["email"], body["password"]))


@auth_blp.route("/refresh")
class Refresh(MethodView):
    decorators = [jwt_required(refresh=True)]

    @auth_blp.doc(security=REFRESH)
    @auth_blp.response(200, AccessTokenSchema)
    @errors(401)
    def post(self):
        """Get a new access token with a refresh token"""
        return services.refresh_access_token(current_user)


@auth_blp.route("/logout")
class Logout(MethodView):
    decorators = [jwt_required()]

    @auth_blp.doc(security=BEARER)
    @auth_blp.arguments(LogoutSchema, required=False)
    @auth_blp.response(204)
    @errors(401, 422)
    def post(self, body):
        """Revoke the presented access token (and the refresh token given in the body)"""
        services.logout(current_user, get_jwt(), body.get("refresh_token"))


@users_blp.route("/me")
class Me(MethodView):
    decorators = [jwt_required()]

    @users_blp.doc(security=BEARER)
    @users_blp.response(200, UserSchema)
    @errors(401)
    def get(self):
        """The signed-in user"""
        return current_user

    @users_blp.doc(security=BEARER)
    @users_blp.arguments(ProfileUpdateSchema)
    @users_blp.response(200, UserSchema)
    @errors(401, 422)
    def patch(self, changes):
        """Update `full_name` and `email_notifications` (any other field is a 422)"""
        return services.update_profile(current_user, changes)


@users_blp.route("/me/password")
class Password(MethodView):
    decorators = [jwt_required()]

    @users_blp.doc(security=BEARER)
    @users_blp.arguments(PasswordChangeSchema)
    @users_blp.response(204)
    @errors(401, 422)
    def post(self, body):
        """Change the password; every JWT issued before stops working"""
        services.change_password(current_user, body["current_password"], body["new_password"])
