"""Fixtures of the analytics tests. The proxy's in-process environment (a recording upstream on 127.0.0.1, an app
pointed at it) is reused from the proxy tests, so usage is made by real proxied requests."""
from __future__ import annotations

from tests.proxy.conftest import (  # noqa: F401 - fixtures
    app_cache,
    env,
    fresh_redis_state,
    make_env,
    upstream,
    upstream_server,
)
