from __future__ import annotations

import click
from flask.cli import AppGroup

from ..ledger import services as ledger

ledger_cli = AppGroup("ledger", help="Check the ledger.")


@ledger_cli.command("verify")
def verify() -> None:
    """Check balance == sum(ledger) and balance >= 0 for every user; exit 1 on any mismatch."""
    result = ledger.verify()
    for mismatch in result["mismatches"]:
        click.echo(f"MISMATCH user {mismatch['user_id']}: balance {mismatch['balance']} "
                   f"!= ledger sum {mismatch['ledger_sum']}", err=True)
    click.echo(f"{'ok' if result['ok'] else 'FAILED'}: {result['users_checked']} users checked, "
               f"{len(result['mismatches'])} mismatches")
    if not result["ok"]:
        raise SystemExit(1)
