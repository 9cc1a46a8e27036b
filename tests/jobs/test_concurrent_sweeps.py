"""The minutely proxy-session sweep and the daily delivery-log retention, each run by several workers at the
same instant (real PostgreSQL): every session is closed once, every old row deleted once."""
from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.fixtures.race import race_in_app_contexts
from tests.support import postgres_only
from zenzefi_backend import clock
from zenzefi_backend.extensions import db
from zenzefi_backend.jobs.notifications import delivery_log_retention
from zenzefi_backend.jobs.proxy import sweep_proxy_sessions
from zenzefi_backend.notifications.models import EmailMessage, OutboxEvent

from .helpers import activate, active_sessions, buy_tokens, events

pytestmark = [pytest.mark.postgres, postgres_only]

IDLE_AGO = timedelta(minutes=10)  # past SESSION_IDLE_SECONDS (300 s), within the one-hour token's life


def test_concurrent_proxy_sweeps_close_each_idle_session_once(app, client, accounts):
    tokens = buy_tokens(client, accounts, 12)
    for token in tokens:
        activate(app, token, IDLE_AGO, cached=False)
    results = race_in_app_contexts(app, lambda: sweep_proxy_sessions()["closed"], threads=4)
    assert sum(results) == len(tokens), results
    assert events(app, "session.ended") == Counter(token["id"] for token in tokens)
    assert active_sessions(app) == Counter()


def test_concurrent_retention_runs_delete_each_old_row_once(app):
    old = clock.now() - timedelta(days=40)
    with app.app_context():
        db.session.execute(sa.insert(OutboxEvent), [
            {"id": uuid.uuid4(), "event_type": "balance.low", "payload": {}, "created_at": old, "dispatched_at": old,
             "attempts": 1} for _ in range(300)])
        db.session.execute(sa.insert(EmailMessage), [
            {"id": uuid.uuid4(), "to_address": "a@example.com", "kind": "balance_low", "subject": "s",
             "status": "sent", "attempts": 1, "next_attempt_at": old, "created_at": old, "sent_at": old}
            for _ in range(300)])
        db.session.commit()
    results = race_in_app_contexts(app, delivery_log_retention, threads=4)
    assert sum(result["outbox_events"] for result in results) == 300
    assert sum(result["emails"] for result in results) == 300
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(OutboxEvent)) == 0
        assert db.session.scalar(sa.select(sa.func.count()).select_from(EmailMessage)) == 0
