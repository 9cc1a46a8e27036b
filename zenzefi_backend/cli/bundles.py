from __future__ import annotations

import click
from flask.cli import AppGroup

from ..bundles import services
from ..bundles.models import Bundle
from ..bundles.schemas import BundleCreateSchema
from ..errors import ZenzefiError
from ..money import format_amount
from ..tokens.models import SCOPES
from ..tokens.pricing import DURATIONS

bundles_cli = AppGroup("bundles", help="Manage token bundles.")


def _line(bundle: Bundle) -> str:
    state = "active" if bundle.is_active else "inactive"
    return (f"{bundle.id}  {bundle.name:<20} {bundle.token_count:>4} × {bundle.duration_hours:>3} h {bundle.scope:<17} "
            f"{f'-{bundle.discount_percent}%':>4}  {format_amount(bundle.base_price):>10} → "
            f"{format_amount(bundle.total_price):>10}  ({format_amount(bundle.price_per_token)} a token)  {state}")


@bundles_cli.command("seed")
def seed() -> None:
    """Create the default bundles (Starter, Developer, Team, Enterprise) that do not exist yet."""
    for name, created in services.seed_defaults():
        click.echo(f"{'created' if created else 'exists '}  {name}")


@bundles_cli.command("list")
@click.option("--all", "include_inactive", is_flag=True, help="Include deactivated bundles.")
def list_bundles(include_inactive: bool) -> None:
    """List bundles, cheapest first."""
    bundles = services.list_bundles(include_inactive=include_inactive)
    for bundle in bundles:
        click.echo(_line(bundle))
    if not bundles:
        click.echo("no bundles (flask bundles seed creates the defaults)")


@bundles_cli.command("create")
@click.option("--name", required=True)
@click.option("--token-count", type=int, required=True, help="1 to 1000 tokens.")
@click.option("--duration-hours", type=click.Choice([str(hours) for hours in DURATIONS]), required=True)
@click.option("--discount-percent", type=int, required=True, help="Whole percent, 0 to 90.")
@click.option("--scope", type=click.Choice(SCOPES), default="full", show_default=True)
@click.option("--description", default=None)
def create(name: str, token_count: int, duration_hours: str, discount_percent: int, scope: str,
           description: str | None) -> None:
    """Create a bundle; its prices are computed from the price table and the discount."""
    fields = {"name": name, "token_count": token_count, "duration_hours": int(duration_hours),
              "discount_percent": discount_percent, "scope": scope, "description": description}
    errors = BundleCreateSchema().validate(fields)
    if errors:
        raise click.ClickException("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()))
    try:
        bundle = services.create_bundle(None, fields)
    except ZenzefiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"created  {_line(bundle)}")


@bundles_cli.command("deactivate")
@click.argument("name_or_id")
def deactivate(name_or_id: str) -> None:
    """Deactivate a bundle by name (ignoring case) or id; tokens already bought keep working."""
    try:
        bundle = services.deactivate_bundle(None, services.find_bundle(name_or_id).id)
    except ZenzefiError as exc:
        raise click.ClickException(f"{exc.message} ({name_or_id})") from None
    click.echo(f"deactivated  {bundle.name}")
