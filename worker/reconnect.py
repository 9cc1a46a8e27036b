"""The RQ worker across Redis outages: wait, reconnect with backoff, and run again what the outage interrupted.

RQ's own loop waits for Redis only while it is idle (dequeueing). An outage while it runs a job — a heartbeat, the
job's end being recorded — or at start-up makes `Worker.work` give up ("found an unhandled exception, quitting").
Here the process does not: it waits until Redis answers again (backoff with jitter, capped), makes sure the job
it was running is not lost, and starts a fresh RQ worker on the same queues.

What "not lost" means for the job that was running when Redis went away (its end was never recorded, or it was
taken from its queue but never marked started): once Redis is back it is queued again, at the front, with its id,
arguments and retries — from Redis if Redis still has it (a network blip, a restart with persistence), from this
process's copy if Redis lost its data. Jobs are idempotent (SPEC §4), so running one again after it did its work
but could not say so is safe. Jobs that were only queued when Redis lost its data, or that RQ took from a queue
but lost before it handed them over (the job's data could not be read), are not this process's to know: the
database keeps what they were for (the outbox, the e-mail and delivery rows) and the relay and the periodic
scheduler enqueue them again (notifications/delivery.py replaces a "queued" job that is in no queue).
"""
from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from zenzefi_backend.extensions import waits_in_queue
from zenzefi_backend.jobs.queues import InProcessWorker

log = logging.getLogger("worker")

BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
# An idle worker wakes this often (RQ's default blocks for worker_ttl - 15 s), below the Redis client's socket
# timeout (2 s), so an idle wait is never mistaken for a lost connection (RQ then sleeps, backing off to 8 s).
DEQUEUE_TIMEOUT_SECONDS = 1
# How often a worker without a running RQ scheduler tries to take the scheduler lock over. RQ tries only in its
# 10-minute maintenance: after the worker holding the lock was killed (the lock lives on for 61 s), delayed jobs
# (every retry of an e-mail or a webhook) would wait up to 10 minutes.
SCHEDULER_TAKEOVER_SECONDS = 5.0


@dataclass
class Backoff:
    """Exponential, capped, with ±25 % jitter so many workers do not reconnect in step."""

    first: float = BACKOFF_FIRST_SECONDS
    cap: float = BACKOFF_MAX_SECONDS
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next(self) -> float:
        delay = min(self.cap, self.first * 2 ** self.attempts)
        self.attempts += 1
        return delay * self.rng.uniform(0.75, 1.25)

    def reset(self) -> None:
        self.attempts = 0


class ReconnectingWorker(InProcessWorker):
    """The project's RQ worker (jobs run in this process, see `InProcessWorker`) that remembers the job whose end it
    has not seen recorded, re-registers itself when Redis comes back empty, and tears down without raising while
    Redis is away."""

    max_connection_wait_time = BACKOFF_MAX_SECONDS  # RQ's own wait while dequeueing: back within seconds

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.unfinished: tuple[Job, Queue] | None = None
        self.asked_to_stop = False
        self.runs_scheduler = False
        self.next_scheduler_takeover = 0.0

    @property
    def dequeue_timeout(self) -> int:
        return DEQUEUE_TIMEOUT_SECONDS

    def work(self, burst: bool = False, *args, with_scheduler: bool = False, **kwargs) -> bool:
        self.runs_scheduler = with_scheduler and not burst  # a burst worker runs the scheduler once, at its start
        self.next_scheduler_takeover = time.monotonic() + SCHEDULER_TAKEOVER_SECONDS
        return super().work(burst, *args, with_scheduler=with_scheduler, **kwargs)

    def take_over_scheduler(self) -> None:
        """Start the RQ scheduler if no process of ours runs it and the lock is free (its holder died)."""
        scheduler = self.scheduler
        if not self.runs_scheduler or scheduler is None or time.monotonic() < self.next_scheduler_takeover:
            return
        self.next_scheduler_takeover = time.monotonic() + SCHEDULER_TAKEOVER_SECONDS
        if scheduler._process is None or not scheduler._process.is_alive():
            scheduler.acquire_locks(auto_start=True)

    def request_stop(self, signum, frame) -> None:
        # RQ leaves its loop the same way for a stop while idle and for a failure; this tells them apart.
        self.asked_to_stop = True
        super().request_stop(signum, frame)

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.unfinished = (job, queue)
        super().execute_job(job, queue)
        # Here the job's end is recorded (by the job's success or by RQ's failure handling).
        self.unfinished = None

    def heartbeat(self, timeout: int | None = None, pipeline=None) -> None:
        if pipeline is None and not self.connection.exists(self.key):
            self.log.warning("Worker %s: Redis lost its data; registering again", self.name)
            self.register_birth()
        super().heartbeat(timeout, pipeline)
        if pipeline is None:
            self.take_over_scheduler()

    def teardown(self) -> None:
        if self.scheduler:
            self.stop_scheduler()
        with contextlib.suppress(RedisError):
            self.register_death()
        if self.pubsub_thread:
            self.pubsub_thread.stop()
            self.pubsub_thread.join(timeout=1)
            with contextlib.suppress(RedisError):
                self.pubsub.close()
            self.pubsub_thread = None


def requeue_unfinished(connection: Redis, job: Job, queue: Queue) -> bool:
    """Queue `job` again, at the front, unless Redis shows that it ended or is waiting already; True if queued."""
    try:
        status = Job.fetch(job.id, connection=connection).get_status()
    except NoSuchJobError:
        status = None  # Redis lost it (or all of its data)
    if status == JobStatus.QUEUED and waits_in_queue(Queue(queue.name, connection=connection), job.id):
        return False  # queued again already
    if status not in (None, JobStatus.STARTED, JobStatus.QUEUED):
        return False  # finished, failed or scheduled for a retry: RQ has it in hand
    registry = StartedJobRegistry(queue.name, connection=connection)
    stale = [entry for entry in connection.zrange(registry.key, 0, -1)
             if entry.decode().partition(":")[0] == job.id]
    if stale:
        connection.zrem(registry.key, *stale)
    job.connection = connection
    Queue(queue.name, connection=connection).enqueue_job(job, at_front=True)
    return True


def wait_for_redis(connection: Redis, stopped: threading.Event, backoff: Backoff) -> bool:
    """Until Redis answers PING (True) or a stop is requested (False)."""
    while not stopped.is_set():
        try:
            connection.ping()
            backoff.reset()
            return True
        except RedisError as exc:
            delay = backoff.next()
            log.warning("Redis unreachable (%s); trying again in %.1f s", type(exc).__name__, delay)
            stopped.wait(delay)
    return False


def run_worker(make_worker: Callable[[], ReconnectingWorker], connection: Redis, *, burst: bool,
               logging_level: str) -> int:
    """Run RQ workers one after another until a stop is requested (SIGTERM/SIGINT) or, with `burst`, until the
    queues are empty; each outage of Redis ends one and, once Redis answers again, the next one starts."""
    stopped = threading.Event()
    backoff = Backoff()
    unfinished: tuple[Job, Queue] | None = None

    def request_stop(*_) -> None:
        stopped.set()

    def own_signals() -> None:  # RQ installs its own while it works; between workers these apply
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    while True:
        own_signals()
        if not wait_for_redis(connection, stopped, backoff):
            return 0
        worker = None
        try:
            if unfinished is not None:
                job, queue = unfinished
                if requeue_unfinished(connection, job, queue):
                    log.warning("job %s was interrupted by the Redis outage; queued again", job.id)
                unfinished = None
            worker = make_worker()
            worker.work(burst=burst, with_scheduler=True, logging_level=logging_level)
        except RedisError as exc:
            log.warning("Redis went away (%s); the worker waits for it", type(exc).__name__)
        finally:
            own_signals()
        if worker is not None:
            unfinished = worker.unfinished or unfinished
            if worker.asked_to_stop:
                return 0
        if stopped.is_set():
            return 0
        if burst and unfinished is None and _reachable(connection) and not _queued(connection, worker):
            return 0
        log.warning("the RQ worker stopped without being asked to; starting it again once Redis answers")
        stopped.wait(backoff.next())


def _reachable(connection: Redis) -> bool:
    try:
        return bool(connection.ping())
    except RedisError:
        return False


def _queued(connection: Redis, worker: Worker | None) -> int:
    if worker is None:
        return 1
    try:
        return sum(queue.count for queue in worker.queues)
    except RedisError:
        return 1
