"""The per-user API rate limit by plan (SPEC §3.8), one Flask-Limiter application limit over every route.

Who counts: the user of a valid JWT (access or refresh), read from the user row as the JWT loader does
(never a plan claim in the JWT, which a plan change would leave stale), else the client IP. The limit is the
user's current plan's `RATELIMIT_API_<PLAN>` per minute, shared by all `/api/v1` routes and, through the
limiter's Redis storage, by every gunicorn worker. Superusers, CORS preflights, everything outside `/api/v1`
(health, docs, metrics) and the proxy and payment-webhook blueprints get no limit at all: the provider
returns no limit string for them, so nothing is counted and no `X-RateLimit-*` header is written.

Application limits are checked in `before_request`, before any `@jwt_required` runs, so the JWT is verified
here for the limiter (once per request, the result is kept in `g`); what `verify_jwt_in_request` leaves in
`g` is put back the way it was, so the view's own JWT check is unaffected. That check runs again (the user
row then comes from the session's identity map; the revoked-JWT lookup is repeated).

The fixed window starts with a key's first request and lasts a minute. Flask-Limiter's counter key includes
the limit itself, so after a plan change the user counts against the new plan's limit from zero.
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import g, request
from flask_jwt_extended import get_current_user, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException
from flask_limiter.util import get_remote_address
from jwt.exceptions import PyJWTError
from sqlalchemy.exc import SQLAlchemyError

from ..accounts.models import FREE
from ..database import db
from .services import api_limit_of

API_PREFIX = "/api/v1/"
# The proxy has its own per-token limit (counted in its Redis round trip); the payment provider must never
# be refused.
EXEMPT_BLUEPRINTS = frozenset({"proxy", "payment-webhook"})
_SUBJECT = "_zenzefi_rate_subject"
_JWT_GLOBALS = ("_jwt_extended_jwt", "_jwt_extended_jwt_header", "_jwt_extended_jwt_user",
                "_jwt_extended_jwt_location")


@dataclass(frozen=True)
class RateSubject:
    key: str
    plan: str
    superuser: bool


def rate_subject() -> RateSubject:
    """Who this request is counted against (cached for the request)."""
    subject = g.get(_SUBJECT)
    if subject is not None:
        return subject
    saved = {name: g.pop(name) for name in _JWT_GLOBALS if name in g}
    user = None
    try:
        if verify_jwt_in_request(optional=True, verify_type=False):
            user = get_current_user()
    except (JWTExtendedException, PyJWTError):
        user = None
    except SQLAlchemyError:  # the database is down: count by address; the view fails on its own
        db.session.rollback()
        user = None
    finally:
        for name in _JWT_GLOBALS:
            g.pop(name, None)
        for name, value in saved.items():
            setattr(g, name, value)
    if user is None:  # counted by address, at the free plan's limit
        subject = RateSubject(f"ip:{get_remote_address()}", FREE, False)
    else:
        subject = RateSubject(f"user:{user.id}", user.effective_plan, bool(user.is_superuser))
    setattr(g, _SUBJECT, subject)
    return subject


def is_limited_request() -> bool:
    return (request.method != "OPTIONS" and request.path.startswith(API_PREFIX)
            and request.blueprint not in EXEMPT_BLUEPRINTS)


def api_rate_limit() -> str:
    """The limit string for this request; empty (no limit) when exempt."""
    if not is_limited_request():
        return ""
    subject = rate_subject()
    if subject.superuser:
        return ""
    return f"{api_limit_of(subject.plan)} per minute"


def api_rate_key() -> str:
    return rate_subject().key


def api_rate_message() -> str:
    """What is limited; the 429 handler (limit_headers.py) adds the limit and when it frees up."""
    subject = rate_subject()
    if subject.key.startswith("ip:"):
        return "Too many API requests from this address without signing in"
    return f"Too many API requests on the {subject.plan} plan"
