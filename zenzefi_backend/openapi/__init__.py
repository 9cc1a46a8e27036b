"""What every blueprint stands on: the project's Blueprint (its bodies decoded by `jsonbody`, the one request
body decoder), security schemes and error documentation."""
from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import flask
import flask_smorest
from marshmallow import missing
from webargs.flaskparser import FlaskParser, abort, is_json_request

from ..errors import ErrorSchema
from . import jsonbody


class JsonBodyParser(FlaskParser):
    """Bodies are decoded by `jsonbody.loads` (depth-limited, numbers keep their text); anything it refuses
    is a 400 that says why."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return missing
        try:
            return jsonbody.loads(jsonbody.request_body())
        except jsonbody.MalformedJson as error:
            self._handle_invalid_json_error(error, req)

    def _handle_invalid_json_error(self, error: Exception, req: flask.Request, *args: Any, **kwargs: Any):
        abort(400, exc=error, messages={"json": [f"Not valid JSON: {error}."]},
              message=f"The request body is not valid JSON: {error}.")


class Blueprint(flask_smorest.Blueprint):
    """The project's blueprint: flask-smorest's, with the stricter JSON body parser."""

    ARGUMENTS_PARSER = JsonBodyParser()

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
_doc = flask_smorest.Blueprint("error-docs", __name__)


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
