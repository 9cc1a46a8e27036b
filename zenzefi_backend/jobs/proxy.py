"""Proxy session upkeep: counters from Redis into PostgreSQL (and the daily usage rollup with them), idle
sessions closed, finished days of the ledger rolled up for analytics."""
from __future__ import annotations

from datetime import timedelta

from ..analytics.rollups import close_days
from ..clock import now
from ..proxy.cache import reassert_recent_invalidations
from ..proxy.counters import flush_counters
from ..proxy.sessions import close_idle_sessions

# Longer than the sweep interval, so every revoke is re-asserted at least once after it happened.
REASSERT_WINDOW = timedelta(minutes=10)


def sweep_proxy_sessions() -> dict[str, int]:
    swept = {
        "flushed": flush_counters(),
        "closed": close_idle_sessions(),
        "reasserted": reassert_recent_invalidations(now() - REASSERT_WINDOW),
    }
    close_days()  # cheap when there is nothing to close: one query
    return swept
