"""`flask bundles seed | list | create | deactivate`."""
from __future__ import annotations

from .helpers import BUNDLES, DEFAULTS


def invoke(app, *args: str):
    return app.test_cli_runner().invoke(args=["bundles", *args])


def test_seed_creates_the_defaults_once(app, client):
    first = invoke(app, "seed")
    assert first.exit_code == 0, first.output
    assert first.output.splitlines() == [f"created  {name}" for name in DEFAULTS]
    second = invoke(app, "seed")
    assert second.output.splitlines() == [f"exists   {name}" for name in DEFAULTS]
    assert len(client.get(BUNDLES).get_json()["items"]) == 4


def test_list_shows_prices_and_can_include_inactive(app):
    assert "flask bundles seed" in invoke(app, "list").output
    invoke(app, "seed")
    listed = invoke(app, "list").output.splitlines()
    assert [line.split("  ")[1].strip() for line in listed] == list(DEFAULTS)
    assert "90.00 →      81.00  (16.20 a token)  active" in listed[0]
    assert "15000.00 →   11250.00  (225.00 a token)  active" in listed[3]
    invoke(app, "deactivate", "team pack")
    assert len(invoke(app, "list").output.splitlines()) == 3
    everything = invoke(app, "list", "--all").output.splitlines()
    assert len(everything) == 4 and everything[2].endswith("inactive")


def test_create_computes_prices_and_validates(app, client):
    made = invoke(app, "create", "--name", "Duo", "--token-count", "2", "--duration-hours", "720",
                  "--discount-percent", "5", "--scope", "certificates_only")
    assert made.exit_code == 0, made.output
    assert "600.00 →     570.00  (285.00 a token)" in made.output
    (duo,) = client.get(BUNDLES).get_json()["items"]
    assert (duo["name"], duo["scope"], duo["total_price"]) == ("Duo", "certificates_only", "570.00")
    again = invoke(app, "create", "--name", "duo", "--token-count", "2", "--duration-hours", "720",
                   "--discount-percent", "5")
    assert again.exit_code != 0 and "already exists" in again.output
    bad = invoke(app, "create", "--name", "Bad", "--token-count", "0", "--duration-hours", "24",
                 "--discount-percent", "91")
    assert bad.exit_code != 0 and "token_count" in bad.output and "discount_percent" in bad.output
    unpriced = invoke(app, "create", "--name", "Bad", "--token-count", "1", "--duration-hours", "48",
                      "--discount-percent", "0")
    assert unpriced.exit_code != 0
    assert len(client.get(BUNDLES).get_json()["items"]) == 1


def test_deactivate_by_name_or_id(app, client):
    invoke(app, "seed")
    catalogue = {bundle["name"]: bundle for bundle in client.get(BUNDLES).get_json()["items"]}
    by_name = invoke(app, "deactivate", "STARTER PACK")
    assert by_name.exit_code == 0 and by_name.output.strip() == "deactivated  Starter Pack"
    by_id = invoke(app, "deactivate", catalogue["Team Pack"]["id"])
    assert by_id.exit_code == 0 and "Team Pack" in by_id.output
    assert [bundle["name"] for bundle in client.get(BUNDLES).get_json()["items"]] == ["Developer Pack",
                                                                                        "Enterprise Pack"]
    unknown = invoke(app, "deactivate", "Nope Pack")
    assert unknown.exit_code != 0 and "Bundle not found" in unknown.output
