from __future__ import annotations

import pytest

from tests.bundles.helpers import seed


@pytest.fixture
def admin(accounts) -> dict:
    return accounts.signed_in(superuser=True)


@pytest.fixture
def referrer(accounts) -> dict:
    return accounts.signed_in()


@pytest.fixture
def referee(accounts, referrer) -> dict:
    """Registered with the referrer's code, with 20,000.00 ZNC to spend."""
    return accounts.funded("20000.00", referral_code=referrer["referral_code"])


@pytest.fixture
def catalogue(app, client) -> dict[str, dict]:
    return seed(app, client)
