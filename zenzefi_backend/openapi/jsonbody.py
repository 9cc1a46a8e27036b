"""The one JSON decoder for request bodies: every route's body (webargs), `request.get_json()` and the payment
webhook go through `loads`, so a hostile body is a clear 400 (or 413, see `limit_body_size`), never a 500.

- Nesting deeper than MAX_DEPTH levels is refused: the C decoder recurses per level (`[`×100000 is a
  RecursionError), and so does everything that walks the result afterwards (marshmallow, our NUL check, the
  idempotency fingerprint). No request body here needs more than a few levels.
- A number with a fraction or an exponent is a `money.JsonFloat`: a float that remembers its text, so money
  parsing can tell `1e2` from `100` (`money.parse_amount`).
"""
from __future__ import annotations

import json
from typing import Any

from flask import Flask, current_app, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge

from ..money import JsonFloat

MAX_DEPTH = 32


class MalformedJson(ValueError):
    """The body is not JSON we accept; the message says why, in a few words a client can act on."""


def _deeper_than(value: Any, limit: int) -> bool:
    """Iterative, so that a deep value cannot exhaust the stack here either."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def loads(data: bytes | bytearray | str, **kwargs: Any) -> Any:
    """Decode a request body strictly; `MalformedJson` for anything else. `kwargs` go to `json.loads`."""
    if isinstance(data, bytes | bytearray):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedJson("the body is not UTF-8") from None
    kwargs.setdefault("parse_float", JsonFloat)
    try:
        value = json.loads(data, **kwargs)
    except RecursionError:
        raise MalformedJson(f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise MalformedJson(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits, or a hook's refusal
        raise MalformedJson(str(exc)[:200] or "not valid JSON") from None
    if _deeper_than(value, MAX_DEPTH):
        raise MalformedJson(f"nested deeper than {MAX_DEPTH} levels")
    return value


class RequestJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with `loads` above, so `request.get_json()` is as strict as the body parser."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s, **kwargs)


# The proxy forwards bodies up to MAX_CONTENT_LENGTH; everything else is a small JSON document.
UNLIMITED_BLUEPRINTS = frozenset({"proxy"})


def _too_large() -> RequestEntityTooLarge:
    limit = current_app.config["MAX_JSON_BODY_BYTES"]
    return RequestEntityTooLarge(f"Request bodies are at most {limit} bytes.")


def limit_body_size() -> None:
    """Before every request but a proxied one: a declared length over MAX_JSON_BODY_BYTES is a 413 at once. A
    body without one (chunked) is read at most one byte past the limit (`request_body` tells the two apart)."""
    if request.blueprint in UNLIMITED_BLUEPRINTS:
        return
    limit = current_app.config["MAX_JSON_BODY_BYTES"]
    if request.content_length is not None and request.content_length > limit:
        raise _too_large()
    current = request.max_content_length
    request.max_content_length = limit + 1 if current is None else min(current, limit + 1)


def request_body() -> bytes:
    """The request's body bytes (cached); a 413 if it is longer than MAX_JSON_BODY_BYTES."""
    data = request.get_data(cache=True)
    if request.blueprint not in UNLIMITED_BLUEPRINTS and len(data) > current_app.config["MAX_JSON_BODY_BYTES"]:
        raise _too_large()
    return data


def init_app(app: Flask) -> None:
    app.json = RequestJSONProvider(app)
    app.before_request(limit_body_size)
