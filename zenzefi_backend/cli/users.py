from __future__ import annotations

import click
from flask.cli import AppGroup

from ..accounts import services
from ..accounts.schemas import RegisterSchema
from ..errors import ZenzefiError

users_cli = AppGroup("users", help="Manage users.")


@users_cli.command("create-superuser")
@click.option("--email", prompt=True)
@click.option("--username", prompt=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
def create_superuser(email: str, username: str, password: str) -> None:
    """Create a superuser (prompts for what is not given)."""
    errors = RegisterSchema().validate({"email": email, "username": username, "password": password})
    if errors:
        raise click.ClickException("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()))
    try:
        user = services.create_superuser(email=email, username=username, password=password)
    except ZenzefiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Superuser {user.username} <{user.email}> created (id {user.id}).")


@users_cli.command("deactivate")
@click.argument("email")
def deactivate(email: str) -> None:
    """Lock a user out at once: JWTs, access tokens and proxy sessions stop working."""
    user = services.find_by_email(email)
    if user is None:
        raise click.ClickException(f"no user with e-mail {email}")
    services.deactivate_user(user)
    click.echo(f"User {user.username} <{user.email}> deactivated.")
