"""Fixtures of the admin tests (the proxy's in-process environment, `env`, comes from tests/fixtures/proxy.py)."""
from __future__ import annotations

import pytest


@pytest.fixture
def member(accounts) -> dict:
    return accounts.signed_in()
