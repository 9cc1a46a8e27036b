"""Purchase throughput and latency through real gunicorn (2 workers) on PostgreSQL + Redis. A benchmark, not a test.

    .venv/bin/python bench/purchase.py [--threads 16] [--seconds 20] [--users 32]

Creates a throw-away PostgreSQL database, runs `flask db upgrade`, starts `gunicorn -c gunicorn.conf.py wsgi:app`
(via tests/e2e/harness.py), creates users with enough ZNC (superuser balance adjustments), then:

  phase 1  every client thread buys 1 h tokens for its own user (row locks never contend);
  phase 2  every client thread buys for ONE shared user (each purchase waits for that user's row lock).

Prints purchases/s, p50/p90/p99 latency and error counts per phase, checks that every balance moved by exactly
what was bought, runs the ledger verification and drops the database.
"""
from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.report import table  # noqa: E402
from tests.e2e.harness import LOOPBACK, VENV_BIN, Gunicorn, child_env  # noqa: E402

PURCHASE = "/api/v1/tokens/purchase"
FUNDING = Decimal("1000000.00")  # the largest single adjustment: far more 1 h tokens than one run can buy
PASSWORD = "bench password 1"  # noqa: S105 - a throw-away account in a throw-away database
REQUEST_TIMEOUT = 10.0


class Client:
    """One keep-alive HTTP/1.1 connection to the server; reconnects after an error."""

    def __init__(self, port: int):
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
             ) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        all_headers = {**(headers or {}), **({"Content-Type": "application/json"} if payload is not None else {})}
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=REQUEST_TIMEOUT)
            try:
                self.connection.request(method, path, body=payload, headers=all_headers)
                answer = self.connection.getresponse()
                data = answer.read()
                if answer.getheader("Connection", "").lower() == "close":
                    self.close()
                return answer.status, (json.loads(data) if data else None)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection: retry once on a new one (before any
                # bytes of this request were processed, so a retry cannot double-buy).
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@dataclass
class Phase:
    name: str
    threads: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, latency_ms: float, outcome: str) -> None:
        with self.lock:
            if outcome == "201":
                self.latencies_ms.append(latency_ms)
            self.outcomes[outcome] += 1

    @property
    def bought(self) -> int:
        return self.outcomes["201"]

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]

    def errors(self) -> str:
        failures = {outcome: count for outcome, count in self.outcomes.items() if outcome != "201"}
        return ", ".join(f"{outcome}×{count}" for outcome, count in sorted(failures.items())) or "0"


def run_phase(port: int, phase: Phase, headers_per_thread: list[dict[str, str]], seconds: float) -> None:
    start_line = threading.Barrier(phase.threads + 1)
    stop_at: list[float] = []

    def buyer(headers: dict[str, str]) -> None:
        client = Client(port)
        start_line.wait()
        deadline = stop_at[0]
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status, _ = client.call("POST", PURCHASE, {"duration_hours": 1}, headers)
                    outcome = str(status)
                except (OSError, http.client.HTTPException) as error:
                    client.close()
                    outcome = type(error).__name__
                phase.record((time.perf_counter() - started) * 1000, outcome)
        finally:
            client.close()

    workers = [threading.Thread(target=buyer, args=(headers,), name=f"buyer-{i}", daemon=True)
               for i, headers in enumerate(headers_per_thread)]
    for worker in workers:
        worker.start()
    began = time.perf_counter()
    stop_at.append(began + seconds)
    start_line.wait()
    for worker in workers:
        worker.join(timeout=seconds + REQUEST_TIMEOUT * 3)
    phase.seconds = time.perf_counter() - began


def must(result: tuple[int, Any], expected: int, what: str) -> Any:
    status, body = result
    if status != expected:
        raise SystemExit(f"{what}: expected {expected}, got {status}: {body}")
    return body


def sign_up(client: Client, name: str) -> dict[str, Any]:
    email = f"{name}@bench.example.com"
    user = must(client.call("POST", "/api/v1/auth/register",
                            {"email": email, "username": name, "password": PASSWORD}), 201, f"register {name}")
    tokens = must(client.call("POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD}), 200,
                  f"login {name}")
    return {"id": user["id"], "headers": {"Authorization": f"Bearer {tokens['access_token']}"}}


def balance_of(client: Client, user: dict[str, Any]) -> Decimal:
    return Decimal(must(client.call("GET", "/api/v1/currency/balance", headers=user["headers"]), 200,
                        "balance")["balance"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=16, help="concurrent client threads (default 16)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    parser.add_argument("--users", type=int, default=32, help="users created for phase 1 (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--database-server", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL to create the throw-away database on")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    if args.threads < 1 or args.seconds <= 0 or args.users < 1:
        parser.error("--threads, --seconds and --users must be positive")

    server_url = make_url(args.database_server)
    admin_engine = sa.create_engine(server_url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT",
                                    poolclass=sa.pool.NullPool)
    name = f"zenzefi_bench_{uuid.uuid4().hex[:12]}"
    database_url = server_url.set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False)
    with admin_engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    print(f"database {name} created on {server_url.host}:{server_url.port}; redis {args.redis_url}")
    try:
        return bench(args, database_url)
    finally:
        with admin_engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()
        print(f"database {name} dropped")


def bench(args: argparse.Namespace, database_url: str) -> int:
    with tempfile.TemporaryDirectory(prefix="zenzefi-bench-") as instance:
        upgrade = subprocess.run([str(VENV_BIN / "flask"), "--app", "wsgi", "db", "upgrade"], cwd=ROOT,
                                 env=child_env(database_url, args.redis_url, Path(instance)), capture_output=True,
                                 text=True, timeout=120)
    if upgrade.returncode != 0:
        raise SystemExit(f"flask db upgrade failed:\n{upgrade.stderr[-2000:]}")
    print("flask db upgrade: ok")

    # Registration is rate limited per client IP, and every bench user registers from 127.0.0.1.
    env = {"RATELIMIT_REGISTER": "100000 per hour"}
    with Gunicorn(database_url, args.redis_url, extra_env=env, workers=args.workers) as server:
        setup = Client(server.port)
        tag = uuid.uuid4().hex[:6]
        admin = sign_up(setup, f"bench_admin_{tag}")
        engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE users SET is_superuser = true WHERE id = :id"),
                               {"id": uuid.UUID(admin["id"])})
        engine.dispose()  # the admin's JWT stays valid: the superuser flag is read from the user row per request

        users = [sign_up(setup, f"bench_{tag}_{i}") for i in range(args.users)]
        shared = sign_up(setup, f"bench_{tag}_shared")
        for user in [*users, shared]:
            must(setup.call("POST", f"/api/v1/admin/users/{user['id']}/balance-adjustments",
                            {"amount": str(FUNDING), "reason": "benchmark funding"}, admin["headers"]), 201,
                 "fund")
        print(f"gunicorn: {args.workers} workers (gthread) on 127.0.0.1:{server.port}; {args.users + 1} users "
              f"funded with {FUNDING} ZNC each; {args.threads} client threads, {args.seconds:g} s per phase")

        own = Phase("own user per thread", args.threads)
        run_phase(server.port, own, [users[i % len(users)]["headers"] for i in range(args.threads)], args.seconds)
        one = Phase("one shared user", args.threads)
        run_phase(server.port, one, [shared["headers"]] * args.threads, args.seconds)

        rows = [["phase", "threads", "purchases", "purchases/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"]]
        for phase in (own, one):
            rows.append([phase.name, str(phase.threads), str(phase.bought), f"{phase.bought / phase.seconds:.1f}",
                         f"{phase.percentile(50):.1f}", f"{phase.percentile(90):.1f}", f"{phase.percentile(99):.1f}",
                         f"{max(phase.latencies_ms, default=float('nan')):.1f}", phase.errors()])
        print()
        print(table(rows))
        print()

        spent_own = sum(FUNDING - balance_of(setup, user) for user in users)
        spent_one = FUNDING - balance_of(setup, shared)
        money_ok = spent_own == own.bought and spent_one == one.bought
        print(f"balances: phase 1 spent {spent_own} ZNC for {own.bought} tokens, phase 2 spent {spent_one} ZNC "
              f"for {one.bought} tokens: {'ok' if money_ok else 'MISMATCH'}")
        report = must(setup.call("GET", "/api/v1/admin/ledger/verify", headers=admin["headers"]), 200, "verify")
        print(f"ledger verify: {'ok' if report['ok'] else 'FAILED'} ({report['users_checked']} users checked"
              f"{', mismatches: ' + json.dumps(report['mismatches']) if report['mismatches'] else ''})")
        setup.close()
        errors = sum(phase.outcomes.total() - phase.bought for phase in (own, one))
        return 0 if report["ok"] and money_ok and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
