from __future__ import annotations

import json
import traceback

import click
from flask.cli import AppGroup
from rq import Queue

from ..database import db
from ..extensions import get_redis
from ..jobs.queues import queue_stats
from ..jobs.schedule import SCHEDULE, by_name

jobs_cli = AppGroup("jobs", help="Run and inspect background jobs.")


@jobs_cli.command("run")
@click.argument("name")
def run_job(name: str) -> None:
    """Run one periodic job now, in this process; exit 1 with the error if it fails."""
    try:
        periodic = by_name(name)
    except KeyError:
        names = ", ".join(p.name for p in SCHEDULE)
        raise click.ClickException(f"unknown job {name!r}; known: {names}") from None
    try:
        result = periodic.func()
    except Exception as exc:
        db.session.rollback()
        click.echo(traceback.format_exc(), err=True, nl=False)
        raise click.ClickException(f"job {name} failed: {type(exc).__name__}: {exc}") from None
    click.echo(json.dumps({"job": name, "result": result}, default=str))


@jobs_cli.command("schedule")
def show_schedule() -> None:
    """List the periodic jobs and when they run."""
    for periodic in SCHEDULE:
        when = f"every {periodic.every_seconds} s" if periodic.every_seconds else f"daily at {periodic.daily_at} UTC"
        click.echo(f"{periodic.name:<28} {when:<22} queue={periodic.queue}")


FAILED_SHOWN = 5


@jobs_cli.command("status")
def status() -> None:
    """Queue depths, failed jobs (with the latest few and their errors) and workers."""
    queues, workers, error = queue_stats()
    if error:
        raise click.ClickException(f"cannot read queues: {error}")
    for queue in queues:
        click.echo(f"{queue['name']:<10} depth={queue['depth']} failed={queue['failed']} "
                   f"scheduled={queue['scheduled']}")
        if queue["failed"]:
            for line in _latest_failures(queue["name"]):
                click.echo(f"  failed: {line}")
    click.echo(f"workers={workers}")


def _latest_failures(queue_name: str) -> list[str]:
    registry = Queue(queue_name, connection=get_redis()).failed_job_registry
    lines = []
    for job_id in registry.get_job_ids(start=0, end=FAILED_SHOWN - 1, desc=True):
        job = registry.get_queue().fetch_job(job_id)
        result = job.latest_result() if job is not None else None
        reason = (result.exc_string or "").strip().splitlines()[-1:] if result is not None else []
        lines.append(f"{job_id}: {reason[0] if reason else 'no error recorded'}")
    return lines
