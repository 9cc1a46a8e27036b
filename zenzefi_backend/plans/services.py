"""Plans: the catalogue, buying 30 days of a paid plan through the ledger, and the expiry sweep.

Rules where SPEC §3.8 is silent:
- Buying the plan you already have (and that is still running) extends it by 30 days from its current
  expiry. Buying another paid plan (up or down) starts that plan's 30 days now; the rest of the old plan is
  forfeited, nothing is prorated or refunded.
- `free` cannot be bought (422): plans do not renew by themselves, so there is nothing to cancel; a paid
  plan falls back to free when it expires.
- A paid plan without an expiry (granted by an operator) cannot be renewed by buying it (409).
- A plan past its expiry counts as free at once (limits, plan state), even before the hourly sweep has
  written `free` into the user row.

`purchase_plan`, `expire_plans` and `grant_plan` each commit their own transaction and announce
`events.plan_changed` (the proxy's per-token rate limit follows it).
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import current_app

from .. import events, metrics
from ..accounts.models import FREE, PLANS, User
from ..audit.services import record, record_outcome
from ..clock import now
from ..database import db
from ..errors import Conflict, ValidationFailed
from ..ledger import services as ledger
from ..money import format_amount, quantize

PAID_PLANS = tuple(plan for plan in PLANS if plan != FREE)
PERIOD_DAYS = 30
PERIOD = timedelta(days=PERIOD_DAYS)


class PlanDoesNotExpire(Conflict):
    message = "Your plan does not expire; there is nothing to renew."


def price_of(plan: str) -> Decimal:
    if plan == FREE:
        return Decimal("0.00")
    return quantize(Decimal(current_app.config[f"PLAN_PRICE_{plan.upper()}"]))


def api_limit_of(plan: str) -> int:
    return int(current_app.config[f"RATELIMIT_API_{plan.upper()}"])


def proxy_limit_of(plan: str) -> int:
    return int(current_app.config[f"RATELIMIT_PROXY_{plan.upper()}"])


def catalogue() -> list[dict[str, Any]]:
    return [{"name": plan, "api_requests_per_minute": api_limit_of(plan),
             "proxy_requests_per_minute": proxy_limit_of(plan), "price_znc": price_of(plan),
             "period_days": PERIOD_DAYS} for plan in PLANS]


def plan_state(user: User, moment: datetime | None = None) -> dict[str, Any]:
    plan = user.plan_at(moment or now())
    return {"plan": plan, "plan_expires_at": None if plan == FREE else user.plan_expires_at,
            "api_requests_per_minute": api_limit_of(plan), "proxy_requests_per_minute": proxy_limit_of(plan)}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def purchase_plan(user: User, plan: str) -> dict[str, Any]:
    """One DB transaction under the user's row lock: the `plan` ledger entry (402 when short, nothing
    changes), the new plan and expiry, the audit entry. The proxy forgets its cached copy of the user after
    the commit, so the new per-token limit applies from the next proxied request."""
    if plan == FREE:
        raise ValidationFailed({"plan": ["The free plan cannot be bought; a paid plan falls back to it when it "
                                         "expires."]})
    price = price_of(plan)
    moment = now()
    locked = ledger.lock_user(user.id)
    previous_plan, previous_expiry = locked.plan_at(moment), locked.plan_expires_at
    if locked.plan == plan and previous_expiry is None:
        raise PlanDoesNotExpire()
    renewal = previous_plan == plan
    expires = (previous_expiry if renewal else moment) + PERIOD
    entry = ledger.apply(user.id, -price, "plan", f"Plan {plan}, {PERIOD_DAYS} days to {expires:%Y-%m-%d %H:%M} UTC",
                         reference_type="plan", reference_id=plan)
    locked.plan, locked.plan_expires_at = plan, expires
    record_outcome("plan.changed", actor_id=user.id, resource_type="user", resource_id=user.id,
                   details={"from": previous_plan, "to": plan, "renewal": renewal,
                            "previous_expires_at": _iso(previous_expiry) if previous_plan != FREE else None,
                            "expires_at": _iso(expires), "price_znc": format_amount(price),
                            "transaction_id": str(entry.id)},
                   counts=[(metrics.znc_revenue, price, {})])
    events.announce(events.plan_changed, user_id=user.id)
    db.session.commit()
    return plan_state(locked)


def expire_plans(moment: datetime | None = None) -> int:
    """Paid plans past their expiry become free; returns how many. Idempotent and safe on several workers at
    once: each user is moved by a conditional UPDATE that re-checks plan and expiry (on PostgreSQL after
    waiting for the row lock of a concurrent sweep or purchase), so a plan is expired, audited and counted
    once, and a renewal committed in between is never undone."""
    moment = moment or now()
    due = db.session.execute(
        sa.select(User.id, User.plan, User.plan_expires_at)
        .where(User.plan != FREE, User.plan_expires_at.is_not(None), User.plan_expires_at <= moment)
        .order_by(User.id)
    ).all()
    expired: list[uuid.UUID] = []
    for user_id, plan, expires_at in due:
        moved = db.session.execute(
            sa.update(User)
            .where(User.id == user_id, User.plan == plan, User.plan_expires_at <= moment)
            .values(plan=FREE, plan_expires_at=None)
            .returning(User.id)
            .execution_options(synchronize_session=False)
        ).first()
        if moved is None:
            continue
        record("plan.expired", actor_id=user_id, resource_type="user", resource_id=user_id,
               details={"from": plan, "to": FREE, "expired_at": _iso(expires_at)})
        events.announce(events.plan_changed, user_id=user_id)
        expired.append(user_id)
    db.session.commit()
    return len(expired)


def grant_plan(user: User, plan: str, expires_at: datetime | None) -> User:
    """An operator's grant (`flask users set-plan`): no charge; `free` never expires."""
    if plan not in PLANS:
        raise ValidationFailed({"plan": [f"Must be one of: {', '.join(PLANS)}."]})
    user.plan = plan
    user.plan_expires_at = None if plan == FREE else expires_at
    record("plan.granted", resource_type="user", resource_id=user.id,
           details={"plan": plan, "plan_expires_at": _iso(user.plan_expires_at)})
    events.announce(events.plan_changed, user_id=user.id)  # the proxy's per-token limit follows the plan
    db.session.commit()
    return user
