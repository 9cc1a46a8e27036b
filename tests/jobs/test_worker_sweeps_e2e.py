"""`python -m worker` on real PostgreSQL + Redis: its scheduler enqueues the expiry sweep, a forked RQ work
horse runs it, and the expired token gets its event — once, with two workers running."""
from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from rq import Queue
from rq.registry import FinishedJobRegistry

from tests.e2e.harness import Worker, real_services, wait_for
from zenzefi_backend.extensions import get_redis

from .helpers import activate, active_sessions, buy_tokens, cached, events

pytestmark = [pytest.mark.e2e, real_services]


def test_two_workers_run_the_expiry_sweep_and_each_token_expires_once(app, client, accounts, backends):
    tokens = buy_tokens(client, accounts, 6)
    for token in tokens:
        activate(app, token, timedelta(hours=2))
    with Worker(backends.database_url, backends.redis_url, name="worker-a") as first, \
            Worker(backends.database_url, backends.redis_url, name="worker-b") as second:
        workers = (first, second)

        def logs() -> str:
            return "\n".join(worker.logs() for worker in workers)

        wait_for(lambda: all(w.alive() for w in workers) and len(events(app, "token.expired")) == len(tokens), 30,
                 lambda: f"the tokens did not all expire within 30 s: {events(app, 'token.expired')}\n{logs()}")
        with app.app_context():
            finished = FinishedJobRegistry("default", connection=get_redis())
            wait_for(lambda: any(j.startswith("periodic-expire_tokens-") for j in finished.get_job_ids()), 10,
                     lambda: f"the expire_tokens job never finished in RQ\n{logs()}")
            failed = Queue("default", connection=get_redis()).failed_job_registry.get_job_ids()
            assert not [j for j in failed if j.startswith("periodic-expire_tokens-")], logs()
    assert events(app, "token.expired") == Counter(token["id"] for token in tokens)
    assert events(app, "session.ended") == Counter(token["id"] for token in tokens)
    assert active_sessions(app) == Counter()
    assert all(cached(app, token) == (False, False) for token in tokens)
