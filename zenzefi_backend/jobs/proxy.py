"""Proxy session upkeep: counters from Redis into PostgreSQL, idle sessions closed."""
from __future__ import annotations

from ..proxy.sessions import close_idle_sessions, flush_counters


def sweep_proxy_sessions() -> dict[str, int]:
    return {"flushed": flush_counters(), "closed": close_idle_sessions()}
