"""Bundles: server-computed prices, admin create/update/soft delete, and the purchase of a whole bundle."""
from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .. import metrics
from ..accounts.models import User
from ..audit.services import record, record_outcome
from ..database import db
from ..errors import Conflict, NotFound, ValidationFailed
from ..ledger import services as ledger
from ..money import format_amount, quantize
from ..referrals import services as referrals
from ..tokens.models import AccessToken
from ..tokens.pricing import price_for
from ..tokens.services import add_token_in_transaction
from .models import Bundle

EDITABLE = ("name", "description", "token_count", "duration_hours", "scope", "discount_percent", "is_active")

# SPEC §3.5: seeded by `flask bundles seed`; the prices follow from the price table and the discount.
DEFAULT_BUNDLES = (
    {"name": "Starter Pack", "description": "Five 24-hour tokens to get started.", "token_count": 5,
     "duration_hours": 24, "scope": "full", "discount_percent": 10},
    {"name": "Developer Pack", "description": "Ten 7-day tokens for regular work.", "token_count": 10,
     "duration_hours": 168, "scope": "full", "discount_percent": 15},
    {"name": "Team Pack", "description": "Twenty-five 7-day tokens for a team.", "token_count": 25,
     "duration_hours": 168, "scope": "full", "discount_percent": 20},
    {"name": "Enterprise Pack", "description": "Fifty 30-day tokens for a whole department.", "token_count": 50,
     "duration_hours": 720, "scope": "full", "discount_percent": 25},
)


class BundleNotFound(NotFound):
    message = "Bundle not found."


class DuplicateBundle(Conflict):
    message = "A bundle with this name already exists."


def prices_for(token_count: int, duration_hours: int, discount_percent: int) -> tuple[Decimal, Decimal]:
    """`base = token_count × price(duration)`, `total = base × (1 − discount/100)` half-even to the cent."""
    base = quantize(token_count * price_for(duration_hours))
    total = quantize(base * (100 - Decimal(discount_percent)) / 100)
    return base, total


def _reprice(bundle: Bundle) -> None:
    bundle.base_price, bundle.total_price = prices_for(bundle.token_count, bundle.duration_hours,
                                                       bundle.discount_percent)
    if bundle.price_per_token <= 0:
        # Only reachable with a configured price of a few cents; a free token would be a 0.00 ledger entry.
        raise ValidationFailed({"discount_percent": ["At this price and discount a token would cost nothing."]})


def list_bundles(*, include_inactive: bool = False) -> list[Bundle]:
    statement = sa.select(Bundle).order_by(Bundle.total_price, Bundle.name, Bundle.id)
    if not include_inactive:
        statement = statement.where(Bundle.is_active.is_(True))
    return list(db.session.scalars(statement))


def get_bundle(bundle_id: uuid.UUID) -> Bundle:
    bundle = db.session.get(Bundle, bundle_id)
    if bundle is None:
        raise BundleNotFound()
    return bundle


def get_active_bundle(bundle_id: uuid.UUID) -> Bundle:
    bundle = get_bundle(bundle_id)
    if not bundle.is_active:
        raise BundleNotFound()
    return bundle


def find_bundle(name_or_id: str) -> Bundle:
    """By id, else by name (case-insensitive)."""
    try:
        return get_bundle(uuid.UUID(name_or_id))
    except ValueError:
        pass
    bundle = db.session.scalar(sa.select(Bundle).where(sa.func.lower(Bundle.name) == sa.func.lower(name_or_id)))
    if bundle is None:
        raise BundleNotFound()
    return bundle


def _name_taken(name: str, other_than: uuid.UUID | None = None) -> bool:
    statement = sa.select(Bundle.id).where(sa.func.lower(Bundle.name) == sa.func.lower(name))
    if other_than is not None:
        statement = statement.where(Bundle.id != other_than)
    return db.session.scalar(statement) is not None


def _commit_unique_name() -> None:
    try:
        db.session.commit()
    except IntegrityError:
        # A concurrent create or rename took the name between our check and the commit.
        db.session.rollback()
        raise DuplicateBundle() from None


def _audit_view(bundle: Bundle) -> dict[str, Any]:
    return {"name": bundle.name, "token_count": bundle.token_count, "duration_hours": bundle.duration_hours,
            "scope": bundle.scope, "discount_percent": bundle.discount_percent,
            "base_price": format_amount(bundle.base_price), "total_price": format_amount(bundle.total_price),
            "is_active": bundle.is_active}


def create_bundle(actor: User | None, fields: dict[str, Any]) -> Bundle:
    if _name_taken(fields["name"]):
        raise DuplicateBundle()
    values = {"scope": "full", "description": None, **{k: v for k, v in fields.items() if k in EDITABLE}}
    bundle = Bundle(id=uuid.uuid4(), is_active=True, **values)
    _reprice(bundle)
    db.session.add(bundle)
    record("bundle.created", actor_id=actor.id if actor else None, resource_type="bundle", resource_id=bundle.id,
           details=_audit_view(bundle))
    _commit_unique_name()
    return bundle


def update_bundle(actor: User, bundle_id: uuid.UUID, changes: dict[str, Any]) -> Bundle:
    """Change any editable field (inactive bundles too, `is_active: true` brings one back); prices are always
    recomputed from the current price table."""
    bundle = get_bundle(bundle_id)
    if "name" in changes and _name_taken(changes["name"], other_than=bundle.id):
        raise DuplicateBundle()
    before = _audit_view(bundle)
    for field in EDITABLE:
        if field in changes:
            setattr(bundle, field, changes[field])
    _reprice(bundle)
    after = _audit_view(bundle)
    record("bundle.updated", actor_id=actor.id, resource_type="bundle", resource_id=bundle.id,
           details={"changed": {key: {"from": before[key], "to": value} for key, value in after.items()
                                if before[key] != value}})
    _commit_unique_name()
    return bundle


def deactivate_bundle(actor: User | None, bundle_id: uuid.UUID) -> Bundle:
    """Soft delete: the bundle disappears from the shop; tokens already bought from it are unaffected."""
    bundle = get_bundle(bundle_id)
    if bundle.is_active:
        bundle.is_active = False
        record("bundle.deactivated", actor_id=actor.id if actor else None, resource_type="bundle",
               resource_id=bundle.id, details={"name": bundle.name})
        db.session.commit()
    return bundle


def seed_defaults() -> list[tuple[str, bool]]:
    """Create each default bundle whose name is not taken yet (an operator's edits or deactivation stay)."""
    outcome = []
    for fields in DEFAULT_BUNDLES:
        exists = _name_taken(fields["name"])
        if not exists:
            create_bundle(None, dict(fields))
        outcome.append((fields["name"], not exists))
    return outcome


def purchase_bundle(user: User, bundle_id: uuid.UUID) -> dict[str, Any]:
    """One DB transaction: lock the user, one PURCHASE entry for the total, `token_count` tokens each paid at
    the total's share rounded down (the remainder is not refundable), any referral bonus, the events."""
    bundle = get_active_bundle(bundle_id)
    ledger.lock_user(user.id)
    entry = ledger.apply(user.id, -bundle.total_price, "purchase",
                         f"Bundle {bundle.name} ({bundle.token_count} × {bundle.duration_hours} h, {bundle.scope})",
                         reference_type="bundle", reference_id=bundle.id)
    share = bundle.price_per_token
    issued = [add_token_in_transaction(user.id, bundle.duration_hours, bundle.scope, share, source="bundle",
                                       bundle_id=bundle.id, purchase_transaction_id=entry.id)
              for _ in range(bundle.token_count)]
    referrals.award_bonus_in_transaction(user.id, entry)
    record_outcome(
        "bundle.purchased", actor_id=user.id, resource_type="bundle", resource_id=bundle.id,
        details={"bundle_name": bundle.name, "token_count": bundle.token_count,
                 "cost_znc": format_amount(bundle.total_price), "paid_per_token": format_amount(share),
                 "transaction_id": str(entry.id)},
        events=[("token.purchased", user.id, {"token_id": str(token.id), "duration_hours": bundle.duration_hours,
                                              "scope": bundle.scope, "paid_znc": format_amount(share),
                                              "source": "bundle", "bundle_id": str(bundle.id)})
                for token in issued],
        counts=[(metrics.token_purchases, bundle.token_count, {"duration_hours": str(bundle.duration_hours)}),
                (metrics.znc_revenue, bundle.total_price, {})])
    result = {"bundle_id": bundle.id, "bundle_name": bundle.name, "tokens_generated": len(issued),
              "cost_znc": bundle.total_price, "new_balance": entry.balance_after, "tokens": issued}
    purchase_id = entry.id
    db.session.commit()
    # The commit expired every token; reload them in one query rather than one query per token.
    db.session.scalars(sa.select(AccessToken).where(AccessToken.purchase_transaction_id == purchase_id)).all()
    return result
