"""Business and proxy metrics (SPEC §3.11), counted where the events happen.

Plain prometheus_client metrics: in gunicorn's multiprocess mode they are written per process and summed
at scrape time, so `/metrics` is right whichever worker answers.

Business counters move only when the change they count is committed: services call `count(...)` inside
their DB transaction and the increment waits for that transaction's commit (a rolled-back purchase is never
counted). The gauges are computed from the database and Redis just before `/metrics` renders: the view sends
`metrics_requested`, the factory connects `refresh_gauges` to it, which runs what the factory listed
(`compute_gauges_with`), each defined in the package that holds its data. Each worker writes what it computed,
and in multiprocess mode the most recent value wins (`livemostrecent`), so every worker reports the same figure.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

import sqlalchemy as sa
from prometheus_client import Counter, Gauge, Histogram

from .database import after_commit, db

log = logging.getLogger(__name__)

proxy_requests = Counter("proxy_requests_total", "Proxied requests by method and answer status",
                         ["method", "status"])
proxy_latency = Histogram("proxy_latency_seconds", "Time from request to upstream response headers",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
proxy_bytes = Counter("proxy_bytes_total", "Bytes through the proxy by direction", ["direction"])
token_validations = Counter("token_validations_total", "Access-token checks by result", ["result"])

auth_attempts = Counter("auth_attempts_total", "Logins by result (success, failure)", ["result"])
token_purchases = Counter("token_purchases_total", "Access tokens sold (single and bundle tokens) by duration",
                          ["duration_hours"])
token_revocations = Counter("token_revocations_total", "Access tokens revoked (by their owner or an admin)")
znc_revenue = Counter("znc_revenue_total", "ZNC spent on tokens, bundles and plans (gross, before refunds)")
balance_deposits = Counter("balance_deposits_total", "Balance top-ups credited (provider webhook, mock purchase)")
referral_bonuses = Counter("referral_bonuses_total", "Referral bonuses awarded")
emails_sent = Counter("emails_sent_total", "E-mails sent by kind", ["kind"])
webhook_deliveries = Counter("webhook_deliveries_total", "Outgoing webhook deliveries by result", ["result"])

active_tokens = Gauge("active_tokens", "Access tokens activated, not revoked and not expired",
                      multiprocess_mode="livemostrecent")
active_sessions = Gauge("active_sessions", "Open proxy sessions", multiprocess_mode="livemostrecent")
total_users = Gauge("total_users", "Registered users", multiprocess_mode="livemostrecent")
rq_queue_depth = Gauge("rq_queue_depth", "Jobs waiting in each RQ queue", ["queue"],
                       multiprocess_mode="livemostrecent")


def count(counter: Counter, amount: int | Decimal = 1, **labels: str) -> None:
    """Increment `counter` once the session's current transaction commits (at once when none is open).

    A rollback, or a session closed without a commit, drops the increment.
    """
    target = counter.labels(**labels) if labels else counter
    after_commit(lambda: target.inc(float(amount)))


# What each gauge shows, defined next to its data (accounts, tokens, proxy, jobs); the factory lists them.
_gauge_counts: dict[Gauge, Callable[[], sa.Select]] = {}
_gauge_refreshers: list[Callable[[], None]] = []


def compute_gauges_with(counts: Mapping[Gauge, Callable[[], sa.Select]],
                        refreshers: Sequence[Callable[[], None]] = ()) -> None:
    """What `refresh_gauges` computes: `counts` are one-row SELECTs of a number, run together in one round trip;
    each of `refreshers` sets some gauges from elsewhere (Redis)."""
    _gauge_counts.clear()
    _gauge_counts.update(counts)
    _gauge_refreshers[:] = refreshers


def refresh_gauges(*_sender: object, **_extra: object) -> None:
    """Compute the gauges now. A dependency that is down leaves the gauges it feeds as they were; `/metrics`
    still answers."""
    counts = dict(_gauge_counts)
    if counts:
        try:
            figures = db.session.execute(sa.select(*(count().scalar_subquery() for count in counts.values()))).one()
            for gauge, figure in zip(counts, figures, strict=True):
                gauge.set(figure)
        except Exception:
            log.warning("metrics: cannot count the database gauges", exc_info=True)
        finally:
            db.session.rollback()
    for refresh in list(_gauge_refreshers):
        try:
            refresh()
        except Exception:
            log.warning("metrics: %s failed; its gauges keep their last value", refresh.__qualname__, exc_info=True)
