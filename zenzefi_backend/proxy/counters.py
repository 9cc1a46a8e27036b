"""What the proxy counts, and how each count reaches its place.

- Requests, by method and status: `count_request` (proxy_requests_total), for the fast path and Flask's route.
- Request bytes (`bytes_in`) and the request count per session: added in Redis by the ADMIT round trip that
  admits the request (admission.py), or straight into the session row while Redis is unreachable
  (sessions.claim).
- Response bytes (`bytes_out`) are known only once a response has been sent, after that round trip.
  `PendingBytesOut.response_sent` keeps them per process; the next ADMIT this process runs (for any token)
  carries them into Redis, or a timer at most BYTES_OUT_FLUSH_SECONDS after the response ended when no request
  comes, so they cost no round trip of their own. Without Redis they go straight into the session row.
- `flush_counters` (the periodic sweep) moves the counters from Redis into the session rows and announces each
  addition (`usage_recorded`, which analytics' daily rollup receives in the same transaction).

`add_bytes_out` and `flush_counters` each own their transaction: they commit, and roll back only their own work.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from blinker import Namespace
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from ..clock import now
from ..database import UTCDateTime, db
from ..metrics import proxy_bytes, proxy_latency, proxy_requests
from .cache import PREFIX, redis_state
from .models import ProxySession

SESSION_KEY = PREFIX + "session:"  # + session id → counters not yet in the database
DIRTY_SESSIONS = PREFIX + "sessions:dirty"
# bytes_out (session, count) pairs carried by one ADMIT; the rest wait for the next one or the timer.
BYTES_OUT_PER_ADMIT = 32
# A finished response's bytes_out reaches Redis at most this long after it ended (sooner with the next ADMIT).
BYTES_OUT_FLUSH_SECONDS = 2.0
FLUSH_BATCH = 100  # sessions whose counters one flush transaction moves

log = logging.getLogger(__name__)

_BYTES_IN, _BYTES_OUT = proxy_bytes.labels("in"), proxy_bytes.labels("out")
_REQUESTS: dict[tuple[str, int], Any] = {}


class Usage(NamedTuple):
    """What was just added to a session row: by whom, when, how much."""

    user_id: uuid.UUID
    moment: datetime
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    sessions: int = 0


# Sent with `usages=[Usage, …]` inside the DB transaction that adds them to session rows (a session opened, the
# counter flush, the no-Redis path); receivers write in that same transaction, so what they derive (analytics'
# daily rollup) commits or rolls back with the rows.
usage_recorded = Namespace().signal("proxy.usage-recorded")


def count_request(method: str, status: int) -> None:
    """proxy_requests_total{method, status}, the labelled child looked up once per pair."""
    child = _REQUESTS.get((method, status))
    if child is None:
        child = _REQUESTS.setdefault((method, status), proxy_requests.labels(method, str(status)))
    child.inc()


def request_forwarded(seconds: float, bytes_in: int) -> None:
    """The upstream answered a request of `bytes_in` bytes after `seconds` (its body is still to come)."""
    proxy_latency.observe(seconds)
    if bytes_in:
        _BYTES_IN.inc(bytes_in)


class PendingBytesOut:
    """Response bytes of this process (of one app) not yet in Redis, by session id.

    `take` hands them to the next ADMIT (which adds them in the same round trip). A timer, armed by the first
    count that arrives while none is armed, writes whatever is left BYTES_OUT_FLUSH_SECONDS later, so no count
    waits longer than that even when no request follows; what it cannot write, it keeps.
    """

    def __init__(self, redis: Callable[[], Redis], app_context: Callable[[], AbstractContextManager[Any]]):
        self._redis = redis
        self._app_context = app_context
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._timer_pid = 0  # the process whose timer is armed (a timer does not survive a fork)
        _all_pending.add(self)

    def response_sent(self, session_id: str, via_redis: bool, count: int) -> None:
        """A response of the session ended after `count` bytes: counted in Redis by a later round trip, or, for a
        request admitted without Redis, in the session row now."""
        if count:
            _BYTES_OUT.inc(count)
        if via_redis:
            self.add(session_id, count)
            return
        with self._app_context():
            add_bytes_out(uuid.UUID(session_id), count)

    def add(self, session_id: str, count: int) -> None:
        if count > 0:
            self.give_back([(session_id, count)])

    def take(self, limit: int | None = None) -> list[tuple[str, int]]:
        if not self._counts:  # nothing pending: no need for the lock
            return []
        with self._lock:
            if limit is None or len(self._counts) <= limit:
                taken, self._counts = list(self._counts.items()), {}
            else:
                taken = [(key, self._counts.pop(key)) for key in list(self._counts)[:limit]]
        return taken

    def give_back(self, counts: list[tuple[str, int]]) -> None:
        if not counts:
            return
        pid = os.getpid()
        with self._lock:
            for session_id, count in counts:
                self._counts[session_id] = self._counts.get(session_id, 0) + count
            if self._timer_pid == pid:
                return
            self._timer_pid = pid
        timer = threading.Timer(BYTES_OUT_FLUSH_SECONDS, self._on_timer)
        timer.daemon = True
        timer.name = "proxy-bytes-out"
        timer.start()

    def flush_now(self) -> None:
        counts = self.take()
        if counts:
            self._write(counts)

    def _write(self, counts: list[tuple[str, int]]) -> None:
        """The timer's flush: into Redis; while Redis is unreachable, straight into the session rows."""
        if redis_state.available():
            try:
                _add_to_redis(self._redis(), counts)
                return
            except RedisError:
                redis_state.failed()
        written = 0
        try:
            with self._app_context():
                for session_id, count in counts:
                    add_bytes_out(uuid.UUID(session_id), count)
                    written += 1
        except SQLAlchemyError:
            log.warning("proxy: bytes_out kept for a later flush", exc_info=True)
            self.give_back(counts[written:])

    def _on_timer(self) -> None:
        with self._lock:
            self._timer_pid = 0
        try:
            self.flush_now()
        except Exception:
            log.exception("proxy: cannot flush bytes_out counters")


_all_pending: weakref.WeakSet[PendingBytesOut] = weakref.WeakSet()


@atexit.register
def _flush_pending_at_exit() -> None:
    """A worker that stops (gunicorn restarts it, a deploy) writes what it still holds."""
    for pending in list(_all_pending):
        try:
            pending.flush_now()
        except Exception:
            log.warning("proxy: bytes_out counters lost at exit", exc_info=True)


def _add_to_redis(client: Redis, counts: list[tuple[str, int]]) -> None:
    pipe = client.pipeline(transaction=False)
    for session_id, count in counts:
        pipe.hincrby(SESSION_KEY + session_id, "bytes_out", count)
        pipe.sadd(DIRTY_SESSIONS, session_id)
    pipe.execute()


def add_bytes_out(session_id: uuid.UUID, count: int) -> None:
    """The no-Redis path: count the response bytes straight into the session row."""
    user_id = db.session.scalar(sa.update(ProxySession).where(ProxySession.id == session_id)
                                .values(bytes_out=ProxySession.bytes_out + count).returning(ProxySession.user_id)
                                .execution_options(synchronize_session=False))
    if user_id is not None:
        usage_recorded.send(None, usages=[Usage(user_id, now(), bytes_out=count)])
    db.session.commit()


def flush_counters() -> int:
    """Move the request and byte counters from Redis into the session rows, FLUSH_BATCH sessions per DB
    transaction. Safe on several workers: each batch of counters is taken out of Redis atomically, so it is
    added exactly once (and given back to Redis if the database refuses it)."""
    client = redis_state.client
    flushed = 0
    while True:
        session_ids = sorted(raw.decode() for raw in client.spop(DIRTY_SESSIONS, FLUSH_BATCH) or [])
        if not session_ids:
            return flushed
        pipe = client.pipeline(transaction=True)
        for session_id in session_ids:
            pipe.hgetall(SESSION_KEY + session_id)
            pipe.delete(SESSION_KEY + session_id)
        replies = pipe.execute()
        taken = {session_id: {key.decode(): int(value) for key, value in counters.items()}
                 for session_id, counters in zip(session_ids, replies[::2], strict=True) if counters}
        if not taken:
            continue
        try:
            _add_counters(taken)
        except Exception:
            _give_back(taken)
            raise
        flushed += len(taken)


_SESSIONS = ProxySession.__table__
# One statement for the whole batch (executemany): counters added, last_activity only ever moved forward.
_ADD_COUNTERS = (
    sa.update(_SESSIONS).where(_SESSIONS.c.id == sa.bindparam("session_id"))
    .values(request_count=_SESSIONS.c.request_count + sa.bindparam("add_requests"),
            bytes_in=_SESSIONS.c.bytes_in + sa.bindparam("add_bytes_in"),
            bytes_out=_SESSIONS.c.bytes_out + sa.bindparam("add_bytes_out"),
            last_activity=sa.case((_SESSIONS.c.last_activity < sa.bindparam("seen", type_=UTCDateTime),
                                   sa.bindparam("seen", type_=UTCDateTime)), else_=_SESSIONS.c.last_activity))
)


def _add_counters(taken: dict[str, dict[str, int]]) -> None:
    """One transaction: the rows in session-id order (the same lock order on every worker), then the usage."""
    moment = now()
    rows = []
    for session_id, values in taken.items():
        seen = values.get("last_activity")
        rows.append({"session_id": uuid.UUID(session_id), "add_requests": values.get("requests", 0),
                     "add_bytes_in": values.get("bytes_in", 0), "add_bytes_out": values.get("bytes_out", 0),
                     "seen": datetime.fromtimestamp(seen / 1000, moment.tzinfo) if seen else None})
    db.session.execute(_ADD_COUNTERS, rows)
    owners = dict(db.session.execute(sa.select(ProxySession.id, ProxySession.user_id)
                                     .where(ProxySession.id.in_([row["session_id"] for row in rows]))).all())
    # Counted on the day of the last request of the batch (responses' bytes alone: the day of the flush).
    usage_recorded.send(None, usages=[
        Usage(owners[row["session_id"]], row["seen"] or moment, row["add_requests"], row["add_bytes_in"],
              row["add_bytes_out"])
        for row in rows if row["session_id"] in owners
    ])
    db.session.commit()


def _give_back(taken: dict[str, dict[str, int]]) -> None:
    """The database refused the counters: put them back for the next flush."""
    db.session.rollback()
    pipe = redis_state.client.pipeline(transaction=True)
    for session_id, values in taken.items():
        for field, value in values.items():
            if field == "last_activity":
                pipe.hset(SESSION_KEY + session_id, field, value)
            else:
                pipe.hincrby(SESSION_KEY + session_id, field, value)
        pipe.sadd(DIRTY_SESSIONS, session_id)
    pipe.execute()
