from __future__ import annotations

import pytest

from .helpers import seed


@pytest.fixture
def admin(accounts) -> dict:
    return accounts.signed_in(superuser=True)


@pytest.fixture
def catalogue(app, client) -> dict[str, dict]:
    """The four default bundles, seeded as `flask bundles seed` does, by name."""
    return seed(app, client)
