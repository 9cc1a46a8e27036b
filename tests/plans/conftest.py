from __future__ import annotations

import pytest


@pytest.fixture
def user(accounts) -> dict:
    """A signed-in free user with 100.00 ZNC."""
    signed_in = accounts.signed_in()
    accounts.fund(signed_in["id"], "100.00")
    return signed_in
