"""The one delivery mechanism e-mails and webhooks share: the row in the database is the promise to send, a Redis
job only the nudge to attempt it now.

- **Claim**: an attempt starts with a conditional UPDATE (attempts + 1 and a lease on a due pending row), so however
  many jobs run for one row, one of them makes the attempt; a worker that dies mid-attempt only delays a retry.
- **Retry schedule**: after attempt n fails, attempt n + 1 comes `retry_delays[n - 1]` later; after the last one the
  row has failed. A last attempt whose worker died (its lease ran out) is abandoned: the row failed.
- **Due query**: pending rows whose attempt (or lease) time has come.
- **Enqueue**: one RQ job per attempt, with the job id `<channel>-<row id>-<attempt number>` enqueued `unique`, so
  the relay, a retry and a sweep asking for the same attempt leave one job in Redis; after Redis lost its data the
  next sweep enqueues each due attempt once more. A job left in Redis that nothing will run any more does not count
  as enqueued (`_revive`): a delayed one whose time is long past (no RQ scheduler moves it: the worker that held
  the scheduler lock was killed), a failed, stopped or cancelled one, one started longer ago than its timeout (its
  worker died before the claim), a "queued" one that is in no queue (a worker took it and lost Redis before it
  could mark it started). Jobs are named by their dotted path: this package never imports `jobs/`, which
  imports it.
- **Answer**: what an attempt that was made found out is written down even if the database is away for a moment
  right after the send (`record_answer`): the message went out and cannot be taken back, so the worker waits for
  the database rather than letting the lease run out and the message go out again.
- **Purge**: finished rows older than the retention.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from redis.exceptions import RedisError
from rq import Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus

from ..clock import ensure_utc, now
from ..database import db, purge_in_batches
from ..errors import database_unreachable
from ..extensions import get_queue, waits_in_queue

log = logging.getLogger(__name__)

# A finished job's id is kept this long, so a sweep that read the row just before the job claimed it cannot
# enqueue the same attempt again (the claim moves the row on to the next attempt number or out of `pending`).
FINISHED_JOB_KEPT_SECONDS = 600
# A job that raised (the database was away, a bug) is retried by RQ with the same id; after the last retry its id
# is kept this long, and then a sweep may enqueue the attempt again.
JOB_RETRY_INTERVALS = (5, 30, 120)
FAILED_JOB_KEPT_SECONDS = 900
# A delayed job still waiting this long after its time has no RQ scheduler to move it to its queue (the scheduler
# polls every second); a sweep that finds its attempt due moves it there itself.
OVERDUE_SCHEDULED_SECONDS = 15
# A job started this much longer ago than its timeout is not running any more: its worker died before the claim.
STARTED_JOB_GRACE_SECONDS = 30
# An attempt's answer is written down again after these pauses while the database is unreachable: about 16 s in
# all, which fits in every channel's job timeout after its longest send.
RECORD_RETRY_SECONDS = (0.25, 0.5, 1, 2, 4, 8)

Answer = TypeVar("Answer")


@dataclass(frozen=True)
class Channel:
    """What differs between e-mails and webhook deliveries; everything else is the same code."""

    name: str  # the first part of the job id
    model: Any  # the table: id, status, attempts, next_attempt_at
    queue: str  # the RQ queue its jobs go to
    job: str  # the dotted name of the job function, called with the row id as a string
    lease: timedelta  # longer than an attempt can take: the job is killed first (job_timeout)
    job_timeout_seconds: float
    retry_delays: tuple[timedelta, ...]
    finished_states: tuple[str, ...]  # (success, failure)
    purge_age_column: str  # finished rows are purged by this column's age
    missing: str  # why a job for a row that is gone finds nothing to do
    claim_values: Callable[[datetime], dict[str, Any]] = field(default=lambda moment: {})

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays) + 1

    @property
    def failed(self) -> str:
        return self.finished_states[1]

    def job_id(self, row_id: uuid.UUID, attempt: int) -> str:
        return f"{self.name}-{row_id}-{attempt}"


def claim(channel: Channel, row_id: uuid.UUID, *returning: Any, commit: bool = True) -> sa.Row | None:
    """Attempts + 1 and a lease on a due pending row, committed (or left for the caller to commit with what else it
    reads, before it sends); (the new attempt number, *returning) of the row, or None if it was not ours (not due,
    not pending, out of attempts, claimed by another worker)."""
    model = channel.model
    moment = now()
    claimed = db.session.execute(
        sa.update(model)
        .where(model.id == row_id, model.status == "pending", model.next_attempt_at <= moment,
               model.attempts < channel.max_attempts)
        .values(attempts=model.attempts + 1, next_attempt_at=moment + channel.lease, **channel.claim_values(moment))
        .returning(model.attempts, *returning)
        .execution_options(synchronize_session=False)  # no ORM bookkeeping: callers read what RETURNING gives
    ).first()
    if commit or claimed is None:
        db.session.commit()
    return claimed


def retry_delay(channel: Channel, attempt: int) -> timedelta | None:
    """How long after failed attempt `attempt` the next one comes; None after the last."""
    return channel.retry_delays[attempt - 1] if attempt < channel.max_attempts else None


def why_not_claimed(channel: Channel, row_id: uuid.UUID,
                    on_abandon: Callable[[uuid.UUID], str] | None = None) -> str:
    """Why a job found nothing to attempt; a row whose last attempt never answered is failed here (`on_abandon`
    marks it, in an open transaction the caller of `abandon` commits)."""
    model = channel.model
    row = db.session.execute(
        sa.select(model.status, model.attempts, model.next_attempt_at).where(model.id == row_id)
    ).first()
    db.session.rollback()
    if row is None:
        return f"nothing to do: {channel.missing}"
    if row.status != "pending":
        return f"nothing to do: already {row.status}"
    if ensure_utc(row.next_attempt_at) > now():
        return "nothing to do: not due yet, or another worker is attempting it"
    if row.attempts >= channel.max_attempts and on_abandon is not None:
        return on_abandon(row_id)
    return "nothing to do: claimed by another worker"


def abandon(channel: Channel, row_id: uuid.UUID, **values: Any) -> bool:
    """Fail a row whose last attempt's lease ran out without an answer (its worker died); True if this caller did
    it. Leaves the transaction open for the caller's bookkeeping and commit."""
    model = channel.model
    moment = now()
    return db.session.execute(
        sa.update(model)
        .where(model.id == row_id, model.status == "pending", model.next_attempt_at <= moment,
               model.attempts >= channel.max_attempts)
        .values(status=channel.failed, last_error="the last attempt never reported an answer", **values)
        .returning(model.id)
    ).scalar() is not None


def record_answer(write: Callable[[], Answer]) -> Answer:
    """Run `write`, which writes down what a sent attempt found out and commits, until it succeeds while the database
    is unreachable (RECORD_RETRY_SECONDS); any other error, or the last one, is raised. Each try starts on a fresh
    transaction, so `write` does all its work from the ids it is given."""
    pauses = iter(RECORD_RETRY_SECONDS)
    while True:
        try:
            return write()
        except sa.exc.SQLAlchemyError as error:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                db.session.rollback()
            pause = next(pauses, None)
            if pause is None or not database_unreachable(error):
                raise
            log.warning("cannot write down an attempt's answer: the database is unreachable; trying again",
                        extra={"in_seconds": pause})
            time.sleep(pause)


def due(channel: Channel, moment: datetime, limit: int = 500) -> list[tuple[uuid.UUID, int]]:
    """(id, attempts made) of the pending rows whose attempt (or lease) time has come, oldest first."""
    model = channel.model
    return [(row_id, attempts) for row_id, attempts in db.session.execute(
        sa.select(model.id, model.attempts)
        .where(model.status == "pending", model.next_attempt_at <= moment)
        .order_by(model.next_attempt_at).limit(limit)
    )]


def enqueue(channel: Channel, row_id: uuid.UUID, attempt: int, delay_seconds: float = 0) -> bool:
    """Hand attempt number `attempt` of a row to a worker, now or after `delay_seconds`, after the commit that made
    the row due. A job already in Redis for this attempt (queued, scheduled, running or just finished) is left as it
    is: each attempt is enqueued once; unless the attempt is due now and that job will not run (`_revive`). False
    when Redis cannot be reached (the next sweep enqueues it).

    In the embedded default an immediate attempt runs inline, right here; a delayed one waits for the sweep."""
    queue = get_queue(channel.queue)
    job_id = channel.job_id(row_id, attempt)
    options = {"job_id": job_id, "job_timeout": channel.job_timeout_seconds}
    try:
        if not queue.is_async:
            if delay_seconds <= 0:
                queue.enqueue(channel.job, str(row_id), **options)
            return True
        options.update(unique=True, result_ttl=FINISHED_JOB_KEPT_SECONDS, failure_ttl=FAILED_JOB_KEPT_SECONDS,
                       retry=Retry(max=len(JOB_RETRY_INTERVALS), interval=list(JOB_RETRY_INTERVALS)))
        if delay_seconds <= 0:
            queue.enqueue(channel.job, str(row_id), **options)
        else:
            # RQ keeps the time to the whole second, rounded down: a second late, never before the row is due.
            queue.enqueue_in(timedelta(seconds=math.ceil(delay_seconds) + 1), channel.job, str(row_id), **options)
    except DuplicateJobError:
        if delay_seconds <= 0:
            try:
                _revive(queue, channel, str(row_id), options)
            except RedisError:
                log.warning("cannot enqueue an attempt; the next sweep will", extra={"job_id": job_id})
                return False
        return True
    except RedisError:
        log.warning("cannot enqueue an attempt; the next sweep will", extra={"job_id": job_id})
        return False
    return True


def _revive(queue: Any, channel: Channel, row_id: str, options: dict[str, Any]) -> None:
    """The attempt is due now and a job with its id is in Redis already: leave it if a worker will run it; queue it
    if it is a delayed job nobody moved to its queue; replace it if nothing will run it (`_will_run`)."""
    job_id = options["job_id"]
    try:
        job = Job.fetch(job_id, connection=queue.connection)
    except NoSuchJobError:
        job = None  # gone since (expired, or Redis lost its data): enqueue it afresh
    moment = datetime.now(UTC)  # RQ's own times are the real clock's
    if job is not None:
        status = job.get_status()
        if status == JobStatus.SCHEDULED:
            registry = queue.scheduled_job_registry
            try:
                late = (moment - registry.get_scheduled_time(job_id)).total_seconds()
            except NoSuchJobError:
                late = None  # not in the registry: being moved to its queue right now
            if late is not None and late > OVERDUE_SCHEDULED_SECONDS and registry.remove(job_id):
                queue.enqueue_job(job)  # the one sweep whose removal counted does the scheduler's work
                log.warning("a delayed attempt was not moved to its queue in time; queued", extra={"job_id": job_id})
            return
        if _will_run(queue, channel, job, status, moment):
            return
        job.delete()
        log.warning("an attempt's job will never run again; enqueued afresh",
                    extra={"job_id": job_id, "status": str(status)})
    with contextlib.suppress(DuplicateJobError):  # another sweep did it meanwhile
        queue.enqueue(channel.job, row_id, **options)


def _will_run(queue: Any, channel: Channel, job: Job, status: JobStatus | None, moment: datetime) -> bool:
    """Whether a worker runs (or ran) this job: yes if it is in a queue, running, finished (its claim moved the row
    on) or on its way; no if it failed, was stopped or cancelled, started longer ago than its timeout (its worker
    died before the claim), or says "queued" from no queue (its worker lost Redis as it took it). A sweep that
    looks in the few milliseconds between a worker taking a job and marking it started replaces a job that runs:
    the claim lets one of the two make the attempt."""
    if status == JobStatus.QUEUED:
        return waits_in_queue(queue, job.id)
    if status == JobStatus.STARTED:
        started = job.started_at and (job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC))
        return not started or (moment - started).total_seconds() <= (channel.job_timeout_seconds
                                                                     + STARTED_JOB_GRACE_SECONDS)
    return status not in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


def enqueue_due(channel: Channel, moment: datetime | None = None) -> int:
    """The sweep: enqueue every due attempt of the channel (each once, see `enqueue`); how many were due."""
    rows = due(channel, moment or now())
    db.session.rollback()  # no transaction held while enqueueing (inline jobs run right here)
    for row_id, attempts in rows:
        enqueue(channel, row_id, attempts + 1)
    return len(rows)


def purge(channel: Channel, older_than: datetime) -> int:
    """Forget finished rows whose purge column is older than `older_than`."""
    model = channel.model
    return purge_in_batches(model, model.status.in_(channel.finished_states),
                            getattr(model, channel.purge_age_column) < older_than)
