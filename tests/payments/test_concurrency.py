"""20 deliveries of one signed webhook at the same instant credit the balance exactly once (real PostgreSQL).

Each thread has its own `app.test_client()` (its own app context, DB session and pooled connection); a
`threading.Barrier` releases them together. Races are probabilistic, so each runs for several rounds.
"""
from __future__ import annotations

from collections import Counter

import pytest

from tests.fixtures.race import race
from tests.support import postgres_only

from .helpers import assert_ledger_consistent, balance, create_payment, deposits, event, status_of

pytestmark = [pytest.mark.postgres, postgres_only]

THREADS = 20
ROUNDS = 5




def outcomes(responses) -> Counter:
    return Counter((r.status_code, r.get_json()["processed"]) for r in responses)


def test_twenty_concurrent_deliveries_of_one_event_credit_once(app, client, provider, accounts):
    for _ in range(ROUNDS):
        user = accounts.signed_in()
        payment_id = create_payment(client, user).get_json()["payment_id"]
        body = event(payment_id)
        results = race(app, [lambda c, body=body: provider.deliver(body, client=c)] * THREADS)
        assert outcomes(results) == Counter({(200, True): 1, (200, False): THREADS - 1})
        assert balance(client, user) == "100.00"
        assert len(deposits(app, user["id"])) == 1
        assert status_of(client, user, payment_id) == "succeeded"
    assert_ledger_consistent(app)


def test_twenty_concurrent_distinct_events_for_one_payment_credit_once(app, client, provider, accounts):
    """A provider that sends several different success events (or a success racing a cancel) still pays once."""
    for _ in range(ROUNDS):
        user = accounts.signed_in()
        payment_id = create_payment(client, user).get_json()["payment_id"]
        bodies = [event(payment_id, "payment.canceled" if i % 4 == 0 else "payment.succeeded")
                  for i in range(THREADS)]
        results = race(app, [lambda c, b=b: provider.deliver(b, client=c) for b in bodies])
        assert outcomes(results) == Counter({(200, True): 1, (200, False): THREADS - 1})
        status = status_of(client, user, payment_id)
        assert status in ("succeeded", "canceled")
        assert balance(client, user) == ("100.00" if status == "succeeded" else "0.00")
        assert len(deposits(app, user["id"])) == (1 if status == "succeeded" else 0)
    assert_ledger_consistent(app)


def test_concurrent_pay_clicks_on_the_mock_checkout_credit_once(app, client, accounts):
    user = accounts.signed_in()
    payment_id = create_payment(client, user).get_json()["payment_id"]
    results = race(app, [lambda c: c.post(f"/api/v1/payments/mock/{payment_id}/succeed")] * THREADS)
    assert {r.status_code for r in results} == {200}
    assert balance(client, user) == "100.00" and len(deposits(app, user["id"])) == 1

