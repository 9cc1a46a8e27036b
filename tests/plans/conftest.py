from __future__ import annotations

import pytest


@pytest.fixture
def user(accounts) -> dict:
    """A signed-in free user with 100.00 ZNC."""
    return accounts.funded("100.00")
