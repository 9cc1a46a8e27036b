"""JWT wiring: who the bearer is, whether the token still counts, and the superuser guard."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask_jwt_extended import JWTManager, current_user, get_jwt, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt.exceptions import PyJWTError

from ..database import db
from ..errors import Forbidden, error_response
from .models import RevokedJwt, User


def init_jwt(jwt: JWTManager) -> None:
    @jwt.user_identity_loader
    def identity(user: User) -> str:
        return str(user.id)

    @jwt.additional_claims_loader
    def claims(user: User) -> dict[str, Any]:
        return {"gen": user.jwt_generation}

    @jwt.user_lookup_loader
    def load_user(_header: dict, payload: dict) -> User | None:
        try:
            user = db.session.get(User, uuid.UUID(payload["sub"]))
        except (ValueError, KeyError):
            return None
        if user is None or not user.is_active or payload.get("gen") != user.jwt_generation:
            return None
        return user

    @jwt.token_in_blocklist_loader
    def is_revoked(_header: dict, payload: dict) -> bool:
        return db.session.get(RevokedJwt, payload["jti"]) is not None

    def unauthorized(message: str):
        return error_response(401, message, {"WWW-Authenticate": "Bearer"})

    jwt.unauthorized_loader(lambda reason: unauthorized("Missing bearer token."))
    jwt.invalid_token_loader(lambda reason: unauthorized("Invalid token."))
    jwt.expired_token_loader(lambda _h, _p: unauthorized("Token has expired."))
    jwt.revoked_token_loader(lambda _h, _p: unauthorized("Token has been revoked."))
    jwt.user_lookup_error_loader(lambda _h, _p: unauthorized("Token is no longer valid."))
    jwt.needs_fresh_token_loader(lambda _h, _p: unauthorized("A fresh login is required."))
    jwt.token_verification_failed_loader(lambda _h, _p: unauthorized("Invalid token."))


def require_superuser() -> None:
    """401 without a valid JWT, 403 for a JWT of anyone but a superuser."""
    verify_jwt_in_request()
    if not current_user.is_superuser:
        raise Forbidden("Superuser access required.")


def superuser_required(view: Callable) -> Callable:
    @wraps(view)
    def guarded(*args, **kwargs):
        require_superuser()
        return view(*args, **kwargs)

    return guarded


def bearer_is_superuser() -> bool:
    """For rate-limit exemption: a valid superuser JWT, without failing the request if there is none."""
    try:
        verify_jwt_in_request(optional=True)
    except (JWTExtendedException, PyJWTError):
        return False
    return bool(get_jwt()) and current_user is not None and current_user.is_superuser
