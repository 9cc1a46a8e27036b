"""Double-spend races against real PostgreSQL: many threads hit one balance or one token at the same instant.

Each thread has its own `app.test_client()` (its own app context, DB session and pooled connection); a
`threading.Barrier` releases them together. Races are probabilistic, so each one runs for several rounds,
each round on a fresh user. The last test does the same over HTTP through gunicorn with 2 workers.
Every race runs twice: straight to PostgreSQL and through PgBouncer in transaction pooling mode (`database_route`).
"""
from __future__ import annotations

import http.client
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.e2e.harness import LOOPBACK, Gunicorn, Response, real_services
from tests.fixtures.race import race, together
from tests.money.helpers import (
    BALANCE,
    PURCHASE,
    adjust,
    assert_chained,
    assert_ledger_verifies,
    balance,
    fund,
    ledger,
    money,
    token_path,
    tokens,
)
from tests.support import app_config, balance_watch, postgres_only

pytestmark = [pytest.mark.postgres, postgres_only]

THREADS = 20
ROUNDS = 10
PRICE_24H = Decimal("18.00")
DAY = {"duration_hours": 24}


def statuses(responses) -> Counter:
    return Counter(response.status_code for response in responses)


def unexpected(responses, allowed: set[int]) -> list:
    return [(r.status_code, r.get_json()) for r in responses if r.status_code not in allowed]


def buy(headers: dict[str, str], key: str | None = None) -> Callable[[FlaskClient], Any]:
    headers = {**headers, "Idempotency-Key": key} if key else headers
    return lambda client: client.post(PURCHASE, json=DAY, headers=headers)


def revoke(token_id: str, headers: dict[str, str]) -> Callable[[FlaskClient], Any]:
    return lambda client: client.delete(token_path(token_id), headers=headers)


def debit(admin: dict, user_id: str, amount: Decimal) -> Callable[[FlaskClient], Any]:
    return lambda client: adjust(client, admin, user_id, -amount, reason="race")


@pytest.fixture(scope="session")
def app(app, database_route, backends, tmp_path_factory):
    """The races' app: the suite's own, or one on the same database through PgBouncer."""
    if not database_route.pooled:
        return app
    from zenzefi_backend import create_app

    return create_app(app_config(backends, tmp_path_factory.mktemp("instance-pgbouncer"), **database_route.config))


def funded_user(accounts, client, admin, amount: Decimal) -> dict:
    user = accounts.signed_in()
    fund(client, admin, user, amount)
    return user


def assert_one_purchase(client: FlaskClient, admin: dict, user: dict, expected_balance: Decimal) -> None:
    assert balance(client, user) == expected_balance
    assert_chained(ledger(client, user))
    assert len(ledger(client, user, "purchase")) == 1
    assert len(tokens(client, user)) == 1
    assert_ledger_verifies(client, admin)


def assert_purchase_race_outcome(responses) -> dict:
    """Exactly one 201; every other answer is a 402 that saw the winner's debit. Returns the winner's body."""
    assert not unexpected(responses, {201, 402}), unexpected(responses, {201, 402})
    assert statuses(responses) == Counter({201: 1, 402: THREADS - 1}), statuses(responses)
    for response in responses:
        if response.status_code == 402:
            body = response.get_json()
            assert (body["required"], body["available"]) == ("18.00", "0.00"), body
    (winner,) = [response.get_json() for response in responses if response.status_code == 201]
    assert winner["paid_znc"] == "18.00" and winner["status"] == "ready", winner
    return winner


def test_concurrent_purchases_spend_an_exact_balance_once(app, backends, client, accounts, admin):
    for _ in range(ROUNDS):
        user = funded_user(accounts, client, admin, PRICE_24H)
        with balance_watch(backends.database_url, user["id"]) as seen:
            responses = race(app, [buy(user["headers"])] * THREADS)
        assert min(seen) >= 0
        assert_purchase_race_outcome(responses)
        assert_one_purchase(client, admin, user, Decimal("0.00"))


def test_concurrent_purchases_with_distinct_idempotency_keys(app, client, accounts, admin):
    for _ in range(ROUNDS):
        user = funded_user(accounts, client, admin, PRICE_24H)
        keys = [f"race-{uuid.uuid4()}" for _ in range(THREADS)]
        responses = race(app, [buy(user["headers"], key) for key in keys])
        winner = assert_purchase_race_outcome(responses)
        assert_one_purchase(client, admin, user, Decimal("0.00"))

        # Every key now replays its own stored answer, even after the balance changed.
        fund(client, admin, user, PRICE_24H)
        for key, first in zip(keys, responses, strict=True):
            replay = client.post(PURCHASE, json=DAY, headers={**user["headers"], "Idempotency-Key": key})
            assert replay.status_code == first.status_code
            assert replay.headers.get("Idempotent-Replayed") == "true"
            assert replay.get_json() == first.get_json()
        assert balance(client, user) == PRICE_24H
        assert [row["reference_id"] for row in ledger(client, user, "purchase")] == [winner["id"]]


def test_concurrent_purchases_sharing_one_idempotency_key_execute_once(app, client, accounts, admin):
    for _ in range(ROUNDS):
        # Enough for two purchases, so a second execution would show as a second debit, not as a 402.
        user = funded_user(accounts, client, admin, 2 * PRICE_24H)
        responses = race(app, [buy(user["headers"], f"shared-{uuid.uuid4()}")] * THREADS)

        assert not unexpected(responses, {201, 409}), unexpected(responses, {201, 409})
        executed = [r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r.headers]
        replayed = [r for r in responses if r.status_code == 201 and "Idempotent-Replayed" in r.headers]
        in_flight = [r for r in responses if r.status_code == 409]
        assert len(executed) == 1, statuses(responses)
        assert len(executed) + len(replayed) + len(in_flight) == THREADS
        body = executed[0].get_json()
        for response in replayed:
            assert response.headers["Idempotent-Replayed"] == "true"
            assert response.get_json() == body
        assert_one_purchase(client, admin, user, PRICE_24H)
        assert ledger(client, user, "purchase")[0]["reference_id"] == body["id"]


def test_concurrent_revokes_refund_once(app, backends, client, accounts, admin):
    for _ in range(ROUNDS):
        user = funded_user(accounts, client, admin, PRICE_24H)
        bought = client.post(PURCHASE, json=DAY, headers=user["headers"])
        assert bought.status_code == 201, bought.get_json()
        token_id = bought.get_json()["id"]

        with balance_watch(backends.database_url, user["id"]) as seen:
            responses = race(app, [revoke(token_id, user["headers"])] * THREADS)
        assert set(seen) <= {Decimal("0.00"), PRICE_24H}, sorted(set(seen))

        assert not unexpected(responses, {200, 404}), unexpected(responses, {200, 404})
        assert statuses(responses) == Counter({200: 1, 404: THREADS - 1}), statuses(responses)
        (result,) = [r.get_json() for r in responses if r.status_code == 200]
        assert result["revoked"] is True
        assert (result["refund_amount"], result["new_balance"]) == ("18.00", "18.00"), result
        refunds = ledger(client, user, "refund")
        assert [(row["amount"], row["reference_id"]) for row in refunds] == [("18.00", token_id)]
        assert balance(client, user) == PRICE_24H
        assert_chained(ledger(client, user))
        token = client.get(token_path(token_id), headers=user["headers"]).get_json()
        assert token["status"] == "revoked", token
        assert_ledger_verifies(client, admin)


def test_concurrent_debits_never_overdraw(app, backends, client, accounts, admin):
    chance = random.Random(20260105)
    for _ in range(ROUNDS):
        start = Decimal(chance.randint(50_00, 120_00)) / 100
        user = funded_user(accounts, client, admin, start)
        amounts = [Decimal(chance.randint(1_00, 15_00)) / 100 for _ in range(THREADS)]
        assert sum(amounts) > start  # together they would overdraw
        with balance_watch(backends.database_url, user["id"]) as seen:
            responses = race(app, [debit(admin, user["id"], amount) for amount in amounts])
        assert min(seen) >= 0, min(seen)

        assert not unexpected(responses, {201, 409}), unexpected(responses, {201, 409})
        taken = [amount for amount, r in zip(amounts, responses, strict=True) if r.status_code == 201]
        refused = [amount for amount, r in zip(amounts, responses, strict=True) if r.status_code == 409]
        assert taken and refused, statuses(responses)
        final = start - sum(taken)
        assert 0 <= final == balance(client, user)
        # The balance only went down during the race, so each refused debit was bigger than what is left.
        assert all(amount > final for amount in refused), (final, refused)
        # Each successful debit saw a distinct balance; together they form one chain from `start` to `final`.
        afters = sorted((Decimal(r.get_json()["balance_after"]) for r in responses if r.status_code == 201),
                        reverse=True)
        assert len(set(afters)) == len(afters) and afters[-1] == final
        rows = ledger(client, user)
        assert len(rows) == 1 + len(taken)
        assert_chained(rows)
        assert_ledger_verifies(client, admin)


def send(server: Gunicorn, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> Response:
    """One request with an optional JSON body on a fresh connection (the harness's `request` sends no body)."""
    payload = None if body is None else json.dumps(body).encode()
    all_headers = {"Connection": "close", **(headers or {})}
    if payload is not None:
        all_headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=timeout)
    started = time.perf_counter()
    try:
        connection.request(method, path, body=payload, headers=all_headers)
        answer = connection.getresponse()
        data = answer.read()
    finally:
        connection.close()
    return Response(answer.status, dict(answer.getheaders()), data, time.perf_counter() - started)


@pytest.mark.e2e
@real_services
def test_http_purchase_race_through_gunicorn(backends, database_route, client, accounts, admin):
    with Gunicorn(database_route.url, backends.redis_url, database_route.env) as server:
        for _ in range(3):
            user = funded_user(accounts, client, admin, PRICE_24H)
            login = send(server, "POST", "/api/v1/auth/login", {"email": user["email"], "password": user["password"]})
            assert login.status == 200, server.describe(repr(login))
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

            def purchase(headers=headers) -> Response:
                return send(server, "POST", PURCHASE, DAY, headers)

            responses = together([purchase] * THREADS)

            seen = Counter(response.status for response in responses)
            assert seen == Counter({201: 1, 402: THREADS - 1}), server.describe(f"{seen}: {responses}")
            answer = send(server, "GET", BALANCE, headers=headers)
            assert answer.status == 200 and answer.json()["balance"] == money(0), answer
            assert_one_purchase(client, admin, user, Decimal("0.00"))
