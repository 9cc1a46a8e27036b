"""Which plan applies: a property of the user, the same for the API limit, the proxy and GET /plans/me."""
from __future__ import annotations

from datetime import timedelta

from zenzefi_backend import clock
from zenzefi_backend.accounts.models import User


def test_a_paid_plan_applies_until_its_expiry_and_is_free_from_that_moment():
    moment = clock.now()
    user = User(plan="premium", plan_expires_at=moment + timedelta(hours=1))
    assert user.plan_at(moment) == "premium"
    assert user.plan_at(moment + timedelta(minutes=59, seconds=59)) == "premium"
    assert user.plan_at(moment + timedelta(hours=1)) == "free"
    assert user.effective_plan == "premium"


def test_a_plan_without_an_expiry_and_the_free_plan_never_change():
    later = clock.now() + timedelta(days=3650)
    assert User(plan="enterprise", plan_expires_at=None).plan_at(later) == "enterprise"
    assert User(plan="free", plan_expires_at=clock.now() - timedelta(days=1)).effective_plan == "free"
