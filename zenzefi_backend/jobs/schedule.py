"""The periodic schedule (SPEC §4) and the single scheduler that enqueues it.

Any number of processes may run a scheduler; a Redis lease lets exactly one of them enqueue at a time,
and each run has a per-slot key, so a slot is enqueued once even if two leaders ever overlapped.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from datetime import time as clock_time

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry

from ..clock import now
from .audit import audit_retention
from .health import health_check
from .maintenance import purge_expired_job
from .notifications import delivery_log_retention, expiring_token_emails_job, relay_outbox_job
from .payments import expire_pending_payments_job, reconcile_payments_job
from .plans import expire_plans_job
from .proxy import sweep_proxy_sessions
from .renewal import auto_renewal_job
from .tokens import expire_tokens_job

log = logging.getLogger(__name__)

LEADER_KEY = "zenzefi:scheduler:leader"
SLOT_KEY = "zenzefi:scheduler:slot:{name}:{slot}"
LEASE_SECONDS = 30
TICK_SECONDS = 1.0
# A failed periodic run is retried after 10 s, 1 min and 5 min (RQ's scheduler, which the worker runs),
# then stays in the FailedJobRegistry (`flask jobs status`) for FAILURE_TTL_SECONDS.
RETRY_INTERVALS = (10, 60, 300)
FAILURE_TTL_SECONDS = 7 * 86400

# Renew or release the lease only if we still hold it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Periodic:
    name: str
    func: Callable
    every_seconds: int | None = None
    daily_at: clock_time | None = None
    queue: str = "default"
    timeout_seconds: int = 600

    def slot(self, moment: datetime) -> str | None:
        """The run this moment belongs to, or None if a daily job's time has not come yet today."""
        if self.every_seconds:
            return str(int(moment.timestamp()) // self.every_seconds)
        assert self.daily_at is not None
        if moment.time() < self.daily_at:
            return None
        return moment.date().isoformat()

    def slot_ttl(self) -> int:
        return 2 * self.every_seconds if self.every_seconds else 2 * 86400


SCHEDULE: tuple[Periodic, ...] = (
    Periodic("health_check", health_check, every_seconds=50, timeout_seconds=30),
    Periodic("proxy_sessions", sweep_proxy_sessions, every_seconds=60),
    Periodic("relay_outbox", relay_outbox_job, every_seconds=60),
    Periodic("expire_tokens", expire_tokens_job, every_seconds=300),
    Periodic("expire_payments", expire_pending_payments_job, every_seconds=300),
    Periodic("reconcile_payments", reconcile_payments_job, every_seconds=300),
    Periodic("expiring_token_emails", expiring_token_emails_job, every_seconds=3600),
    Periodic("auto_renewal", auto_renewal_job, every_seconds=3600),
    Periodic("expire_plans", expire_plans_job, every_seconds=3600),
    Periodic("purge_expired", purge_expired_job, every_seconds=3600),
    Periodic("audit_retention", audit_retention, daily_at=clock_time(3, 0)),
    Periodic("delivery_log_retention", delivery_log_retention, daily_at=clock_time(3, 0)),
)


def by_name(name: str) -> Periodic:
    for periodic in SCHEDULE:
        if periodic.name == name:
            return periodic
    raise KeyError(name)


class PeriodicScheduler:
    def __init__(self, connection: Redis, schedule: tuple[Periodic, ...] = SCHEDULE, *, is_async: bool = True):
        self.connection = connection
        self.schedule = schedule
        self.is_async = is_async  # False: each job runs right here, in the scheduler's thread (embedded default)
        self.identity = uuid.uuid4().hex
        self.stopped = threading.Event()
        self._renew = connection.register_script(_RENEW)
        self._release = connection.register_script(_RELEASE)

    def is_leader(self) -> bool:
        lease_ms = LEASE_SECONDS * 1000
        if self.connection.set(LEADER_KEY, self.identity, nx=True, px=lease_ms):
            return True
        return bool(self._renew(keys=[LEADER_KEY], args=[self.identity, lease_ms]))

    def enqueue_due(self, moment: datetime) -> list[str]:
        enqueued = []
        for periodic in self.schedule:
            slot = periodic.slot(moment)
            if slot is None:
                continue
            key = SLOT_KEY.format(name=periodic.name, slot=slot)
            if not self.connection.set(key, self.identity, nx=True, ex=periodic.slot_ttl()):
                continue
            Queue(periodic.queue, connection=self.connection, is_async=self.is_async).enqueue(
                periodic.func,
                job_id=f"periodic-{periodic.name}-{slot}",
                job_timeout=periodic.timeout_seconds,
                result_ttl=3600,
                failure_ttl=FAILURE_TTL_SECONDS,
                retry=Retry(max=len(RETRY_INTERVALS), interval=list(RETRY_INTERVALS)),
            )
            enqueued.append(periodic.name)
        return enqueued

    def tick(self) -> list[str]:
        if not self.is_leader():
            return []
        return self.enqueue_due(now())

    def run(self) -> None:
        log.info("periodic scheduler started", extra={"jobs": [p.name for p in self.schedule]})
        unreachable = False
        while not self.stopped.is_set():
            try:
                enqueued = self.tick()
                if unreachable:
                    log.warning("scheduler reaches Redis again")
                    unreachable = False
                if enqueued:
                    log.info("enqueued periodic jobs", extra={"jobs": enqueued})
            except RedisError as exc:
                if not unreachable:  # once per outage, not once a second
                    log.warning("scheduler cannot reach Redis (%s); retrying every second", type(exc).__name__)
                unreachable = True
            self.stopped.wait(TICK_SECONDS)
        self.release()

    def release(self) -> None:
        with contextlib.suppress(RedisError):
            self._release(keys=[LEADER_KEY], args=[self.identity])
