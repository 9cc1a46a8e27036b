"""Fixtures of the admin tests. The proxy's in-process environment (a recording upstream, an app pointed at it)
is reused from the proxy tests for the tests that need real proxy sessions."""
from __future__ import annotations

import pytest

from tests.proxy.conftest import (  # noqa: F401 - fixtures
    app_cache,
    env,
    fresh_redis_state,
    make_env,
    token,
    upstream,
    upstream_server,
)


@pytest.fixture
def admin(accounts) -> dict:
    return accounts.signed_in(superuser=True)


@pytest.fixture
def member(accounts) -> dict:
    return accounts.signed_in()
