from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from ..backups import services as backups
from .ledger import verify as ledger_verify

backup_cli = AppGroup("backup", help="Back up and restore the database (pg_dump/pg_restore or SQLite's backup API).")

directory_option = click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Backup directory (default: instance/backups/).",
)


class ProgressDisplay:
    """A progress bar on a terminal; elsewhere (logs, cron mail) a line at every 10 %."""

    def __init__(self, label: str, unit: str):
        self.label = label
        self.unit = unit
        self.interactive = sys.stdout.isatty()
        self.bar = None
        self.shown = 0
        self.last_percent = -1

    def __call__(self, done: int, total: int) -> None:
        if self.interactive:
            if self.bar is None:
                self.bar = click.progressbar(length=max(total, 1), label=self.label, show_pos=True)
                self.bar.__enter__()
            self.bar.update(done - self.shown)
            self.shown = done
            return
        percent = 100 if total <= 0 else done * 100 // total
        if percent // 10 > self.last_percent // 10 or (percent == 100 and self.last_percent != 100):
            self.last_percent = percent
            click.echo(f"{self.label}: {percent:3d}% ({done}/{total} {self.unit})")

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc_info)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _age(age: timedelta) -> str:
    seconds = max(0, int(age.total_seconds()))
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def _units() -> str:
    return "tables" if current_app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql") else "pages"


@backup_cli.command("create")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write the backup to (default: instance/backups/).")
def create(output: Path | None) -> None:
    """Back up the database to a new file named with the UTC time."""
    directory = output or backups.default_directory(current_app)
    try:
        with ProgressDisplay("backing up", _units()) as progress:
            backup = backups.create_backup(directory, progress)
    except backups.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {backup.path} ({_size(backup.size)})")


@backup_cli.command("list")
@directory_option
def list_(directory: Path | None) -> None:
    """The backups, newest first, with size and age."""
    directory = directory or backups.default_directory(current_app)
    found = backups.list_backups(directory)
    if not found:
        click.echo(f"no backups in {directory}")
        return
    click.echo(f"backups in {directory}:")
    for backup in found:
        click.echo(f"{backup.path.name:<40} {_size(backup.size):>10}  {_age(backup.age()):>7} old  "
                   f"{backup.created_at:%Y-%m-%d %H:%M:%S} UTC")


@backup_cli.command("restore")
@click.argument("file")
@click.option("--yes", is_flag=True, help="Confirm: every table of the configured database is replaced.")
@click.pass_context
def restore(ctx: click.Context, file: str, yes: bool) -> None:
    """Replace the database's contents with FILE (a path, or a name from `backup list`), then verify the ledger.

    Stop the web and worker processes first. Exits 1 if the restore or the ledger check fails."""
    try:
        path = backups.resolve(file, backups.default_directory(current_app))
    except backups.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    if not yes:
        raise click.ClickException(
            f"not restoring: this replaces every table of the configured database with the contents of {path}. "
            "Run again with --yes to confirm."
        )
    try:
        with ProgressDisplay("restoring", _units()) as progress:
            backups.restore_backup(path, progress)
    except backups.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored {path}; checking the ledger")
    ctx.invoke(ledger_verify)  # prints its verdict; exits 1 on any mismatch


@backup_cli.command("prune")
@click.option("--keep-days", type=click.IntRange(min=1), default=30, show_default=True,
              help="Delete backups older than this many days (the newest backup is always kept).")
@directory_option
def prune(keep_days: int, directory: Path | None) -> None:
    """Delete old backups."""
    directory = directory or backups.default_directory(current_app)
    removed = backups.prune(directory, keep_days)
    for backup in removed:
        click.echo(f"removed {backup.path.name} ({_age(backup.age())} old)")
    click.echo(f"{len(removed)} backup(s) removed, {len(backups.list_backups(directory))} kept in {directory}")
