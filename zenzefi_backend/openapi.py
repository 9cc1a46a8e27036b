"""Security schemes and error documentation shared by every blueprint."""
from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from flask_smorest import Blueprint

from .errors import ErrorSchema

PUBLIC: list = []
BEARER = [{"bearerAuth": []}]
REFRESH = [{"refreshBearerAuth": []}]
ACCESS_TOKEN = [{"accessTokenAuth": []}]

SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "Access JWT from `/api/v1/auth/login`."},
    "refreshBearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                          "description": "Refresh JWT from `/api/v1/auth/login`."},
    "accessTokenAuth": {"type": "apiKey", "in": "header", "name": "X-Access-Token",
                        "description": "A purchased access token (proxy routes)."},
}

# Only used for its `alt_response` decorator, which attaches documentation to a view function.
_doc = Blueprint("error-docs", __name__)


def errors(*codes: int) -> Callable:
    """Document the error responses a view can give, all in the shared error shape."""

    def decorate(view: Callable) -> Callable:
        for code in codes:
            view = _doc.alt_response(code, schema=ErrorSchema, description=HTTPStatus(code).phrase)(view)
        return view

    return decorate

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "\\S"},
    "description": "Replays within 24 h return the first response; same key with another body → 422; "
                   "while the first is still running → 409.",
}
