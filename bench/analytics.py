"""Analytics at scale on PostgreSQL + Redis. A benchmark, not a test.

    .venv/bin/python bench/analytics.py [--users 100000] [--sessions 1000000] [--entries 2000000] [--days 90] \
        [--samples 200] [--flush-sessions 1000] [--flush-rounds 5] \
        [--database-server postgresql://postgres@127.0.0.1:5432/test] [--redis-url redis://127.0.0.1:6379/13]

1. Creates a throw-away database and migrates it to the revision before the analytics rollups (0008).
2. Generates, with SQL (generate_series), the users, their tokens, the proxy sessions spread over the last
   `--days` days and the ledger entries (deposits, token and bundle purchases, plans, refunds, referral bonuses,
   adjustments) spread the same way; then `flask db upgrade` runs the analytics migration, which builds the rollups
   from that data (its time is printed), and ANALYZE.
3. Measures through the real app (create_app + its test client: JWT check, rate limiter, query parsing, cache,
   JSON), p50/p90/p99 of `--samples` requests each:
   - uncached `GET /analytics/usage?period=month`, each request for another user whose key was just dropped;
   - uncached `GET /analytics/admin/global?period=month`, its key dropped before each request;
   - both again from the cache;
   - as a baseline, `GET /currency/balance`: the same JWT, user-row, revoked-JWT and rate-limit checks around a
     view that reads one column (what every API request costs before its own work).
4. The counter flush at `--flush-sessions` active sessions: counters for each session are put in Redis the way the
   proxy's ADMIT script leaves them, then they are moved into the rows by (a) the flush as it was before the
   rollups (`flush_counters_before` below: one DB transaction per session, copied from the code this branch
   started from), (b) today's `flush_counters()` (100 sessions per transaction) writing the daily rollup in the
   same transaction, and (c) today's flush with the rollup receiver disconnected (what the rollup itself costs);
   in alternating rounds, the median of each.
5. Prints one table with the targets (PASS/FAIL) and the load average, drops the database, and exits with 1 when a
   target fails.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench.harness import add_service_options, migrate, throwaway_database  # noqa: E402
from bench.report import log, percentile, table  # noqa: E402

TARGETS_MS = {"usage": 20.0, "global": 250.0, "cached": 5.0}
FLUSH_RATIO_TARGET = 1.2


# Every statement takes :users, :sessions, :entries and :days. Times are spread uniformly over the last :days days.
GENERATE = [
    ("users", """
        CREATE UNLOGGED TABLE bench_users AS
        SELECT n, gen_random_uuid() AS id,
               now() - random() * make_interval(days => :days) AS created_at
        FROM generate_series(1, :users) AS n;
        CREATE UNIQUE INDEX ON bench_users (n);
        INSERT INTO users (id, email, username, password_hash, is_active, is_superuser, plan, referral_code, balance,
                           email_notifications, jwt_generation, created_at, updated_at)
        SELECT id, 'user' || n || '@bench.example.com', 'user_' || n, 'not-a-hash', true, false, 'free',
               upper(substr(md5('ref' || n), 1, 12)), 0, true, 0, created_at, created_at
        FROM bench_users;
    """),
    ("tokens", """
        INSERT INTO access_tokens (id, user_id, token_hash, token_hint, duration_hours, scope, paid_znc, source,
                                   created_at, activated_at, expires_at)
        SELECT gen_random_uuid(), u.id, md5('a' || t.n || '-' || u.n) || md5('b' || t.n || '-' || u.n),
               'bench0...0000', 720, 'full', 300, 'purchase', u.created_at, u.created_at,
               u.created_at + interval '720 hours'
        FROM bench_users u CROSS JOIN generate_series(1, 2) AS t(n);
        CREATE UNLOGGED TABLE bench_tokens AS
        SELECT u.n, min(a.id::text)::uuid AS token_id FROM access_tokens a JOIN bench_users u ON u.id = a.user_id
        GROUP BY u.n;
        CREATE UNIQUE INDEX ON bench_tokens (n);
    """),
    ("proxy sessions", """
        INSERT INTO proxy_sessions (id, token_id, user_id, device_id, ip_address, user_agent, started_at,
                                    last_activity, ended_at, request_count, bytes_in, bytes_out, is_active)
        SELECT gen_random_uuid(), t.token_id, u.id, 'device-' || (s.i % 7), '198.51.100.7', 'bench', s.started,
               s.started + s.used, s.started + s.used + interval '5 minutes', s.requests, s.requests * 200,
               s.requests * 5000, false
        FROM (SELECT i, 1 + (i::bigint * 7919) % :users AS n,
                     now() - random() * make_interval(days => :days) AS started,
                     random() * interval '90 minutes' AS used, 1 + (random() * 400)::int AS requests
              FROM generate_series(1, :sessions) AS i) AS s
        JOIN bench_users u ON u.n = s.n JOIN bench_tokens t ON t.n = s.n;
    """),
    ("ledger entries", """
        INSERT INTO transactions (id, user_id, amount, balance_after, transaction_type, description, reference_type,
                                  created_at)
        SELECT gen_random_uuid(), u.id,
               CASE k.kind WHEN 'deposit' THEN 100 WHEN 'refund' THEN 7.5 WHEN 'referral_bonus' THEN 3
                           WHEN 'adjustment' THEN 5 WHEN 'plan' THEN -10
                           WHEN 'bundle' THEN -81 ELSE -18 END,
               100, CASE k.kind WHEN 'bundle' THEN 'purchase' WHEN 'token' THEN 'purchase' ELSE k.kind END,
               'bench', CASE k.kind WHEN 'bundle' THEN 'bundle' WHEN 'token' THEN 'access_token'
                                    WHEN 'refund' THEN 'access_token' WHEN 'deposit' THEN 'payment' END,
               e.created
        FROM (SELECT i, 1 + (i::bigint * 104729) % :users AS n, i % 20 AS slot,
                     now() - random() * make_interval(days => :days) AS created
              FROM generate_series(1, :entries) AS i) AS e
        JOIN bench_users u ON u.n = e.n
        JOIN (VALUES (0, 'deposit'), (1, 'deposit'), (2, 'deposit'), (3, 'deposit'), (4, 'token'), (5, 'token'),
                     (6, 'token'), (7, 'token'), (8, 'token'), (9, 'token'), (10, 'token'), (11, 'token'),
                     (12, 'token'), (13, 'bundle'), (14, 'plan'), (15, 'plan'), (16, 'refund'), (17, 'refund'),
                     (18, 'referral_bonus'), (19, 'adjustment')) AS k(slot, kind) ON k.slot = e.slot;
    """),
]


def generate(database_url: str, args: argparse.Namespace) -> list[list[str]]:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    timings = []
    params = {"users": args.users, "sessions": args.sessions, "entries": args.entries, "days": args.days}
    try:
        for what, script in GENERATE:
            started = time.perf_counter()
            with engine.begin() as connection:
                for statement in (part.strip() for part in script.split(";")):
                    if statement:
                        used = {name: value for name, value in params.items() if f":{name}" in statement}
                        connection.execute(sa.text(statement), used)
            timings.append([f"generate {what}", f"{time.perf_counter() - started:.1f} s"])
            log(f"  {what}: {timings[-1][1]}")
    finally:
        engine.dispose()
    return timings


def analyze(database_url: str) -> None:
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        connection.execute(sa.text("DROP TABLE bench_users, bench_tokens"))
        connection.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()


def timed(call: Callable[[], object], before: Callable[[], object] | None, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        if before is not None:
            before()
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def measure_endpoints(app, args: argparse.Namespace) -> dict[str, list[float]]:
    from flask_jwt_extended import create_access_token

    from zenzefi_backend.accounts.models import User
    from zenzefi_backend.analytics import cache, services
    from zenzefi_backend.database import db
    from zenzefi_backend.extensions import get_redis

    with app.app_context():
        users = db.session.scalars(sa.select(User).order_by(sa.func.random()).limit(args.samples + 1)).all()
        admin = users.pop()
        admin.is_superuser = True
        db.session.commit()
        headers = [{"Authorization": f"Bearer {create_access_token(identity=user)}"} for user in users]
        admin_headers = {"Authorization": f"Bearer {create_access_token(identity=admin)}"}
        user_ids = [user.id for user in users]
        redis = get_redis()
    client = app.test_client()
    month = services.window_of("month")

    def get(path: str, auth: dict[str, str]) -> None:
        response = client.get(path, headers=auth)
        if response.status_code != 200:
            raise SystemExit(f"{path}: {response.status_code} {response.get_data()[:300]!r}")

    turn = iter(range(10**9))
    current = [0]

    def next_user_uncached() -> None:
        current[0] = next(turn) % len(headers)
        with app.app_context():
            redis.delete(cache.usage_key(user_ids[current[0]], month))

    def drop_global() -> None:
        with app.app_context():
            redis.delete(cache.global_key(month))

    results = {}
    get("/api/v1/analytics/usage?period=month", headers[0])  # warm the connection pool and the code
    # The same sign-in checks (JWT, user row, revoked-JWT list, rate limiter) around a view that reads one column.
    results[AUTH_BASELINE] = timed(lambda: get("/api/v1/currency/balance", headers[0]), None, args.samples)
    results["usage, uncached"] = timed(lambda: get("/api/v1/analytics/usage?period=month", headers[current[0]]),
                                       next_user_uncached, args.samples)
    results["admin/global, uncached"] = timed(lambda: get("/api/v1/analytics/admin/global?period=month",
                                                          admin_headers), drop_global, max(20, args.samples // 5))
    results["usage, cached"] = timed(lambda: get("/api/v1/analytics/usage?period=month", headers[0]), None,
                                     args.samples)
    results["admin/global, cached"] = timed(lambda: get("/api/v1/analytics/admin/global?period=month",
                                                        admin_headers), None, args.samples)
    return results


def flush_counters_before() -> int:
    """The counter flush before the rollups (one DB transaction per session), kept here to compare against."""
    from datetime import datetime

    from zenzefi_backend.clock import now
    from zenzefi_backend.database import db
    from zenzefi_backend.proxy.cache import redis_state
    from zenzefi_backend.proxy.counters import DIRTY_SESSIONS, SESSION_KEY
    from zenzefi_backend.proxy.models import ProxySession

    client = redis_state.client
    flushed = 0
    while True:
        session_ids = client.spop(DIRTY_SESSIONS, 100)
        if not session_ids:
            return flushed
        for raw_id in session_ids:
            session_id = raw_id.decode()
            pipe = client.pipeline(transaction=True)
            pipe.hgetall(SESSION_KEY + session_id)
            pipe.delete(SESSION_KEY + session_id)
            counters, _ = pipe.execute()
            if not counters:
                continue
            values = {key.decode(): int(value) for key, value in counters.items()}
            changes = {
                "request_count": ProxySession.request_count + values.get("requests", 0),
                "bytes_in": ProxySession.bytes_in + values.get("bytes_in", 0),
                "bytes_out": ProxySession.bytes_out + values.get("bytes_out", 0),
            }
            if values.get("last_activity"):
                seen = datetime.fromtimestamp(values["last_activity"] / 1000, now().tzinfo)
                changes["last_activity"] = sa.case((ProxySession.last_activity < seen, seen),
                                                   else_=ProxySession.last_activity)
            db.session.execute(sa.update(ProxySession).where(ProxySession.id == uuid.UUID(session_id))
                               .values(**changes))
            db.session.commit()
            flushed += 1


AUTH_BASELINE = "baseline: GET /currency/balance"
FLUSH_BEFORE = "flush before the rollups"
FLUSH_NOW = "flush with the rollups"
FLUSH_BARE = "flush now, rollup receiver off"


def measure_flush(app, args: argparse.Namespace) -> dict[str, list[float]]:
    """The three flushes over `--flush-sessions` active sessions with counters in Redis, in alternating rounds."""
    from zenzefi_backend.analytics import rollups
    from zenzefi_backend.clock import now
    from zenzefi_backend.database import db
    from zenzefi_backend.extensions import get_redis
    from zenzefi_backend.proxy.counters import DIRTY_SESSIONS, SESSION_KEY, flush_counters

    with app.app_context():
        db.session.execute(sa.text("""
            INSERT INTO proxy_sessions (id, token_id, user_id, device_id, started_at, last_activity, request_count,
                                        bytes_in, bytes_out, is_active)
            SELECT gen_random_uuid(), a.id, a.user_id, 'device-flush', now(), now(), 0, 0, 0, true
            FROM (SELECT DISTINCT ON (user_id) id, user_id FROM access_tokens ORDER BY user_id, id LIMIT :count) AS a
        """), {"count": args.flush_sessions})
        db.session.commit()
        session_ids = [str(value) for value in db.session.scalars(
            sa.text("SELECT id FROM proxy_sessions WHERE is_active"))]
        redis = get_redis()

        def fill() -> None:
            moment_ms = int(now().timestamp() * 1000)
            pipe = redis.pipeline(transaction=False)
            for session_id in session_ids:
                pipe.hincrby(SESSION_KEY + session_id, "requests", 17)
                pipe.hincrby(SESSION_KEY + session_id, "bytes_in", 3400)
                pipe.hincrby(SESSION_KEY + session_id, "bytes_out", 85000)
                pipe.hset(SESSION_KEY + session_id, "last_activity", moment_ms)
                pipe.sadd(DIRTY_SESSIONS, session_id)
            pipe.execute()

        flushes = {FLUSH_BEFORE: flush_counters_before, FLUSH_NOW: flush_counters, FLUSH_BARE: flush_counters}

        def flush(label: str) -> None:
            flushed = flushes[label]()
            if flushed != len(session_ids):
                raise SystemExit(f"{label} moved {flushed} sessions, expected {len(session_ids)}")

        results: dict[str, list[float]] = {label: [] for label in flushes}
        for label in flushes:  # warm-up: the day's rollup rows created, statements compiled
            fill()
            flush(label)
        for _ in range(args.flush_rounds):
            for label in flushes:
                (rollups.unsubscribe if label == FLUSH_BARE else rollups.subscribe)()
                fill()
                results[label] += timed(lambda label=label: flush(label), None, 1)
        rollups.subscribe()
        log(f"  flushed {len(session_ids)} sessions × {len(flushes) * (args.flush_rounds + 1)} rounds")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--samples", type=int, default=200, help="requests measured per cell (default 200)")
    parser.add_argument("--flush-sessions", type=int, default=1000)
    parser.add_argument("--flush-rounds", type=int, default=5)
    add_service_options(parser, "redis://127.0.0.1:6379/13",
                        "a Redis DB of its own: the benchmark writes counters and cache entries there")
    args = parser.parse_args()
    load_before = os.getloadavg()
    began = time.perf_counter()
    with throwaway_database(args.database_server) as database_url:
        return run(args, database_url, load_before, began)


def run(args: argparse.Namespace, database_url: str, load_before: tuple[float, float, float], began: float) -> int:
    migrate(database_url, args.redis_url, "0008_gifts", timeout=3600)
    log(f"generating {args.users:,} users, {args.sessions:,} proxy sessions and {args.entries:,} ledger entries "
        f"over {args.days} days")
    setup = generate(database_url, args)
    seconds = migrate(database_url, args.redis_url, timeout=3600)
    setup.append(["migration 0009 (builds the rollups)", f"{seconds:.1f} s"])
    log(f"  migration 0009: {seconds:.1f} s")
    analyze(database_url)

    instance = tempfile.mkdtemp(prefix="zenzefi-bench-instance-")
    os.environ["ZENZEFI_INSTANCE_PATH"] = instance
    from zenzefi_backend import create_app
    from zenzefi_backend.extensions import get_redis

    app = create_app({"DATABASE_URL": database_url, "REDIS_URL": args.redis_url, "RATELIMIT_API_FREE": 10**9})
    with app.app_context():
        get_redis().flushdb()
    log("measuring the endpoints")
    results = measure_endpoints(app, args)
    log("measuring the counter flush")
    results.update(measure_flush(app, args))
    with app.app_context():
        get_redis().flushdb()

    rows = [["measurement", "samples", "p50 ms", "p90 ms", "p99 ms", "target", "verdict"]]
    failed = False
    for label, samples in results.items():
        p50, p90, p99 = (percentile(samples, p) for p in (50, 90, 99))
        target = ("usage" if label == "usage, uncached" else "global" if label == "admin/global, uncached"
                  else "cached" if label.endswith("cached") else None)
        verdict = ""
        if target:
            ok = p50 <= TARGETS_MS[target]
            failed |= not ok
            verdict = "PASS" if ok else "FAIL"
        if label.startswith("flush"):
            p50 = statistics.median(samples)
        rows.append([label, str(len(samples)), f"{p50:.2f}", f"{p90:.2f}", f"{p99:.2f}",
                     f"p50 ≤ {TARGETS_MS[target]:g}" if target else "", verdict])
    ratio = statistics.median(results[FLUSH_NOW]) / statistics.median(results[FLUSH_BEFORE])
    flush_ok = ratio <= FLUSH_RATIO_TARGET
    failed |= not flush_ok
    rows.append(["flush with the rollups / before them", "", f"{ratio:.2f}×", "", "", f"≤ {FLUSH_RATIO_TARGET}×",
                 "PASS" if flush_ok else "FAIL"])
    bare = statistics.median(results[FLUSH_NOW]) / statistics.median(results[FLUSH_BARE])
    rows.append(["flush with the rollups / receiver off", "", f"{bare:.2f}×", "", "", "", ""])
    print()
    print(table([["setup", "time"], *setup]))
    print()
    print(table(rows))
    load_after = os.getloadavg()
    print(f"\nload average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {os.cpu_count()} CPUs; "
          f"{time.perf_counter() - began:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
