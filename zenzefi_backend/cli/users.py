from __future__ import annotations

import click
from flask.cli import AppGroup

from ..accounts import services
from ..errors import ZenzefiError

users_cli = AppGroup("users", help="Manage users.")


@users_cli.command("create-superuser")
@click.option("--email", prompt=True)
@click.option("--username", prompt=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
def create_superuser(email: str, username: str, password: str) -> None:
    """Create a superuser (prompts for what is not given)."""
    from ..accounts.schemas import RegisterSchema

    errors = RegisterSchema().validate({"email": email, "username": username, "password": password})
    if errors:
        raise click.ClickException("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()))
    try:
        user = services.create_superuser(email=email, username=username, password=password)
    except ZenzefiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Superuser {user.username} <{user.email}> created (id {user.id}).")
