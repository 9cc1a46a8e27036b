"""What superusers see and change: users with their counts, every token and session.

Money moves through `ledger`, revokes through `tokens`, (de)activation through `accounts`; this module finds
rows, applies the admin-only rules and writes the audit trail. Every function here is route-facing: it owns
its transaction and commits it (or rolls it back).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from .. import events
from ..accounts import services as accounts
from ..accounts.emails import search_form
from ..accounts.models import User
from ..audit.services import record
from ..clock import ensure_utc, now
from ..database import db
from ..errors import Conflict, NotFound, ValidationFailed
from ..ledger import services as ledger
from ..ledger.models import Transaction
from ..money import format_amount
from ..pagination import paginate
from ..proxy import sessions as proxy_sessions
from ..proxy.models import ProxySession
from ..record_views import RecordView
from ..tokens.models import AccessToken

EDITABLE_FIELDS = ("is_active", "is_superuser", "plan", "plan_expires_at")


class UserNotFound(NotFound):
    message = "User not found."


class SessionNotFound(NotFound):
    message = "Session not found."


class CannotDemoteYourself(Conflict):
    message = "You cannot remove your own superuser flag; ask another superuser."


class CannotDeactivateYourself(Conflict):
    message = "You cannot deactivate yourself; ask another superuser."


@dataclass
class UserOverview(RecordView):
    """A user with the counts superusers see next to them."""

    record: User
    token_count: int = 0
    active_token_count: int = 0
    transaction_count: int = 0


def _overviews(users: list[User]) -> list[UserOverview]:
    """Counts for a page of users in two aggregate queries, however long the page."""
    overviews = {user.id: UserOverview(user) for user in users}
    if not overviews:
        return []
    usable = AccessToken.usable_at(now())  # never-activated tokens count as active here
    token_counts = db.session.execute(
        sa.select(AccessToken.user_id, sa.func.count(), sa.func.count(sa.case((usable, 1))))
        .where(AccessToken.user_id.in_(list(overviews)))
        .group_by(AccessToken.user_id)
    )
    for user_id, total, active in token_counts:
        overviews[user_id].token_count, overviews[user_id].active_token_count = total, active
    transaction_counts = db.session.execute(
        sa.select(Transaction.user_id, sa.func.count())
        .where(Transaction.user_id.in_(list(overviews)))
        .group_by(Transaction.user_id)
    )
    for user_id, total in transaction_counts:
        overviews[user_id].transaction_count = total
    return list(overviews.values())


def list_users(*, search: str | None, is_active: bool | None, plan: str | None, limit: int,
               offset: int) -> dict[str, Any]:
    statement = sa.select(User).order_by(User.created_at.desc(), User.id.desc())
    if search:
        needle = search_form(search)
        statement = statement.where(sa.or_(
            sa.func.lower(User.email).contains(needle, autoescape=True),
            sa.func.lower(User.username).contains(needle, autoescape=True),
        ))
    if is_active is not None:
        statement = statement.where(User.is_active.is_(is_active))
    if plan:
        statement = statement.where(User.plan == plan)
    page = paginate(statement, limit, offset)
    page["items"] = _overviews(list(page["items"]))
    return page


def get_user(user_id: uuid.UUID) -> UserOverview:
    user = db.session.get(User, user_id)
    if user is None:
        raise UserNotFound()
    return _overviews([user])[0]


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _plan_changes(user: User, changes: dict[str, Any]) -> dict[str, Any]:
    """The free plan never expires: moving to it clears the expiry; giving it one is a 422."""
    changes = dict(changes)
    if changes.get("plan_expires_at") is not None:
        changes["plan_expires_at"] = ensure_utc(changes["plan_expires_at"])
    if changes.get("plan", user.plan) == "free":
        if changes.get("plan_expires_at") is not None:
            raise ValidationFailed({"plan_expires_at": ["The free plan does not expire; send null."]})
        if "plan" in changes:
            changes["plan_expires_at"] = None
    return changes


def update_user(admin: User, user_id: uuid.UUID, changes: dict[str, Any]) -> UserOverview:
    """Change `is_active`, `is_superuser`, `plan` or `plan_expires_at`; audited with before and after.

    Deactivation locks the user out everywhere on the next request (JWTs, proxy, status); reactivation and
    plan changes drop the proxy's cached copy of the user."""
    user = db.session.scalar(sa.select(User).where(User.id == user_id).with_for_update()
                             .execution_options(populate_existing=True))
    if user is None:
        raise UserNotFound()
    if user.id == admin.id:
        if changes.get("is_superuser") is False:
            raise CannotDemoteYourself()
        if changes.get("is_active") is False:
            raise CannotDeactivateYourself()
    changes = _plan_changes(user, changes)
    changed = {
        field: {"from": _jsonable(getattr(user, field)), "to": _jsonable(changes[field])}
        for field in EDITABLE_FIELDS
        if field in changes and getattr(user, field) != changes[field]
    }
    if not changed:
        db.session.rollback()
        return get_user(user_id)
    for field in ("is_superuser", "plan", "plan_expires_at"):
        if field in changed:
            setattr(user, field, changes[field])
    record("admin.user_updated", actor_id=admin.id, resource_type="user", resource_id=user.id,
           details={"changes": changed})
    if "is_active" in changed and not changes["is_active"]:
        accounts.deactivate_user(user, admin.id)  # commits; its tombstone carries the new plan
    elif "is_active" in changed:
        accounts.reactivate_user(user, admin.id)  # commits and drops the cached user
    else:
        if "plan" in changed or "plan_expires_at" in changed:
            events.announce(events.plan_changed, user_id=user.id)  # the proxy's rate limit follows the plan
        db.session.commit()
    return get_user(user_id)


def list_tokens(*, user_id: uuid.UUID | None, status: str | None, limit: int, offset: int) -> dict[str, Any]:
    statement = sa.select(AccessToken).order_by(AccessToken.created_at.desc(), AccessToken.id.desc())
    if user_id is not None:
        statement = statement.where(AccessToken.user_id == user_id)
    if status:
        statement = statement.where(AccessToken.status_is(status, now()))
    return paginate(statement, limit, offset)


def list_sessions(*, active_only: bool, user_id: uuid.UUID | None, limit: int, offset: int) -> dict[str, Any]:
    statement = sa.select(ProxySession).order_by(ProxySession.started_at.desc(), ProxySession.id.desc())
    if active_only:
        statement = statement.where(ProxySession.is_active.is_(True))
    if user_id is not None:
        statement = statement.where(ProxySession.user_id == user_id)
    return paginate(statement, limit, offset)


def end_session(admin: User, session_id: uuid.UUID) -> None:
    """Close the session and free its token for any device. Ending an ended session changes nothing."""
    session = db.session.scalar(sa.select(ProxySession).where(ProxySession.id == session_id).with_for_update()
                                .execution_options(populate_existing=True))
    if session is None:
        raise SessionNotFound()
    if not session.is_active:
        db.session.rollback()
        return
    proxy_sessions.end_session(session.id, "admin")
    record("admin.session_ended", actor_id=admin.id, resource_type="proxy_session", resource_id=session.id,
           details={"user_id": str(session.user_id), "token_id": str(session.token_id),
                    "device_id": session.device_id})
    events.announce(events.session_ended_by_admin, token_id=session.token_id)
    db.session.commit()


def adjust_balance(admin: User, user_id: uuid.UUID, amount: Decimal, reason: str) -> Transaction:
    """A superuser's signed correction; never below zero (409)."""
    if db.session.get(User, user_id) is None:
        raise UserNotFound()
    ledger.lock_user(user_id)
    entry = ledger.apply(user_id, amount, "adjustment", reason, reference_type="admin", reference_id=admin.id,
                         on_short=ledger.BalanceWouldGoNegative)
    record("admin.balance_adjusted", actor_id=admin.id, resource_type="user", resource_id=user_id,
           details={"amount": format_amount(amount), "reason": reason,
                    "balance_after": format_amount(entry.balance_after)})
    db.session.commit()
    return entry
