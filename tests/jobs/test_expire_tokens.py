"""The token expiry sweep: each expired token gets its `token.expired` event, its session ended and its cache
entry cleared — once, however often and on however many workers the sweep runs."""
from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.fixtures.race import race_in_app_contexts
from tests.support import postgres_only
from zenzefi_backend.clock import travel
from zenzefi_backend.extensions import db
from zenzefi_backend.notifications.models import OutboxEvent
from zenzefi_backend.tokens.expiry import expire_tokens
from zenzefi_backend.tokens.models import AccessToken

from .helpers import activate, active_sessions, buy_tokens, cached, events

EXPIRED_AGO = timedelta(hours=2)  # a one-hour token activated 2 h ago expired 1 h ago
LIVE_AGO = timedelta(minutes=10)


def processed_at(app, token) -> datetime | None:
    with app.app_context():
        return db.session.scalar(sa.select(AccessToken.expiry_processed_at)
                                 .where(AccessToken.id == uuid.UUID(token["id"])))


def test_run_twice_processes_each_expired_token_once(app, client, accounts):
    expired_a, expired_b, live, ready, revoked = buy_tokens(client, accounts, 5)
    for token in (expired_a, expired_b):
        activate(app, token, EXPIRED_AGO)
    activate(app, live, LIVE_AGO)
    activate(app, revoked, EXPIRED_AGO, session=False, revoked=True)

    with app.app_context():
        assert expire_tokens() == 2
        assert expire_tokens() == 0

    expired_ids = {expired_a["id"], expired_b["id"]}
    assert events(app, "token.expired") == Counter(expired_ids)
    assert events(app, "session.ended", ("token_id", "reason")) == Counter((i, "expired") for i in expired_ids)
    assert active_sessions(app) == Counter({live["id"]: 1})
    assert cached(app, expired_a) == cached(app, expired_b) == (False, False)
    assert cached(app, live) == (True, True)
    assert processed_at(app, expired_a) is not None
    for untouched in (live, ready, revoked):
        assert processed_at(app, untouched) is None


def test_the_event_carries_the_token_and_its_times(app, client, accounts):
    (token,) = buy_tokens(client, accounts, 1)
    activate(app, token, EXPIRED_AGO, session=False, cached=False)
    with app.app_context():
        expire_tokens()
        row = db.session.get(AccessToken, uuid.UUID(token["id"]))
        event = db.session.scalar(sa.select(OutboxEvent).where(OutboxEvent.event_type == "token.expired"))
        assert str(event.user_id) == token["user_id"]
        assert event.payload == {"token_id": token["id"], "activated_at": row.activated_at.isoformat(),
                                 "expires_at": row.expires_at.isoformat(), "duration_hours": 1}
        assert row.status == "expired"


def test_a_token_expiring_later_is_processed_by_a_later_run(app, client, accounts):
    (token,) = buy_tokens(client, accounts, 1)
    activate(app, token, timedelta(minutes=59, seconds=59))
    with app.app_context():
        assert expire_tokens() == 0
        with travel(timedelta(seconds=5)):
            assert expire_tokens() == 1
    assert events(app, "token.expired") == Counter({token["id"]: 1})


def test_more_tokens_than_one_batch(app, client, accounts, monkeypatch):
    monkeypatch.setattr("zenzefi_backend.tokens.expiry.BATCH_SIZE", 2)
    tokens = buy_tokens(client, accounts, 5)
    for token in tokens:
        activate(app, token, EXPIRED_AGO, session=False, cached=False)
    with app.app_context():
        assert expire_tokens() == 5
        assert expire_tokens() == 0
    assert events(app, "token.expired") == Counter(token["id"] for token in tokens)


def test_flask_jobs_run_expire_tokens(app, client, accounts):
    (token,) = buy_tokens(client, accounts, 1)
    activate(app, token, EXPIRED_AGO)
    result = app.test_cli_runner().invoke(args=["jobs", "run", "expire_tokens"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"job": "expire_tokens", "result": {"expired": 1}}
    again = app.test_cli_runner().invoke(args=["jobs", "run", "expire_tokens"])
    assert json.loads(again.output)["result"] == {"expired": 0}


@pytest.mark.postgres
@postgres_only
@pytest.mark.parametrize("workers", [2, 8])
def test_concurrent_sweeps_process_each_token_once(app, client, accounts, workers):
    """`workers` sweeps released at the same instant, several rounds: one event and one session end per token."""
    all_expired: list[dict] = []
    for _ in range(5):
        expired = buy_tokens(client, accounts, 12)
        for token in expired:
            activate(app, token, EXPIRED_AGO)
        results = race_in_app_contexts(app, expire_tokens, workers)
        assert sum(results) == len(expired), results
        all_expired += expired
        expected = Counter(token["id"] for token in all_expired)
        assert events(app, "token.expired") == expected
        assert events(app, "session.ended") == expected
        assert active_sessions(app) == Counter()
        assert all(cached(app, token) == (False, False) for token in expired)
