from __future__ import annotations

from datetime import timedelta

import click
from flask.cli import AppGroup

from ..accounts import services
from ..accounts.models import PLANS
from ..accounts.schemas import RegisterSchema
from ..clock import now
from ..errors import ZenzefiError
from ..plans.services import grant_plan

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


@users_cli.command("set-plan")
@click.argument("email")
@click.argument("plan", type=click.Choice(PLANS))
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True,
              help="How long a paid plan runs from now.")
@click.option("--forever", is_flag=True, help="A paid plan that never expires.")
def set_plan(email: str, plan: str, days: int, forever: bool) -> None:
    """Grant a plan without charging (operators)."""
    user = services.find_by_email(email)
    if user is None:
        raise click.ClickException(f"no user with e-mail {email}")
    expires_at = None if forever else now() + timedelta(days=days)
    user = grant_plan(user, plan, expires_at)
    until = user.plan_expires_at.isoformat() if user.plan_expires_at else "no expiry"
    click.echo(f"User {user.username} <{user.email}> is on the {user.plan} plan ({until}).")
