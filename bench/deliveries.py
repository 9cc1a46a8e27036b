"""Deliveries under a steady purchase rate: gunicorn ×2, ONE `python -m worker`, PostgreSQL + Redis, a local webhook
receiver and an SMTP sink. A benchmark, not a test.

    .venv/bin/python bench/deliveries.py [--rate 12] [--seconds 150] [--users 24] [--topups-per-second 1]
                                         [--drain 600]

Creates a throw-away PostgreSQL database, migrates it, starts gunicorn (2 workers) and one worker process (RQ worker +
periodic scheduler), signs up `--users` users, each with a webhook endpoint on the local receiver (`token.purchased`,
`balance.topped_up`), then:

  steady  `--rate` purchases per second for `--seconds` (open loop: a purchase is due every 1/rate s, whatever the
          answers take), plus `--topups-per-second` mock top-ups (each a `balance.topped_up` webhook and a receipt
          e-mail, so both queues carry work); then waits until every event is delivered.
  drain   the worker is stopped, `--drain` purchases are made, the worker is started again: how fast one worker
          works off a backlog (relay fan-out + webhook attempts) is its capacity in deliveries per second.

Latency of a delivery = its arrival at the receiver (or SMTP sink) − the commit of the purchase (the token's
`created_at`, taken inside the purchase's transaction, so the figure errs long). Also printed: duplicates (a
`webhook-id` received twice), jobs the worker ran per attempt, the machine's load average. Exits with 1 if an event
was not delivered, a signature did not verify, or p99 of `token.purchased` in the steady phase is above 5 s.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from queue import Empty, Queue
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from rq import Worker as RqWorker  # noqa: E402
from rq.registry import FailedJobRegistry, FinishedJobRegistry  # noqa: E402
from standardwebhooks import Webhook  # noqa: E402

from bench.harness import Client, add_service_options, migrate, must, sign_up, throwaway_database  # noqa: E402
from bench.report import cpu_seconds, percentile, table  # noqa: E402
from tests.e2e.harness import LOOPBACK, Gunicorn, Worker  # noqa: E402
from tests.support import SmtpSink  # noqa: E402

PURCHASE = "/api/v1/tokens/purchase"
MOCK_PURCHASE = "/api/v1/currency/mock-purchase"
P99_TARGET_SECONDS = 5.0
CLIENT_THREADS = 8
WAIT_FOR_DELIVERY_SECONDS = 180


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class Receiver:
    """Webhook receiver on 127.0.0.1: verifies every request with the endpoint's secret (Standard Webhooks library)
    and keeps (arrival, webhook-id, body) per request; answers 204."""

    def __init__(self) -> None:
        self.secrets: dict[str, Webhook] = {}
        self.received: list[tuple[float, str, dict[str, Any]]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                arrived = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    parsed = receiver.secrets[self.path].verify(body, dict(self.headers.items()))
                except Exception:
                    parsed = None
                with receiver.lock:
                    if parsed is None:
                        receiver.bad_signatures += 1
                    else:
                        receiver.received.append((arrived, self.headers["webhook-id"], parsed))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def arrivals(self, event_type: str, key: str) -> dict[str, list[float]]:
        """data[key] → arrival times of the `event_type` messages carrying it."""
        found: dict[str, list[float]] = {}
        with self.lock:
            for arrived, _, body in self.received:
                if body["type"] == event_type:
                    found.setdefault(body["data"][key], []).append(arrived)
        return found


class TimedList(list):
    """The SMTP sink's message list, keeping each message's arrival time with it."""

    def append(self, message: Any) -> None:
        super().append((time.time(), message))


class Load:
    """Open-loop load: purchases (and top-ups) due at fixed times, made by a pool of client threads."""

    def __init__(self, port: int, users: list[dict[str, Any]]):
        self.port = port
        self.users = users
        self.purchases: dict[str, float] = {}  # token id → commit (created_at)
        self.topups: dict[str, float] = {}  # transaction id → commit (created_at)
        self.errors: Counter = Counter()
        self.lock = threading.Lock()

    def run(self, rate: float, seconds: float, topups_per_second: float) -> float:
        tasks: Queue = Queue()
        stop = threading.Event()

        def client_thread() -> None:
            client = Client(self.port)
            while not (stop.is_set() and tasks.empty()):
                try:
                    kind, user = tasks.get(timeout=0.1)
                except Empty:
                    continue
                self.one(client, kind, user)
            client.close()

        threads = [threading.Thread(target=client_thread, daemon=True) for _ in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        made = topped = 0
        while (elapsed := time.monotonic() - started) < seconds:
            while made < elapsed * rate:
                tasks.put(("purchase", self.users[made % len(self.users)]))
                made += 1
            while topups_per_second and topped < elapsed * topups_per_second:
                tasks.put(("topup", self.users[(topped * 7) % len(self.users)]))
                topped += 1
            time.sleep(0.005)
        stop.set()
        for thread in threads:
            thread.join(60)
        return time.monotonic() - started

    def burst(self, count: int) -> None:
        client = Client(self.port)
        for index in range(count):
            self.one(client, "purchase", self.users[index % len(self.users)])
        client.close()

    def one(self, client: Client, kind: str, user: dict[str, Any]) -> None:
        try:
            if kind == "purchase":
                status, body = client.call("POST", PURCHASE, {"duration_hours": 1}, user["headers"])
                if status == 201:
                    with self.lock:
                        self.purchases[body["id"]] = epoch(body["created_at"])
                    return
            else:
                status, body = client.call("POST", MOCK_PURCHASE, {"amount": "1"}, user["headers"])
                if status in (200, 201):
                    with self.lock:
                        self.topups[body["transaction"]["id"]] = epoch(body["transaction"]["created_at"])
                    return
            outcome = f"{kind} {status}"
        except OSError as error:
            client.close()
            outcome = f"{kind} {type(error).__name__}"
        with self.lock:
            self.errors[outcome] += 1


def latencies(commits: dict[str, float], arrivals: dict[str, list[float]]) -> tuple[list[float], int, int]:
    """(first-arrival latencies, missing, duplicates)."""
    found = [min(arrivals[key]) - committed for key, committed in commits.items() if key in arrivals]
    duplicates = sum(len(arrivals[key]) - 1 for key in commits if key in arrivals)
    return found, len(commits) - len(found), duplicates


def row(name: str, values: list[float], missing: int, duplicates: int) -> list[str]:
    return [name, str(len(values)), str(missing), str(duplicates),
            *(f"{percentile(values, p) * 1000:.0f}" for p in (50, 90, 99)),
            f"{max(values, default=float('nan')) * 1000:.0f}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=12.0, help="purchases per second (default 12)")
    parser.add_argument("--seconds", type=float, default=150.0, help="length of the steady phase (default 150)")
    parser.add_argument("--users", type=int, default=24, help="users, each with one webhook endpoint (default 24)")
    parser.add_argument("--topups-per-second", type=float, default=1.0, help="mock top-ups per second (default 1)")
    parser.add_argument("--drain", type=int, default=600, help="purchases in the drain phase (0: skip it)")
    add_service_options(parser, "redis://127.0.0.1:6379/14", "a Redis DB of its own (flushed)")
    args = parser.parse_args()

    with throwaway_database(args.database_server, f"; redis {args.redis_url}") as database_url:
        redis.Redis.from_url(args.redis_url).flushdb()
        return bench(args, database_url)


def wait_delivered(load: Load, receiver: Receiver, sink_messages: TimedList, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        purchased = receiver.arrivals("token.purchased", "token_id")
        topped = receiver.arrivals("balance.topped_up", "transaction_id")
        if all(key in purchased for key in load.purchases) and all(key in topped for key in load.topups) \
                and len(sink_messages) >= len(load.topups):
            return
        time.sleep(0.2)


def bench(args: argparse.Namespace, database_url: str) -> int:
    migrate(database_url, args.redis_url)

    receiver = Receiver()
    with SmtpSink() as sink:
        sink.messages = TimedList()
        env = {"RATELIMIT_REGISTER": "100000 per hour", "RATELIMIT_API_FREE": "1000000",
               "SMTP_HOST": LOOPBACK, "SMTP_PORT": str(sink.port)}
        with Gunicorn(database_url, args.redis_url, extra_env=env, workers=2) as server, \
                Worker(database_url, args.redis_url, extra_env=env) as worker:
            setup = Client(server.port)
            tag = uuid.uuid4().hex[:6]
            users = [sign_up(setup, f"bench_{tag}_{i}") for i in range(args.users)]
            for index, user in enumerate(users):
                path = f"/hooks/{index}"
                created = must(setup.call("POST", "/api/v1/webhooks/endpoints",
                                          {"url": receiver.url(path),
                                           "events": ["token.purchased", "balance.topped_up"]},
                                          user["headers"]), 201, "endpoint")
                receiver.secrets[path] = Webhook(created["secret"])
                must(setup.call("POST", MOCK_PURCHASE, {"amount": "100000"}, user["headers"]), 201, "funding")
            setup.close()
            time.sleep(3)  # the funding's own receipts and webhooks go out before the clock starts
            receiver.received.clear()
            sink.messages.clear()
            print(f"gunicorn ×2 on 127.0.0.1:{server.port}, one worker (pid {worker.pid}); {args.users} users with "
                  f"an endpoint each; steady {args.rate:g} purchases/s + {args.topups_per_second:g} top-ups/s for "
                  f"{args.seconds:g} s; load average before: {load_average()}")

            load = Load(server.port, users)
            worker_cpu_before = cpu_seconds(worker.pid)
            began = time.time()
            took = load.run(args.rate, args.seconds, args.topups_per_second)
            load_during = load_average()
            wait_delivered(load, receiver, sink.messages, WAIT_FOR_DELIVERY_SECONDS)
            ended = time.time()
            worker_cpu = cpu_seconds(worker.pid) - worker_cpu_before

            purchased, p_missing, p_dupes = latencies(load.purchases, receiver.arrivals("token.purchased", "token_id"))
            topped, t_missing, t_dupes = latencies(load.topups,
                                                   receiver.arrivals("balance.topped_up", "transaction_id"))
            mail_arrivals: dict[str, list[float]] = {}
            for arrived, message in list(sink.messages):
                text = message.get_body(preferencelist=("plain",)).get_content()
                for transaction_id in load.topups:
                    if transaction_id in text:
                        mail_arrivals.setdefault(transaction_id, []).append(arrived)
            mailed, m_missing, m_dupes = latencies(load.topups, mail_arrivals)
            delivered_in_window = sum(1 for arrived, _, _ in receiver.received if arrived <= began + took) + \
                sum(1 for arrived, _ in sink.messages if arrived <= began + took)
            ids = Counter(webhook_id for _, webhook_id, _ in receiver.received)

            connection = redis.Redis.from_url(args.redis_url)
            delivery_jobs = sum(FinishedJobRegistry(name, connection=connection).count +
                                FailedJobRegistry(name, connection=connection).count for name in ("webhooks", "emails"))
            all_jobs = sum(w.successful_job_count + w.failed_job_count for w in RqWorker.all(connection=connection))
            engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
            with engine.connect() as db:
                attempts = db.execute(sa.text("SELECT (SELECT coalesce(sum(attempts), 0) FROM webhook_deliveries) + "
                                              "(SELECT coalesce(sum(attempts), 0) FROM email_messages)")).scalar()

            print(f"\nsteady phase: {len(load.purchases)} purchases and {len(load.topups)} top-ups in {took:.1f} s "
                  f"({len(load.purchases) / took:.2f} purchases/s); client errors: {dict(load.errors) or 0}; "
                  f"load average during: {load_during}")
            print(table([["delivery", "delivered", "missing", "duplicates", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                         row("token.purchased webhook", purchased, p_missing, p_dupes),
                         row("balance.topped_up webhook", topped, t_missing, t_dupes),
                         row("receipt e-mail", mailed, m_missing, m_dupes)]))
            print(f"deliveries/s during the phase (one worker): {delivered_in_window / took:.1f}; worker CPU "
                  f"{worker_cpu:.1f} s of {ended - began:.1f} s ({worker_cpu / (ended - began) * 100:.0f} %); "
                  f"webhook-ids received twice: {sum(1 for count in ids.values() if count > 1)}; bad signatures: "
                  f"{receiver.bad_signatures}")
            print(f"jobs: {delivery_jobs} delivery jobs (webhooks + emails queues) for {attempts} attempts "
                  f"({delivery_jobs / max(attempts, 1):.3f} per attempt); {all_jobs} jobs in all (relay runs and "
                  f"periodic jobs included)")

            capacity = None
            if args.drain:
                worker.terminate()
                receiver.received.clear()
                drain = Load(server.port, users)
                drain.burst(args.drain)
                print(f"\ndrain phase: {len(drain.purchases)} purchases made while the worker was stopped; "
                      f"load average: {load_average()}")
                worker.spawn()
                restarted = time.time()
                wait_delivered(drain, receiver, TimedList(), WAIT_FOR_DELIVERY_SECONDS)
                arrivals = receiver.arrivals("token.purchased", "token_id")
                done = [min(arrivals[key]) for key in drain.purchases if key in arrivals]
                if done:
                    first, last = min(done), max(done)
                    capacity = (len(done) - 1) / (last - first) if last > first else float("nan")
                    print(f"one worker delivered {len(done)} of {len(drain.purchases)} in {last - restarted:.1f} s "
                          f"after its start (first after {first - restarted:.1f} s): {capacity:.1f} deliveries/s "
                          f"(relay fan-out included); load average: {load_average()}")

            p99 = percentile(purchased, 99)
            ok = (p_missing == t_missing == m_missing == 0 and receiver.bad_signatures == 0
                  and p99 <= P99_TARGET_SECONDS)
            print(f"\ntarget p99 ≤ {P99_TARGET_SECONDS:g} s for token.purchased with one worker: "
                  f"{'met' if p99 <= P99_TARGET_SECONDS else 'MISSED'} ({p99:.2f} s)")
            return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
