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
import sys
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

from bench.harness import (  # noqa: E402
    REQUEST_TIMEOUT,
    Client,
    add_service_options,
    migrate,
    must,
    sign_up,
    sign_up_superuser,
    throwaway_database,
)
from bench.report import percentile, table  # noqa: E402
from tests.e2e.harness import Gunicorn  # noqa: E402

PURCHASE = "/api/v1/tokens/purchase"
FUNDING = Decimal("1000000.00")  # the largest single adjustment: far more 1 h tokens than one run can buy


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


def balance_of(client: Client, user: dict[str, Any]) -> Decimal:
    return Decimal(must(client.call("GET", "/api/v1/currency/balance", headers=user["headers"]), 200,
                        "balance")["balance"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=16, help="concurrent client threads (default 16)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    parser.add_argument("--users", type=int, default=32, help="users created for phase 1 (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    add_service_options(parser, "redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    if args.threads < 1 or args.seconds <= 0 or args.users < 1:
        parser.error("--threads, --seconds and --users must be positive")

    with throwaway_database(args.database_server, f"; redis {args.redis_url}") as database_url:
        return bench(args, database_url)


def bench(args: argparse.Namespace, database_url: str) -> int:
    migrate(database_url, args.redis_url)
    print("flask db upgrade: ok")

    # Registration is rate limited per client IP (every bench user registers from 127.0.0.1), and the shared user's
    # purchases would meet the free plan's API limit: the benchmark measures purchases, not the limiter.
    env = {"RATELIMIT_REGISTER": "100000 per hour", "RATELIMIT_API_FREE": "1000000"}
    with Gunicorn(database_url, args.redis_url, extra_env=env, workers=args.workers) as server:
        setup = Client(server.port)
        tag = uuid.uuid4().hex[:6]
        admin = sign_up_superuser(setup, database_url, f"bench_admin_{tag}")
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
                         *(f"{percentile(phase.latencies_ms, p):.1f}" for p in (50, 90, 99)),
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
