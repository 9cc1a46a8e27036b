"""Two hosts, one system: a gunicorn web host (2 workers) in each of two network namespaces — two machines as
far as the network is concerned — against the one PostgreSQL and Redis, as SPEC §6's scale-out promises.

Each namespace is joined to this one by a veth pair (addresses in 10.77.0.0/16 that exist only on those links);
PostgreSQL, Redis and the test's upstream listen on 127.0.0.1 here and are reached from inside through relays
on this side of each link. The test talks to each host at its own address, as a load balancer would, and shows
across hosts: the device rule, the per-plan rate limits, a purchase race, a revocation and the periodic
scheduler; then one host loses its link in the middle of a purchase and nothing is lost.

Needs root for `ip netns` (CI's second pass runs as root); skips with the reason where namespaces cannot be made.
"""
from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import sqlalchemy as sa
from rq import Worker as RqWorker
from sqlalchemy.engine import make_url

from tests.e2e.harness import (
    DEVICE_A,
    DEVICE_B,
    PROXY,
    PURCHASE,
    Gunicorn,
    NetworkNamespace,
    Response,
    Upstream,
    Worker,
    netns_unavailable,
    real_services,
    require_real_services,
    wait_for,
)
from tests.fixtures.race import together
from tests.money.helpers import assert_ledger_verifies, balance, tokens

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, real_services]

ME = "/api/v1/users/me"
API_LIMIT = 40  # per user and minute, free plan (SPEC's 100, lowered so a test can reach it quickly)
PROXY_LIMIT = 30  # per token and minute, free plan (SPEC's 1000)
RACERS = 20
OUTAGE_SECONDS = 4.0


@dataclass
class Host:
    name: str
    netns: NetworkNamespace
    server: Gunicorn
    database_url: str  # as seen from inside: through the relay on this side of its link
    redis_url: str
    env: dict[str, str]

    def call(self, method: str, path: str, user: dict | None = None, body: object = None,
             headers: dict[str, str] | None = None, timeout: float = 10.0) -> Response:
        data = None if body is None else json.dumps(body).encode()
        sent = {**(user["headers"] if user else {}), **({"Content-Type": "application/json"} if data else {}),
                **(headers or {})}
        return self.server.request(method, path, headers=sent, timeout=timeout, body=data)

    def proxied(self, secret: str, device: str = DEVICE_A, path: str | None = None, timeout: float = 10.0):
        return self.server.get(f"{PROXY}{path or unique_path()}", timeout=timeout,
                               headers={"X-Access-Token": secret, "X-Device-ID": device})

    def probe_inside(self, path: str) -> tuple[int, dict]:
        """What an agent on the host itself (its own loopback) is told: status and JSON body."""
        code = ("import json, urllib.error, urllib.request\n"
                f"try:\n    answer = urllib.request.urlopen('http://127.0.0.1:{self.server.port}{path}', timeout=5)\n"
                "except urllib.error.HTTPError as refused:\n    answer = refused\n"
                "print(answer.status); print(answer.read().decode())")
        done = self.netns.run([sys.executable, "-c", code], timeout=30)
        assert done.returncode == 0, done.stderr[-2000:]
        status, body = done.stdout.split("\n", 1)
        return int(status), json.loads(body)

    def describe(self, what: str) -> str:
        return self.server.describe(f"[{self.name}] {what}")


def unique_path(prefix: str = "certificates") -> str:
    return f"/{prefix}/{uuid.uuid4().hex[:12]}"


def via(url: str, host: str, port: int, *, sqlalchemy: bool) -> str:
    if sqlalchemy:
        return make_url(url).set(host=host, port=port).render_as_string(hide_password=False)
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"))


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as started:
        yield started


@pytest.fixture(scope="module")
def hosts(backends, app, upstream) -> Iterator[list[Host]]:
    require_real_services(backends)
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    database, cache = make_url(backends.database_url), urlsplit(backends.redis_url)
    made: list[Host] = []
    try:
        for index in (1, 2):
            netns = NetworkNamespace(f"h{index}").create()
            to_database = netns.relay(database.host or "127.0.0.1", database.port or 5432)
            to_redis = netns.relay(cache.hostname or "127.0.0.1", cache.port or 6379)
            to_upstream = netns.relay("127.0.0.1", upstream.port)
            env = {"ZENZEFI_UPSTREAM_URL": f"http://{to_upstream.address}",
                   "RATELIMIT_API_FREE": str(API_LIMIT), "RATELIMIT_PROXY_FREE": str(PROXY_LIMIT)}
            database_url = via(backends.database_url, netns.peer_address, to_database.port, sqlalchemy=True)
            redis_url = via(backends.redis_url, netns.peer_address, to_redis.port, sqlalchemy=False)
            try:
                server = Gunicorn(database_url, redis_url, env, netns=netns, startup_timeout=60).__enter__()
            except BaseException:
                netns.destroy()
                raise
            made.append(Host(f"host {index}", netns, server, database_url, redis_url, env))
        yield made
    finally:
        for host in made:
            host.server.close()
            host.netns.destroy()


def buy(host: Host, accounts, hours: int = 24) -> tuple[str, str, dict]:
    """A funded user buying a token on `host`: (secret, token id, user)."""
    user = accounts.funded("100.00")
    bought = host.call("POST", PURCHASE, user, {"duration_hours": hours})
    assert bought.status == 201, host.describe(repr(bought))
    return bought.json()["token"], bought.json()["id"], user


def warm(host: Host, secret: str) -> None:
    for _ in range(6):  # each request on a fresh connection: both workers of the host
        answer = host.proxied(secret)
        assert answer.status == 200, host.describe(repr(answer))


def test_the_hosts_are_separate_machines_on_the_network(hosts):
    one, two = hosts
    assert one.netns.address != two.netns.address and one.netns.subnet != two.netns.subnet
    for host in hosts:
        assert host.server.host == host.netns.address
        status, body = host.probe_inside("/health/ready")
        assert (status, body["status"]) == (200, "ready"), body
        # Its database and Redis are the relays on the other end of its own link, nothing else.
        assert make_url(host.database_url).host == host.netns.peer_address
        assert urlsplit(host.redis_url).hostname == host.netns.peer_address


def test_one_token_two_devices_on_two_hosts_exactly_one_device_wins(hosts, accounts, upstream):
    one, two = hosts
    secret, token_id, _ = buy(one, accounts)
    path = unique_path("race")
    # Each device sends through both hosts: whichever host a request lands on, the device rule is one.
    plan = [(device, host) for device in (DEVICE_A, DEVICE_B) for host in (one, two) for _ in range(RACERS // 4)]

    def first(device: str, host: Host) -> tuple[str, Host, Response]:
        return device, host, host.proxied(secret, device, path)

    results = together([partial(first, device, host) for device, host in plan])
    by_device = {device: Counter(answer.status for d, _, answer in results if d == device)
                 for device in (DEVICE_A, DEVICE_B)}
    winners = [device for device, seen in by_device.items() if seen == Counter({200: RACERS // 2})]
    losers = [device for device, seen in by_device.items() if seen == Counter({409: RACERS // 2})]
    assert len(winners) == 1 and len(losers) == 1, one.describe(f"statuses by device: {by_device}")
    for device, host, answer in results:
        if device == losers[0]:
            body = answer.json()
            assert body["code"] == 409 and 1 <= int(answer.headers["Retry-After"]) <= 300, (host.name, answer)
            assert body["retry_after"] == int(answer.headers["Retry-After"]), body
    served_by = {host.name for device, host, answer in results if device == winners[0]}
    assert served_by == {one.name, two.name}
    assert upstream.paths.count(path) == RACERS // 2
    for host in hosts:  # and afterwards, on either host
        assert host.proxied(secret, losers[0]).status == 409
        assert host.proxied(secret, winners[0]).status == 200


def test_the_per_plan_limits_count_across_both_hosts(hosts, accounts):
    one, two = hosts
    user = accounts.signed_in()
    remaining = []
    for index in range(API_LIMIT):
        answer = hosts[index % 2].call("GET", ME, user)
        assert answer.status == 200, hosts[index % 2].describe(repr(answer))
        assert answer.headers["X-RateLimit-Limit"] == str(API_LIMIT)
        remaining.append(int(answer.headers["X-RateLimit-Remaining"]))
    assert remaining == list(range(API_LIMIT - 1, -1, -1)), f"not one counter for both hosts: {remaining}"
    for host in hosts:
        refused = host.call("GET", ME, user)
        assert refused.status == 429 and refused.json()["code"] == 429, host.describe(repr(refused))
        assert 0 < int(refused.headers["Retry-After"]) <= 60

    secret, _, _ = buy(one, accounts)
    # The proxy's window is the clock minute: start with enough of it left for the whole run.
    if 60 - time.time() % 60 < 10:
        time.sleep(60 - time.time() % 60 + 0.2)
    for index in range(PROXY_LIMIT):
        answer = hosts[index % 2].proxied(secret)
        assert answer.status == 200, hosts[index % 2].describe(f"request {index + 1}: {answer!r}")
    for host in hosts:
        limited = host.proxied(secret)
        assert limited.status == 429 and limited.json()["code"] == 429, host.describe(repr(limited))
        assert 0 < int(limited.headers["Retry-After"]) <= 61


def test_twenty_purchases_across_both_hosts_with_funds_for_one(hosts, accounts, client, admin):
    user = accounts.signed_in()
    accounts.fund(user["id"], "18.00")  # one 24 h token

    def purchase(index: int) -> Response:
        return hosts[index % 2].call("POST", PURCHASE, user, {"duration_hours": 24}, timeout=30)

    answers = together([partial(purchase, index) for index in range(RACERS)])
    assert Counter(answer.status for answer in answers) == Counter({201: 1, 402: RACERS - 1}), answers
    for answer in answers:
        if answer.status == 402:
            assert (answer.json()["required"], answer.json()["available"]) == ("18.00", "0.00"), answer
    [token] = tokens(client, user)
    assert token["paid_znc"] == "18.00"
    assert balance(client, user) == 0
    assert_ledger_verifies(client, admin)


def test_a_revoke_on_one_host_stops_the_token_on_the_other_at_its_next_request(hosts, accounts, upstream):
    one, two = hosts
    secret, token_id, user = buy(one, accounts)
    warm(two, secret)
    revoked = one.call("DELETE", f"/api/v1/tokens/{token_id}", user)
    assert revoked.status == 200 and revoked.json()["revoked"] is True, revoked
    path = unique_path("after-revoke")
    for _ in range(4):  # both of host 2's workers had the token cached
        answer = two.proxied(secret, path=path)
        assert answer.status == 401 and answer.json()["code"] == 401, two.describe(repr(answer))
    assert two.server.get(f"{PROXY}/status", headers={"X-Access-Token": secret}).status == 401
    assert path not in upstream.paths, "a request with a revoked token reached the upstream"


PERIODIC_RUN = re.compile(r"\((periodic-(?P<name>[a-z_]+)-(?P<slot>[0-9-]+))\)\s*$")


def periodic_runs(workers: list[Worker]) -> Counter:
    """How often each periodic job id was taken by a worker (RQ logs "…: <description> (<job id>)")."""
    runs: Counter = Counter()
    for worker in workers:
        for path in (worker.stdout_path, worker.stderr_path):
            for line in path.read_text(errors="replace").splitlines():
                match = PERIODIC_RUN.search(line)
                if match and "Job OK" not in line:
                    runs[(match["name"], match["slot"])] += 1
    return runs


def test_periodic_jobs_run_once_per_slot_with_a_scheduler_on_each_host(hosts, backends):
    """Both hosts run `python -m worker` (an RQ worker and the periodic scheduler): each slot is run once, across
    the first slot of every job and the next slot of the 50 s and 60 s ones."""
    workers = [Worker(host.database_url, host.redis_url, extra_env=host.env, name=f"worker-{host.name[-1]}",
                      netns=host.netns) for host in hosts]
    client = redis.Redis.from_url(backends.redis_url)
    try:
        for worker in workers:
            worker.__enter__()
        wait_for(lambda: all(w.alive() for w in workers) and RqWorker.count(connection=client) >= 2, 60,
                 lambda: "\n".join(w.logs() for w in workers))
        for worker in workers:
            assert "periodic scheduler started" in worker.stderr_path.read_text(errors="replace"), worker.logs()

        def second_slots_ran() -> bool:
            names = Counter(name for name, _ in periodic_runs(workers))
            return names["health_check"] >= 2 and names["relay_outbox"] >= 2 and names["proxy_sessions"] >= 2

        wait_for(second_slots_ran, 150, lambda: "\n".join(w.logs() for w in workers), step=1.0)
        time.sleep(2)  # a duplicate would be taken at once by the other, idle, worker
        runs = periodic_runs(workers)
        taken_by = [sum(periodic_runs([worker]).values()) for worker in workers]
        assert all(worker.alive() for worker in workers), "\n".join(w.logs() for w in workers)
    finally:
        for worker in workers:
            worker.close()
        client.close()
    twice = {job: count for job, count in runs.items() if count != 1}
    assert not twice, f"periodic jobs run more than once per slot: {twice}"
    names = {name for name, _ in runs}
    assert {"health_check", "proxy_sessions", "relay_outbox", "expire_tokens", "expire_payments",
            "expiring_token_emails", "auto_renewal", "expire_plans", "purge_expired"} <= names, runs
    print(f"\nperiodic runs taken by the host 1 / host 2 workers: {taken_by}; {len(runs)} slots, each once")


def locked_user(database_url: str, user_id: str) -> tuple[sa.Engine, sa.Connection]:
    """Hold the user's row lock from outside the app, so a purchase waits for it mid-transaction."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    connection = engine.connect()
    connection.execute(sa.text("SELECT id FROM users WHERE id = :id FOR UPDATE"), {"id": uuid.UUID(user_id)})
    return engine, connection


def waiting_for_a_lock(database_url: str) -> bool:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return bool(connection.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar_one())
    finally:
        engine.dispose()


def test_a_host_losing_its_link_mid_purchase_loses_nothing(hosts, accounts, client, admin, backends, upstream):
    """Host 1 loses its link with a purchase in an open transaction (held at the user's row by the test, then let
    go) and a proxied request waiting for the upstream. While it lasts, host 1 answers its own agent 503 and host 2
    serves everyone else; once the link is back both requests finish with their real answers, by themselves."""
    one, two = hosts
    secret, _, _ = buy(one, accounts)
    warm(one, secret)
    warm(two, secret)
    buyer = accounts.signed_in()
    accounts.fund(buyer["id"], "18.00")
    key = {"Idempotency-Key": f"link-{uuid.uuid4()}"}
    outcome: dict[str, Response | BaseException] = {}

    def purchase_on_host_one() -> None:
        try:
            outcome["purchase"] = one.call("POST", PURCHASE, buyer, {"duration_hours": 24}, key, timeout=120)
        except BaseException as exc:  # recorded, asserted below
            outcome["purchase"] = exc

    def slow_download_on_host_one() -> None:
        try:
            outcome["download"] = one.proxied(secret, path="/slow/request", timeout=120)
        except BaseException as exc:
            outcome["download"] = exc

    engine, lock = locked_user(backends.database_url, buyer["id"])
    in_flight = [threading.Thread(target=purchase_on_host_one), threading.Thread(target=slow_download_on_host_one)]
    try:
        for thread in in_flight:
            thread.start()
        wait_for(lambda: waiting_for_a_lock(backends.database_url), 30,
                 lambda: one.describe("host 1's purchase never waited for the user's row"))
        wait_for(lambda: "/slow/request" in upstream.paths, 30, "the slow request never reached the upstream")
        one.netns.link_down()
        lock.commit()  # host 1's transaction may go on in PostgreSQL; its host cannot hear back
        lost_at = time.monotonic()

        # While it lasts: host 1 tells an agent on its own loopback that it is not ready (503 JSON) …
        status, body = one.probe_inside("/health/ready")
        assert status == 503 and body["code"] == 503, body
        assert body["checks"] == {"database": "down", "redis": "down"}, body
        # … and host 2 serves everyone else: the proxy (same token, same device), the device rule, purchases.
        # (The buyer's own row stays locked by host 1's open transaction until its link is back.)
        assert two.proxied(secret).status == 200
        assert two.proxied(secret, DEVICE_B).status == 409
        _, other_id, _ = buy(two, accounts)
        with pytest.raises(OSError):  # a load balancer cannot reach host 1 at all
            one.server.get("/health/live", timeout=1)
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - lost_at)))
    finally:
        lock.close()
        engine.dispose()
        one.netns.link_up()
        for thread in in_flight:
            thread.join(timeout=150)

    # The requests that were in flight on host 1 finish as if nothing happened: nothing lost, nothing doubled.
    purchase, download = outcome["purchase"], outcome["download"]
    assert isinstance(purchase, Response) and purchase.status == 201, one.describe(repr(purchase))
    assert isinstance(download, Response) and download.status == 200, one.describe(repr(download))
    assert download.body == b"upstream ok"
    # The client's retry elsewhere (it may not have seen the answer) is the stored answer, not a second charge.
    replay = two.call("POST", PURCHASE, buyer, {"duration_hours": 24}, key)
    assert replay.status == 201 and replay.headers.get("Idempotent-Replayed") == "true", replay
    assert replay.json() == purchase.json()
    assert [token["id"] for token in tokens(client, buyer)] == [purchase.json()["id"]]
    assert balance(client, buyer) == 0
    # Host 1 is back by itself.
    wait_for(lambda: one.server.get("/health/ready").status == 200, 30,
             lambda: one.describe("host 1 not ready again after its link came back"))
    assert one.proxied(secret).status == 200
    assert buy(one, accounts)[1] != other_id
    assert_ledger_verifies(client, admin)
