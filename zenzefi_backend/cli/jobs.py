from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from ..jobs.queues import queue_stats
from ..jobs.schedule import SCHEDULE, by_name

jobs_cli = AppGroup("jobs", help="Run and inspect background jobs.")


@jobs_cli.command("run")
@click.argument("name")
def run_job(name: str) -> None:
    """Run one periodic job now, in this process."""
    try:
        periodic = by_name(name)
    except KeyError:
        names = ", ".join(p.name for p in SCHEDULE)
        raise click.ClickException(f"unknown job {name!r}; known: {names}") from None
    result = periodic.func()
    click.echo(json.dumps({"job": name, "result": result}, default=str))


@jobs_cli.command("schedule")
def show_schedule() -> None:
    """List the periodic jobs and when they run."""
    for periodic in SCHEDULE:
        when = f"every {periodic.every_seconds} s" if periodic.every_seconds else f"daily at {periodic.daily_at} UTC"
        click.echo(f"{periodic.name:<28} {when:<22} queue={periodic.queue}")


@jobs_cli.command("status")
def status() -> None:
    """Queue depths, failed jobs and workers."""
    queues, workers, error = queue_stats()
    if error:
        raise click.ClickException(f"cannot read queues: {error}")
    for queue in queues:
        click.echo(f"{queue['name']:<10} depth={queue['depth']} failed={queue['failed']} "
                   f"scheduled={queue['scheduled']}")
    click.echo(f"workers={workers}")
