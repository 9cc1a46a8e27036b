"""`flask backup create | list | restore | prune` on the suite's own backend (PostgreSQL with TEST_DATABASE_URL,
else SQLite): backup → wipe → restore gives back an identical ledger that `ledger verify` accepts."""
from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from tests.fixtures.actions import buy_token
from zenzefi_backend.accounts.models import User
from zenzefi_backend.backups import services as backups
from zenzefi_backend.extensions import db
from zenzefi_backend.ledger.models import Transaction

NAME = re.compile(r"^zenzefi-\d{8}T\d{6}Z\.(dump|sqlite3)$")


def run(app, *args: str):
    return app.test_cli_runner().invoke(args=["backup", *args])


def build_ledger(client, accounts) -> None:
    """Three users with deposits, purchases and a refund: every kind of entry a restore must bring back."""
    for index in range(3):
        user = accounts.signed_in()
        accounts.fund(user["id"], str(50 + index))
        bought = [buy_token(client, user, hours) for hours in (1, 24)]
        revoked = client.delete(f"/api/v1/tokens/{bought[0]['id']}", headers=user["headers"])
        assert revoked.status_code == 200, revoked.get_json()


def snapshot(app) -> dict[str, Any]:
    """The ledger (every transaction row, every balance) and the number of rows of every table."""
    with app.app_context():
        transactions = [dict(row._mapping) for row in db.session.execute(
            sa.select(Transaction.__table__).order_by(Transaction.created_at, Transaction.id))]
        balances = dict(db.session.execute(sa.select(User.id, User.balance)).all())
        counts = {table.name: db.session.scalar(sa.select(sa.func.count()).select_from(table))
                  for table in db.metadata.sorted_tables}
        db.session.remove()
    return {"transactions": transactions, "balances": balances, "counts": counts}


def wipe(app, backends) -> None:
    """Lose everything: the whole schema on PostgreSQL, every table (Alembic's too) on SQLite."""
    with app.app_context():
        db.session.remove()
        with db.engine.begin() as connection:
            if backends.is_postgres:
                connection.execute(sa.text("DROP SCHEMA public CASCADE"))
                connection.execute(sa.text("CREATE SCHEMA public"))
            else:
                connection.execute(sa.text("PRAGMA foreign_keys=OFF"))
                for table in sa.inspect(connection).get_table_names():
                    connection.execute(sa.text(f'DROP TABLE "{table}"'))
        db.engine.dispose()
        assert sa.inspect(db.engine).get_table_names() == []


def test_backup_wipe_restore_gives_back_an_identical_ledger(app, client, accounts, backends, tmp_path,
                                                            monkeypatch):
    build_ledger(client, accounts)
    before = snapshot(app)
    assert len(before["transactions"]) == 12 and len(before["balances"]) == 3

    commands: list[list[str]] = []
    real_popen = subprocess.Popen

    def spy(argv, *args, **kwargs):
        commands.append(list(argv))
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(backups.subprocess, "Popen", spy)

    created = run(app, "create", "--output", str(tmp_path))
    assert created.exit_code == 0, created.output
    assert "backing up: 100%" in created.output
    (file,) = tmp_path.iterdir()
    assert NAME.match(file.name), file.name
    assert file.suffix == (".dump" if backends.is_postgres else ".sqlite3")
    assert f"created {file}" in created.output

    wipe(app, backends)
    restored = run(app, "restore", str(file), "--yes")
    assert restored.exit_code == 0, restored.output
    assert "restoring: 100%" in restored.output
    assert "ok: 3 users checked, 0 mismatches" in restored.output

    assert snapshot(app) == before
    with app.app_context():
        head = ScriptDirectory(str(Path(app.root_path).parent / "migrations")).get_current_head()
        assert db.session.scalar(sa.text("SELECT version_num FROM alembic_version")) == head
        db.session.remove()
    verified = app.test_cli_runner().invoke(args=["ledger", "verify"])
    assert verified.exit_code == 0 and verified.output.startswith("ok: 3 users checked"), verified.output

    # The app keeps working on the restored database.
    user = accounts.signed_in()
    accounts.fund(user["id"], "5")
    assert client.get("/api/v1/users/me", headers=user["headers"]).status_code == 200

    if backends.is_postgres:  # the tools ran, and no password was ever on their command line
        assert [Path(argv[0]).name for argv in commands] == ["pg_dump", "pg_restore", "pg_restore"]  # --list first
        assert "--format=custom" in commands[0]
        assert {"--clean", "--if-exists", "--no-owner"} <= set(commands[2])
        password = make_url(backends.database_url).password
        assert not password or all(password not in part for argv in commands for part in argv)
    else:
        assert commands == []


def test_restore_refuses_without_yes(app, accounts, tmp_path):
    accounts.register()
    created = run(app, "create", "--output", str(tmp_path))
    assert created.exit_code == 0, created.output
    (file,) = tmp_path.iterdir()
    before = snapshot(app)
    result = run(app, "restore", str(file))
    assert result.exit_code == 1
    assert "not restoring" in result.output and "--yes" in result.output
    assert "%" not in result.output  # no progress: nothing was started
    assert snapshot(app) == before


def test_restore_refuses_a_file_that_is_not_a_backup_of_this_kind(app, backends, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = run(app, "restore", str(text), "--yes")
    assert result.exit_code == 1
    assert "neither a PostgreSQL custom-format dump nor an SQLite database" in result.output

    other = tmp_path / ("zenzefi-20260101T000000Z.sqlite3" if backends.is_postgres
                        else "zenzefi-20260101T000000Z.dump")
    other.write_bytes(b"SQLite format 3\x00" if backends.is_postgres else b"PGDMP\x01\x0e\x00")
    result = run(app, "restore", str(other), "--yes")
    assert result.exit_code == 1
    assert "backup; the configured database is" in result.output

    missing = run(app, "restore", str(tmp_path / "nope.dump"), "--yes")
    assert missing.exit_code == 1 and "no such backup file" in missing.output


def test_create_defaults_to_instance_backups_and_list_shows_newest_first(app, tmp_path):
    directory = Path(app.instance_path) / "backups"
    first = run(app, "create")
    second = run(app, "create")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    found = backups.list_backups(directory)
    try:
        assert len(found) >= 2 and all(backup.path.parent == directory for backup in found)
        listed = run(app, "list")
        assert listed.exit_code == 0, listed.output
        names = [line.split()[0] for line in listed.output.splitlines()[1:]]
        assert names == [backup.path.name for backup in found]  # newest first
        assert names[0] in second.output.splitlines()[-1]
        assert re.search(r"KiB\s+0 min old", listed.output)
    finally:
        for backup in found:
            backup.path.unlink()


def fake_backup(directory: Path, age: timedelta, extension: str = ".dump", size: int = 10) -> Path:
    stamp = (datetime.now(UTC) - age).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"zenzefi-{stamp}{extension}"
    path.write_bytes(b"x" * size)
    return path


def test_list_sizes_and_ages(app, tmp_path):
    fake_backup(tmp_path, timedelta(days=3), size=3 * 1024 * 1024)
    fake_backup(tmp_path, timedelta(hours=5), ".sqlite3", size=2048)
    (tmp_path / "readme.txt").write_text("not a backup")
    listed = run(app, "list", "--dir", str(tmp_path))
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0] == f"backups in {tmp_path}:"
    assert re.search(r"\.sqlite3\s+2\.0 KiB\s+5 h old", lines[1]), lines[1]
    assert re.search(r"\.dump\s+3\.0 MiB\s+3 d old", lines[2]), lines[2]
    assert len(lines) == 3
    assert run(app, "list", "--dir", str(tmp_path / "none")).output.startswith("no backups in")


def test_prune_removes_only_old_backups(app, tmp_path):
    old = [fake_backup(tmp_path, timedelta(days=days)) for days in (31, 45, 400)]
    young = [fake_backup(tmp_path, timedelta(days=days), ".sqlite3") for days in (0, 1, 29)]
    unrelated = [tmp_path / "notes.txt", tmp_path / "zenzefi-latest.dump", tmp_path / "other-20200101T000000Z.dump"]
    for path in unrelated:
        path.write_text("keep me")
    result = run(app, "prune", "--keep-days", "30", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in young + unrelated)
    for path in old:
        assert f"removed {path.name}" in result.output
    assert "3 backup(s) removed, 3 kept" in result.output


def test_prune_always_keeps_the_newest_backup(app, tmp_path):
    newest = fake_backup(tmp_path, timedelta(days=40))
    fake_backup(tmp_path, timedelta(days=50))
    result = run(app, "prune", "--keep-days", "30", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == [newest.name]


def test_prune_needs_at_least_one_day(app, tmp_path):
    result = run(app, "prune", "--keep-days", "0", "--dir", str(tmp_path))
    assert result.exit_code == 2


def test_a_missing_pg_tool_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(backups.BackupError, match=r"pg_dump was not found on PATH; install the PostgreSQL client"):
        backups.find_tool("pg_dump")


def test_create_without_pg_dump_says_so(app, backends, monkeypatch, tmp_path):
    if not backends.is_postgres:
        pytest.skip("PostgreSQL only: SQLite backups need no external tool")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = run(app, "create", "--output", str(tmp_path))
    assert result.exit_code == 1
    assert "pg_dump was not found on PATH" in result.output
    assert list(tmp_path.iterdir()) == []  # no half-written file left behind


def test_the_libpq_connection_keeps_the_password_off_the_command_line():
    url = make_url("postgresql+psycopg://zen user:p%40ss'w0rd@db.internal:5433/zenzefi?sslmode=require")
    conninfo, env = backups.libpq_connection(url)
    assert conninfo == ("host='db.internal' port='5433' user='zen user' dbname='zenzefi' sslmode='require' "
                        "application_name='zenzefi-backup'")
    assert "p@ss" not in conninfo
    assert env["PGPASSWORD"] == "p@ss'w0rd"


def test_an_in_memory_sqlite_database_is_refused():
    with pytest.raises(backups.BackupError, match="in-memory"):
        backups._sqlite_path(make_url("sqlite://"))


def test_two_backups_in_one_second_get_distinct_names(tmp_path):
    moment = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
    first = backups._new_path(tmp_path, moment, ".dump")
    first.write_bytes(b"PGDMP")
    second = backups._new_path(tmp_path, moment, ".dump")
    assert (first.name, second.name) == ("zenzefi-20261123T030000Z.dump", "zenzefi-20261123T030000Z-1.dump")
    second.write_bytes(b"PGDMP")
    assert [b.path.name for b in backups.list_backups(tmp_path)] == [second.name, first.name]

