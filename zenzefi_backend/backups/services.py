"""Database backups: `pg_dump`/`pg_restore` for PostgreSQL, the online backup API for SQLite.

A backup is one file named `zenzefi-<UTC timestamp>.dump` (PostgreSQL, custom format) or
`zenzefi-<UTC timestamp>.sqlite3` (SQLite), written under a temporary name and renamed when complete, so a
listed backup is always a whole one. The timestamp in the name is what `list` and `prune` go by (copying a
file around does not change its age).

The PostgreSQL password reaches the tools through `PGPASSWORD` in their environment, never on the
command line (where `ps` would show it).
"""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from flask import Flask

from ..clock import now
from ..database import db

PREFIX = "zenzefi-"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
EXTENSIONS = {"postgresql": ".dump", "sqlite": ".sqlite3"}
NAME = re.compile(r"^zenzefi-(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<sequence>\d+))?(?P<ext>\.dump|\.sqlite3)$")
PARTIAL_SUFFIX = ".part"
SQLITE_HEADER = b"SQLite format 3\x00"
PG_CUSTOM_HEADER = b"PGDMP"
SQLITE_PAGES_PER_STEP = 256
TOOL_HINT = "install the PostgreSQL client tools (e.g. `apt-get install postgresql-client`) or put them on PATH"

# (done, total): called as the work advances; total is the number of tables (PostgreSQL) or pages (SQLite).
Progress = Callable[[int, int], None]


class BackupError(Exception):
    """Something an operator must read: a missing tool, a wrong file, a failed dump or restore."""


@dataclass(frozen=True)
class BackupFile:
    path: Path
    created_at: datetime
    size: int
    sequence: int = 0  # the -1, -2 … of backups made within the same second

    @property
    def kind(self) -> str:
        return "postgresql" if self.path.suffix == EXTENSIONS["postgresql"] else "sqlite"

    def age(self, moment: datetime | None = None) -> timedelta:
        return (moment or now()) - self.created_at


def default_directory(app: Flask) -> Path:
    return Path(app.instance_path) / "backups"


def _backend() -> tuple[str, sa.URL]:
    url = db.engine.url
    backend = url.get_backend_name()
    if backend not in EXTENSIONS:
        raise BackupError(f"backups support PostgreSQL and SQLite, not {backend}")
    return backend, url


def _no_progress(done: int, total: int) -> None:
    pass


# --- files ---------------------------------------------------------------------------------------------


def _parse(path: Path) -> BackupFile | None:
    match = NAME.match(path.name)
    if match is None or not path.is_file():
        return None
    created = datetime.strptime(match["stamp"], STAMP_FORMAT).replace(tzinfo=UTC)
    return BackupFile(path, created, path.stat().st_size, int(match["sequence"] or 0))


def list_backups(directory: Path) -> list[BackupFile]:
    """Our backup files in `directory`, newest first (other files are left out)."""
    if not directory.is_dir():
        return []
    found = [backup for path in directory.iterdir() if (backup := _parse(path)) is not None]
    return sorted(found, key=lambda backup: (backup.created_at, backup.sequence), reverse=True)


def _new_path(directory: Path, moment: datetime, extension: str) -> Path:
    stamp = moment.astimezone(UTC).strftime(STAMP_FORMAT)
    path = directory / f"{PREFIX}{stamp}{extension}"
    counter = 0
    while path.exists() or path.with_name(path.name + PARTIAL_SUFFIX).exists():
        counter += 1
        path = directory / f"{PREFIX}{stamp}-{counter}{extension}"
    return path


def prune(directory: Path, keep_days: int, moment: datetime | None = None) -> list[BackupFile]:
    """Delete our backups older than `keep_days`, but never the newest one; the deleted ones."""
    if keep_days < 1:
        raise BackupError("--keep-days must be at least 1")
    cutoff = (moment or now()) - timedelta(days=keep_days)
    backups = list_backups(directory)
    removed = []
    for backup in backups[1:]:  # the newest backup stays, however old: pruning must never leave none
        if backup.created_at < cutoff:
            backup.path.unlink(missing_ok=True)
            removed.append(backup)
    return removed


# --- create ----------------------------------------------------------------------------------------------


def create_backup(directory: Path, progress: Progress = _no_progress, moment: datetime | None = None) -> BackupFile:
    """Back up the configured database into a new file in `directory`."""
    backend, url = _backend()
    directory.mkdir(parents=True, exist_ok=True)
    path = _new_path(directory, moment or now(), EXTENSIONS[backend])
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        if backend == "postgresql":
            _pg_dump(url, partial, progress)
        else:
            _sqlite_backup(_sqlite_path(url), partial, progress)
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    backup = _parse(path)
    assert backup is not None
    return backup


# --- restore ---------------------------------------------------------------------------------------------


def resolve(file: str | Path, directory: Path) -> Path:
    """A path as given, or else the name of a backup in `directory` (as `backup list` shows it)."""
    path = Path(file)
    if path.is_file():
        return path
    candidate = directory / path.name
    if path.parent == Path(".") and candidate.is_file():
        return candidate
    raise BackupError(f"no such backup file: {file}")


def restore_backup(file: Path, progress: Progress = _no_progress) -> None:
    """Replace the configured database's contents with the backup's. Stop the web and worker processes
    first: PostgreSQL's restore must drop the tables they use."""
    backend, url = _backend()
    kind = _file_kind(file)
    if kind != backend:
        raise BackupError(f"{file} is a {_LABELS[kind]} backup; the configured database is {_LABELS[backend]}")
    db.session.remove()
    db.engine.dispose()  # no pooled connection of ours holds a lock (PostgreSQL) or a stale page (SQLite)
    try:
        if backend == "postgresql":
            _pg_restore(url, file, progress)
        else:
            _sqlite_restore(file, _sqlite_path(url), progress)
    finally:
        db.engine.dispose()  # connections opened from here on see the restored schema


_LABELS = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}


def _file_kind(file: Path) -> str:
    try:
        with open(file, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise BackupError(f"cannot read {file}: {exc.strerror}") from None
    if header.startswith(PG_CUSTOM_HEADER):
        return "postgresql"
    if header == SQLITE_HEADER:
        return "sqlite"
    raise BackupError(f"{file} is neither a PostgreSQL custom-format dump nor an SQLite database")


# --- PostgreSQL ------------------------------------------------------------------------------------------


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} was not found on PATH; {TOOL_HINT}")
    return path


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def libpq_connection(url: sa.URL) -> tuple[str, dict[str, str]]:
    """The SQLAlchemy URL (`postgresql+psycopg://…`) as a libpq keyword/value conninfo string without the
    password, and the environment that carries the password."""
    parts: dict[str, str] = {}
    if url.host:
        parts["host"] = url.host
    if url.port:
        parts["port"] = str(url.port)
    if url.username:
        parts["user"] = url.username
    if url.database:
        parts["dbname"] = url.database
    for key, value in url.query.items():  # libpq parameters (sslmode, host=/socket/dir, …), as psycopg passes them
        parts[key] = ",".join(value) if isinstance(value, tuple) else value
    parts.setdefault("application_name", "zenzefi-backup")
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = url.password
    return " ".join(f"{key}={_quote(value)}" for key, value in parts.items()), env


def _run(argv: list[str], env: dict[str, str], total: int, step: re.Pattern[str], progress: Progress) -> None:
    """Run a pg tool in verbose mode, counting the stderr lines that mark one more table done."""
    progress(0, total)
    done = 0
    tail: deque[str] = deque(maxlen=50)
    process = subprocess.Popen(argv, env=env,  # noqa: S603 (our argv: a tool found on PATH, no shell) stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, errors="replace")
    assert process.stderr is not None
    for line in process.stderr:
        tail.append(line.rstrip())
        if step.search(line):
            done += 1
            progress(min(done, total), total)
    code = process.wait()
    if code != 0:
        errors = [line for line in tail if "error" in line.lower() or "fatal" in line.lower()] or list(tail)[-5:]
        raise BackupError(f"{Path(argv[0]).name} failed (exit {code}):\n" + "\n".join(errors[-10:]))
    progress(total, total)


def _pg_table_count() -> int:
    try:
        return db.session.execute(sa.text(
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )).scalar_one()
    except sa.exc.SQLAlchemyError as exc:
        db.session.rollback()
        raise BackupError(f"cannot reach the database: {getattr(exc, 'orig', None) or exc}") from None


def _pg_dump(url: sa.URL, target: Path, progress: Progress) -> None:
    tool = find_tool("pg_dump")
    conninfo, env = libpq_connection(url)
    total = _pg_table_count()
    db.session.remove()
    _run([tool, "--format=custom", "--verbose", "--no-password", f"--file={target}", f"--dbname={conninfo}"],
         env, total, re.compile(r"dumping contents of table"), progress)


def _pg_restore(url: sa.URL, file: Path, progress: Progress) -> None:
    tool = find_tool("pg_restore")
    conninfo, env = libpq_connection(url)
    listing = subprocess.run([tool, "--list", str(file)], env=env,  # noqa: S603 (no shell)
                             capture_output=True, text=True, errors="replace")
    if listing.returncode != 0:
        raise BackupError(f"pg_restore cannot read {file}:\n{listing.stderr.strip()[-2000:]}")
    total = sum(1 for line in listing.stdout.splitlines() if " TABLE DATA " in line)
    # One transaction: either the whole backup is in place, or the database is as it was.
    _run([tool, "--clean", "--if-exists", "--no-owner", "--single-transaction", "--exit-on-error", "--verbose",
          "--no-password", f"--dbname={conninfo}", str(file)],
         env, total, re.compile(r"processing data for table"), progress)


# --- SQLite ----------------------------------------------------------------------------------------------


def _sqlite_path(url: sa.URL) -> Path:
    if not url.database or url.database == ":memory:" or url.database.startswith("file::memory:"):
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(url.database)


def _sqlite_copy(source: sqlite3.Connection, target: sqlite3.Connection, progress: Progress) -> None:
    def report(_status: int, remaining: int, total: int) -> None:
        progress(total - remaining, total)

    source.backup(target, pages=SQLITE_PAGES_PER_STEP, progress=report)


def _sqlite_backup(database: Path, target: Path, progress: Progress) -> None:
    if not database.is_file():
        raise BackupError(f"the SQLite database {database} does not exist")
    try:
        source = sqlite3.connect(database, timeout=15)
        try:
            copy = sqlite3.connect(target)
            try:
                _sqlite_copy(source, copy, progress)
                copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal/-shm beside it
            finally:
                copy.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {database}: {exc}") from None


def _sqlite_restore(file: Path, database: Path, progress: Progress) -> None:
    source = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    try:
        verdict = source.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise BackupError(f"{file} is damaged: {verdict}")
        target = sqlite3.connect(database, timeout=15)
        try:
            _sqlite_copy(source, target, progress)
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot restore {file}: {exc}") from None
    finally:
        source.close()
