"""Redis behind Sentinels: gunicorn (2 workers) and `python -m worker` with `REDIS_URL=redis+sentinel://…`, against
real `redis-server` (a primary and a replica) and three real `redis-sentinel` processes, on real PostgreSQL.

The primary is killed under proxy and purchase load: the service keeps answering (from PostgreSQL while no
primary can be reached, SPEC §3.6), follows the replica the Sentinels promote, and loses no outbox event,
webhook or e-mail; the ledger verifies. Sentinels that name no primary at all: readiness says so (503 JSON),
the rest keeps working, and everything comes back by itself once they name one again.

The worker waits for Redis and reconnects by itself (worker/reconnect.py); it still runs under a restart policy, as
compose runs it (`restart: unless-stopped`), and the test prints how often that policy had to act.
"""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
import sqlalchemy as sa
from rq import Worker as RqWorker

from tests.e2e.harness import (
    DEVICE_A,
    DEVICE_B,
    LOOPBACK,
    PROXY,
    PURCHASE,
    Gunicorn,
    SentinelCluster,
    Upstream,
    Worker,
    counted,
    real_services,
    wait_for,
)
from tests.fixtures.webhooks import Receiver, verify_signature
from tests.money.helpers import assert_ledger_verifies
from tests.support import SmtpSink
from zenzefi_backend.notifications.email import LEASE as EMAIL_LEASE

pytestmark = [pytest.mark.e2e, real_services]

ENDPOINTS = "/api/v1/webhooks/endpoints"
MOCK_PURCHASE = "/api/v1/currency/mock-purchase"
EVENTS = ["balance.topped_up", "token.purchased"]
RECEIPT = "Receipt: 5.00 ZNC added to your balance"
BUYERS = 3
LOAD_BEFORE_SECONDS = 2.0
LOAD_AFTER_WARM_SECONDS = 2.0
WARM_AGAIN_LIMIT_SECONDS = 30.0


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    with SentinelCluster() as started:
        yield started


@dataclass
class Stack:
    server: Gunicorn
    worker: Worker
    cluster: SentinelCluster

    def logs(self) -> str:
        return f"{self.server.logs()}\n{self.worker.logs()}\n{self.cluster.logs()}"


@pytest.fixture
def stack(services, cluster, smtp_sink, receiver) -> Iterator[Stack]:
    with Upstream() as upstream:
        env = {"ZENZEFI_UPSTREAM_URL": upstream.url, "SMTP_HOST": LOOPBACK, "SMTP_PORT": str(smtp_sink.port),
               "RATELIMIT_API_FREE": "1000000"}  # the load is a few users making many calls
        with Gunicorn(services.database_url, cluster.url, env) as server, \
                Worker(services.database_url, cluster.url, extra_env=env, restart=True) as worker:
            with cluster.client() as client:  # the worker is up once it has registered itself
                wait_for(lambda: worker.alive() and RqWorker.count(connection=client) >= 1, 30,
                         lambda: f"the worker did not register\n{worker.logs()}")
            yield Stack(server, worker, cluster)


def proxied(server: Gunicorn, secret: str, device: str = DEVICE_A, path: str | None = None):
    return server.get(f"{PROXY}{path or '/certificates/' + uuid.uuid4().hex[:8]}",
                      headers={"X-Access-Token": secret, "X-Device-ID": device}, timeout=10)


def cache_hits(server: Gunicorn) -> float:
    answer = server.get("/metrics")
    assert answer.status == 200, answer
    return counted(answer.text, "token_validations_total", result="cache_hit")


@dataclass
class Buyer:
    """A user with a webhook endpoint who tops up and buys, recording every answer."""

    user: dict
    secret: str = ""
    answers: list[tuple[str, int]] = field(default_factory=list)
    token_ids: list[str] = field(default_factory=list)

    def round(self, server: Gunicorn) -> None:
        topped = server.call("POST", MOCK_PURCHASE, {"amount": "5"}, self.user["headers"])
        self.answers.append(("top-up", topped.status))
        bought = server.call("POST", PURCHASE, {"duration_hours": 1}, self.user["headers"])
        self.answers.append(("purchase", bought.status))
        if bought.status == 201:
            self.token_ids.append(bought.json()["id"])

    @property
    def top_ups(self) -> int:
        return sum(1 for kind, status in self.answers if kind == "top-up" and status in (200, 201))


def buyers_for(stack: Stack, accounts, receiver: Receiver) -> list[Buyer]:
    buyers = []
    for _ in range(BUYERS):
        buyer = Buyer(accounts.signed_in())
        created = stack.server.call("POST", ENDPOINTS, {"url": receiver.url(), "events": EVENTS},
                                    buyer.user["headers"])
        assert created.status == 201, stack.server.describe(repr(created))
        buyer.secret = created.json()["secret"]
        buyers.append(buyer)
    return buyers


def assert_one_api_counter(server: Gunicorn, user: dict) -> None:
    """Flask-Limiter counts in the Sentinels' primary: one countdown for both gunicorn workers. The limit's fixed
    window may end during the check (the countdown starts again from the top): then the check starts again too."""
    for _ in range(3):
        remaining: list[int] = []
        for _ in range(20):  # fresh connections, until both workers have answered (which one accepts is up to them)
            answer = server.call("GET", "/api/v1/users/me", headers=user["headers"])
            assert answer.status == 200, server.describe(repr(answer))
            remaining.append(int(answer.headers["X-RateLimit-Remaining"]))
            if len(remaining) >= 6 and len(set(server.served("GET", "/api/v1/users/me"))) == server.workers:
                break
        if all(later < earlier for earlier, later in itertools.pairwise(remaining)):
            break  # no new window began during this round
    assert remaining == list(range(remaining[0], remaining[0] - len(remaining), -1)), f"not one counter: {remaining}"
    assert len(set(server.served("GET", "/api/v1/users/me"))) == server.workers


def warm_token(stack: Stack, accounts) -> str:
    owner = accounts.signed_in()
    accounts.fund(owner["id"], "100.00")
    bought = stack.server.call("POST", PURCHASE, {"duration_hours": 24}, owner["headers"])
    assert bought.status == 201, stack.server.describe(repr(bought))
    secret = bought.json()["token"]
    for _ in range(6):  # fresh connections: both workers cache it
        assert proxied(stack.server, secret).status == 200
    return secret


def query(database_url: str, statement: str, **params) -> list:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(statement), params).all()
    finally:
        engine.dispose()


def email_id(message) -> str:
    """Our e-mails' Message-ID ends with the id of their row: `<time.pid.random.ROWID@zenzefi>`."""
    return message["Message-ID"].strip("<>").split("@")[0].rsplit(".", 1)[-1]


def assert_nothing_lost(stack: Stack, database_url: str, buyers: list[Buyer], receiver: Receiver,
                        smtp_sink: SmtpSink) -> None:
    """Every event of the buyers reached their webhook and every top-up its receipt — at least once each (delivery
    is at least once: a worker killed between sending and recording sends again after the attempt's lease)."""
    users = [uuid.UUID(buyer.user["id"]) for buyer in buyers]
    rows = query(database_url, "SELECT id, dispatched_at FROM outbox_events WHERE user_id = ANY(:users) "
                               "AND event_type = ANY(:types)", users=users, types=EVENTS)
    events = {f"msg_{row.id.hex}" for row in rows}
    assert len(events) == sum(buyer.top_ups + len(buyer.token_ids) for buyer in buyers), events
    # The relay turns each event into its deliveries and e-mails (rows again) before anything is sent.
    wait_for(lambda: not query(database_url, "SELECT 1 FROM outbox_events WHERE user_id = ANY(:users) "
                                             "AND dispatched_at IS NULL", users=users),
             90, lambda: f"events not relayed\n{stack.logs()}", step=0.5)
    emails = {row.id.hex for row in query(database_url, "SELECT id FROM email_messages WHERE user_id = ANY(:users)",
                                          users=users)}
    assert len(emails) == sum(buyer.top_ups for buyer in buyers), emails

    def webhooks() -> set[str]:
        return {received.headers["webhook-id"] for received in list(receiver.requests)}

    addresses = {buyer.user["email"] for buyer in buyers}

    def to_buyers() -> list:  # (the token owner's hourly "expires soon" e-mail is none of this test's business)
        return [message for message in list(smtp_sink.messages) if message["To"] in addresses]

    def mails() -> set[str]:
        return {email_id(message) for message in to_buyers()}

    # A worker that died mid-attempt leaves its row leased: sent again once the lease is over (+ the relay's minute).
    wait_for(lambda: webhooks() == events and mails() == emails, EMAIL_LEASE.total_seconds() + 90,
             lambda: (f"webhooks missing {sorted(events - webhooks())}, unexpected {sorted(webhooks() - events)}; "
                      f"e-mails missing {sorted(emails - mails())}, unexpected {sorted(mails() - emails)}\n"
                      f"{stack.logs()}"), step=0.5)
    purchased = {body["data"]["token_id"] for body in (verified(buyers, received) for received in receiver.requests)
                 if body["type"] == "token.purchased"}
    assert purchased == {token_id for buyer in buyers for token_id in buyer.token_ids}
    for message in to_buyers():
        assert message["Subject"] == RECEIPT, message["Subject"]
    assert {message["To"] for message in to_buyers()} == {b.user["email"] for b in buyers if b.top_ups}


def verified(buyers: list[Buyer], received) -> dict:
    """The body of a webhook signed with one of the buyers' secrets (each has an endpoint of their own)."""
    for buyer in buyers:
        try:
            return verify_signature(buyer.secret, received)
        except AssertionError:
            continue
    pytest.fail(f"a webhook signed by no buyer's secret: {received.headers}")


def test_the_primary_dies_under_load_and_everything_follows_the_promoted_replica(
        stack, services, accounts, client, receiver, smtp_sink, record_property):
    server, cluster = stack.server, stack.cluster
    assert cluster.primary_port() == cluster.primary.port
    secret = warm_token(stack, accounts)
    buyers = buyers_for(stack, accounts, receiver)
    admin = accounts.signed_in(superuser=True)
    counted_user = accounts.signed_in()
    assert_one_api_counter(server, counted_user)

    stop = threading.Event()
    proxy_log: list[tuple[float, int, bool, str]] = []  # (when, status, served from the Redis cache, path)

    def proxy_load() -> None:
        # One request at a time, with the cache-hit counter read around it: each answer says which path served it.
        while not stop.is_set():
            path = f"/certificates/{uuid.uuid4().hex[:8]}"
            before = cache_hits(server)
            answer = proxied(server, secret, path=path)
            proxy_log.append((time.monotonic(), answer.status, cache_hits(server) == before + 1, path))

    def purchase_load(buyer: Buyer) -> None:
        while not stop.is_set():
            buyer.round(server)

    threads = [threading.Thread(target=proxy_load, name="proxy-load")]
    threads += [threading.Thread(target=purchase_load, args=(buyer,), name="purchase-load") for buyer in buyers]
    for thread in threads:
        thread.start()
    try:
        time.sleep(LOAD_BEFORE_SECONDS)
        killed_at = time.monotonic()
        cluster.primary.crash()
        wait_for(lambda: cluster.primary_port() == cluster.replica.port, 30,
                 lambda: f"the Sentinels did not promote the replica\n{stack.logs()}", step=0.1)
        promoted_at = time.monotonic()

        def warm_again_at() -> float | None:
            """When every gunicorn worker had served the proxy from the Redis cache again after the kill."""
            first_hit: dict[int, float] = {}
            for when, _status, hit, path in list(proxy_log):
                if hit and when > killed_at:
                    for pid in server.served("GET", PROXY + path):
                        first_hit.setdefault(pid, when)
            return max(first_hit.values()) if len(first_hit) >= server.workers else None

        warm_at = wait_for(warm_again_at, WARM_AGAIN_LIMIT_SECONDS,
                           lambda: f"the proxy did not return to the Redis path\n{stack.logs()}", step=0.2)
        time.sleep(LOAD_AFTER_WARM_SECONDS)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    seconds = {"promoted": round(promoted_at - killed_at, 2), "warm": round(warm_at - killed_at, 2)}
    record_property("sentinel_failover_seconds", seconds)
    print(f"\nprimary killed → replica promoted {seconds['promoted']} s, proxy warm on the Redis path again "
          f"{seconds['warm']} s; {len(proxy_log)} proxied requests, "
          f"{sum(len(b.answers) for b in buyers)} purchase-load requests; worker restarts {stack.worker.restarts}")

    statuses = Counter(status for _, status, _, _ in proxy_log)
    assert statuses == Counter({200: len(proxy_log)}), stack.server.describe(f"proxy answers: {statuses}")
    assert any(when > killed_at and when < promoted_at for when, *_ in proxy_log), "no proxy load during failover"
    for buyer in buyers:
        assert buyer.answers and all(status in (200, 201) for _, status in buyer.answers), \
            server.describe(f"purchase load answers: {Counter(buyer.answers)}")
    assert_one_api_counter(server, counted_user)  # the rate limiter followed the promoted replica too
    # The old primary stays dead: everything now lives on the promoted replica.
    with cluster.replica.client() as promoted:
        assert promoted.info("replication")["role"] == "master"
        assert promoted.dbsize() > 0

    assert_nothing_lost(stack, services.database_url, buyers, receiver, smtp_sink)
    assert_ledger_verifies(client, admin)


def test_sentinels_naming_no_primary_then_one_again(stack, services, accounts, client, receiver, smtp_sink):
    server, cluster = stack.server, stack.cluster
    secret = warm_token(stack, accounts)
    [buyer] = buyers_for(stack, accounts, receiver)[:1]
    admin = accounts.signed_in(superuser=True)
    buyer.round(server)

    cluster.forget_primary()
    # Every client must ask the Sentinels again (as after any reconnect): they answer with no primary.
    with cluster.primary.client() as primary:
        primary.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(redis.exceptions.ConnectionError, match="No master found"):
        cluster.client().ping()

    ready = server.get("/health/ready", timeout=5)
    assert ready.status == 503 and ready.headers["Content-Type"].startswith("application/json"), ready
    assert ready.json()["checks"]["redis"] == "down" and "redis" in ready.json()["message"], ready
    misses = counted(server.get("/metrics").text, "token_validations_total", result="cache_miss")
    for _ in range(6):  # from PostgreSQL, with the device rule, on both workers
        answer = proxied(server, secret)
        assert answer.status == 200, stack.server.describe(repr(answer))
        busy = proxied(server, secret, DEVICE_B)
        assert busy.status == 409 and int(busy.headers["Retry-After"]) >= 1, busy
    assert counted(server.get("/metrics").text, "token_validations_total", result="cache_miss") >= misses + 6
    buyer.round(server)  # the API needs no Redis: the events wait in PostgreSQL
    assert all(status in (200, 201) for _, status in buyer.answers), Counter(buyer.answers)

    cluster.monitor_again(cluster.primary.port)
    wait_for(lambda: server.get("/health/ready").status == 200, 15,
             lambda: f"not ready again after the Sentinels named the primary\n{stack.logs()}")

    def from_cache() -> bool:
        before = cache_hits(server)
        assert proxied(server, secret).status == 200
        return cache_hits(server) == before + 1

    wait_for(from_cache, 15, lambda: f"the proxy did not return to the Redis path\n{stack.logs()}")
    assert_nothing_lost(stack, services.database_url, [buyer], receiver, smtp_sink)
    assert_ledger_verifies(client, admin)
