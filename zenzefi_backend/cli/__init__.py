from __future__ import annotations

from flask import Flask

from .backup import backup_cli
from .bundles import bundles_cli
from .jobs import jobs_cli
from .ledger import ledger_cli
from .users import users_cli


def register_commands(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(jobs_cli)
    app.cli.add_command(ledger_cli)
    app.cli.add_command(bundles_cli)
    app.cli.add_command(backup_cli)
