"""20 purchases of one bundle at the same instant with the balance for exactly one (real PostgreSQL).

Each thread has its own `app.test_client()` (its own app context, DB session and pooled connection); a
`threading.Barrier` releases them together. Races are probabilistic, so each runs for several rounds.
"""
from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest

from tests.fixtures.race import race
from tests.money.helpers import assert_chained, assert_ledger_verifies, balance, ledger, tokens
from tests.support import balance_watch, postgres_only

from .helpers import purchase_path

pytestmark = [pytest.mark.postgres, postgres_only]

THREADS = 20
ROUNDS = 5


def buyer(bundle_id: str, headers: dict[str, str]):
    return lambda client: client.post(purchase_path(bundle_id), headers=headers)


def test_concurrent_bundle_purchases_spend_an_exact_balance_once(app, backends, client, catalogue, admin, accounts):
    developer = catalogue["Developer Pack"]
    for _ in range(ROUNDS):
        user = accounts.signed_in()
        accounts.fund(user["id"], "850.00")
        with balance_watch(backends.database_url, user["id"]) as seen:
            responses = race(app, [buyer(developer["id"], user["headers"])] * THREADS)
        assert min(seen) >= 0 and set(seen) <= {Decimal("850.00"), Decimal("0.00")}, sorted(set(seen))
        assert Counter(r.status_code for r in responses) == Counter({201: 1, 402: THREADS - 1}), \
            [(r.status_code, r.get_json()) for r in responses]
        for response in responses:
            if response.status_code == 402:
                assert (response.get_json()["required"], response.get_json()["available"]) == ("850.00", "0.00")
        (winner,) = [r.get_json() for r in responses if r.status_code == 201]
        assert winner["tokens_generated"] == 10 and winner["new_balance"] == "0.00"
        assert balance(client, user) == Decimal("0.00")
        assert len(ledger(client, user, "purchase")) == 1
        assert {token["id"] for token in tokens(client, user)} == {token["id"] for token in winner["tokens"]}
        assert_chained(ledger(client, user))
        assert_ledger_verifies(client, admin)
