"""PostgreSQL restarts under load (issue 14 item 7): gunicorn ×2 answers 503 JSON with `Retry-After` while the
database cannot be reached — the proxy fast path, the JWT revocation check, purchases, revokes, admin
adjustments, logins alike — never a 500, and recovers by itself once the server is back.

The database is a cluster of this test's own (tests/fixtures/postgres_cluster.py), stopped with `pg_ctl -m fast`
(sessions terminated: 57P01), kept down for a while (connection refused) and started again; Redis is the run's.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from decimal import Decimal

import pytest
import sqlalchemy as sa

from tests.e2e.harness import Gunicorn, Response, Upstream, real_services, wait_for

pytestmark = pytest.mark.e2e

CLIENTS = 6
DOWN_FOR_SECONDS = 3.0
PROXY = "/api/v1/proxy"
# This test is about the database, not about rate limits (all its clients share one address).
UNLIMITED = {"RATELIMIT_ENABLED": "false"}


def sql(database_url: str, statement: str, **params) -> list[tuple]:
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"),
                              poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            result = connection.execute(sa.text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


class Load:
    """Client threads that keep calling the API until stopped, recording every answer by kind of request."""

    def __init__(self, server: Gunicorn, admin: dict, users: list[dict]):
        self.server = server
        self.admin = admin
        self.users = users
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.answers: dict[str, list[Response]] = defaultdict(list)
        self.timeline: list[tuple[float, str, int]] = []  # (when it was answered, kind, status)
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(user,), daemon=True, name=f"load-{index}")
                        for index, user in enumerate(users)]

    def _record(self, kind: str, answer: Response) -> Response:
        with self.lock:
            self.answers[kind].append(answer)
            self.timeline.append((time.monotonic(), kind, answer.status))
        return answer

    def _call(self, kind: str, method: str, path: str, body: object = None, headers: dict | None = None):
        try:
            return self._record(kind, self.server.call(method, path, body, headers))
        except OSError as exc:  # the server itself must stay up: a refused or broken connection is a failure too
            with self.lock:
                self.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
            return None

    def _run(self, user: dict) -> None:
        headers = user["headers"]
        while not self.stopped.is_set():
            self._call("me", "GET", "/api/v1/users/me", headers=headers)
            self._call("balance", "GET", "/api/v1/currency/balance", headers=headers)
            self._call("proxy_known", "GET", f"{PROXY}/certificates/list",
                       headers={"X-Access-Token": user["token"], "X-Device-ID": user["device"]})
            # An unknown secret is never in the cache: every one of these asks PostgreSQL.
            self._call("proxy_unknown", "GET", f"{PROXY}/certificates/list",
                       headers={"X-Access-Token": uuid.uuid4().hex * 2, "X-Device-ID": user["device"]})
            bought = self._call("purchase", "POST", "/api/v1/tokens/purchase", {"duration_hours": 1}, headers)
            if bought is not None and bought.status == 201:
                self._call("revoke", "DELETE", f"/api/v1/tokens/{bought.json()['id']}", headers=headers)
            self._call("adjust", "POST", f"/api/v1/admin/users/{user['id']}/balance-adjustments",
                       {"amount": "1.00", "reason": "load"}, self.admin["headers"])
            self._call("login", "POST", "/api/v1/auth/login", {"email": user["email"], "password": "correct horse 1"})

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def count(self) -> int:
        with self.lock:
            return sum(len(answers) for answers in self.answers.values())

    def statuses(self) -> dict[str, Counter]:
        with self.lock:
            return {kind: Counter(answer.status for answer in answers) for kind, answers in self.answers.items()}

    def first_success_after(self, moment: float) -> dict[str, float]:
        """For each kind of request, how long after `moment` it was first answered without a 5xx."""
        found: dict[str, float] = {}
        with self.lock:
            for when, kind, status in self.timeline:
                if when >= moment and status < 500 and kind not in found:
                    found[kind] = when - moment
        return found

    def all_answers(self) -> list[tuple[str, Response]]:
        with self.lock:
            return [(kind, answer) for kind, answers in self.answers.items() for answer in answers]


def sign_up_funded(server: Gunicorn, database_url: str, admin: dict | None) -> dict:
    user = server.sign_up()
    if admin is not None:
        adjusted = server.call("POST", f"/api/v1/admin/users/{user['id']}/balance-adjustments",
                               {"amount": "500.00", "reason": "funding"}, admin["headers"])
        assert adjusted.status == 201, adjusted
    return user


@real_services
def test_postgres_restart_under_load_answers_503_never_500_and_recovers(own_postgres, services):
    with Upstream() as upstream, Gunicorn(own_postgres.url, services.redis_url,
                                          {"ZENZEFI_UPSTREAM_URL": upstream.url, **UNLIMITED}) as server:
        admin = server.sign_up()
        sql(own_postgres.url, "UPDATE users SET is_superuser = true WHERE id = :id", id=admin["id"])
        users = []
        for index in range(CLIENTS):
            user = sign_up_funded(server, own_postgres.url, admin)
            bought = server.call("POST", "/api/v1/tokens/purchase", {"duration_hours": 24}, user["headers"])
            assert bought.status == 201, bought
            user.update(token=bought.json()["token"], device=f"{index:020x}")
            first = server.get(f"{PROXY}/certificates/list",
                               {"X-Access-Token": user["token"], "X-Device-ID": user["device"]})
            assert first.status == 200, first
            users.append(user)

        with Load(server, admin, users) as load:
            wait_for(lambda: load.count() >= 100, 30, lambda: server.describe("the load did not get going"))
            before_outage = load.count()
            own_postgres.restart(down_for=DOWN_FOR_SECONDS)
            assert load.count() > before_outage
            back_at = time.monotonic()
            expected = {"me", "balance", "proxy_known", "proxy_unknown", "purchase", "revoke", "adjust", "login"}
            # Recovery by itself: every kind of request succeeds again within seconds of the server's return.
            wait_for(lambda: expected <= set(load.first_success_after(back_at)), 20,
                     lambda: server.describe(f"not every request recovered: {load.first_success_after(back_at)}, "
                                             f"statuses {load.statuses()}"))
            recovered = load.first_success_after(back_at)
            time.sleep(1)
        statuses = load.statuses()
        answers = load.all_answers()

        assert not load.failures, load.failures[:10]
        server_errors = [(kind, answer) for kind, answer in answers if answer.status == 500]
        assert not server_errors, (f"{len(server_errors)} answers were 500: {server_errors[:5]}\n"
                                   f"{statuses}\n{server.logs(80)}")
        unavailable = [(kind, answer) for kind, answer in answers if answer.status == 503]
        # The restart was seen: otherwise this test would prove nothing.
        assert unavailable, f"no 503 during the restart ({before_outage} before, {len(answers)} in all): {statuses}"
        for kind, answer in unavailable:
            body = answer.json()
            assert body["code"] == 503 and body["status"] == "Service Unavailable" and body["message"], (kind, body)
            assert int(answer.headers["Retry-After"]) >= 1 and body["retry_after"] == int(answer.headers["Retry-After"])
        assert {kind for kind, _ in unavailable} >= {"me", "balance", "proxy_unknown", "purchase", "adjust", "login"}, \
            statuses
        assert all(status < 500 or status in (502, 503) for counter in statuses.values() for status in counter), \
            statuses

        # No half-done work: the ledger still verifies, and every balance equals the sum of its entries.
        verify = server.call("GET", "/api/v1/admin/ledger/verify", headers=admin["headers"])
        assert verify.status == 200 and verify.json()["ok"] is True, verify
        for user in users:
            balance = Decimal(server.call("GET", "/api/v1/currency/balance", headers=user["headers"]).json()["balance"])
            (entries,) = sql(own_postgres.url, "SELECT COALESCE(SUM(amount), 0) FROM transactions WHERE user_id = :id",
                             id=user["id"])
            assert balance == entries[0], (user["id"], balance, entries)
        print(f"\nanswers by kind during the restart (down {DOWN_FOR_SECONDS} s): "
              f"{ {kind: dict(counter) for kind, counter in statuses.items()} }; recovered after {recovered}")
