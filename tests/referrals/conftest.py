from __future__ import annotations

import pytest


@pytest.fixture
def referrer(accounts) -> dict:
    return accounts.signed_in()


@pytest.fixture
def referee(accounts, referrer) -> dict:
    """Registered with the referrer's code, with 20,000.00 ZNC to spend."""
    return accounts.funded("20000.00", referral_code=referrer["referral_code"])
