"""Bundle-test helpers: the catalogue as a client sees it, and a purchase through the API."""
from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

BUNDLES = "/api/v1/bundles"

# SPEC §3.5: name → (token_count, duration_hours, discount_percent, base, total, price_per_token)
DEFAULTS = {
    "Starter Pack": (5, 24, 10, "90.00", "81.00", "16.20"),
    "Developer Pack": (10, 168, 15, "1000.00", "850.00", "85.00"),
    "Team Pack": (25, 168, 20, "2500.00", "2000.00", "80.00"),
    "Enterprise Pack": (50, 720, 25, "15000.00", "11250.00", "225.00"),
}


def bundle_path(bundle_id: str) -> str:
    return f"{BUNDLES}/{bundle_id}"


def purchase_path(bundle_id: str) -> str:
    return f"{BUNDLES}/{bundle_id}/purchase"


def seed(app: Flask, client: FlaskClient) -> dict[str, dict]:
    """Run `flask bundles seed` and return the public catalogue by name."""
    result = app.test_cli_runner().invoke(args=["bundles", "seed"])
    assert result.exit_code == 0, result.output
    response = client.get(BUNDLES)
    assert response.status_code == 200, response.get_json()
    return {bundle["name"]: bundle for bundle in response.get_json()["items"]}


def create(client: FlaskClient, admin: dict, **fields):
    body = {"name": "Custom", "token_count": 3, "duration_hours": 24, "discount_percent": 10, **fields}
    return client.post(BUNDLES, json=body, headers=admin["headers"])


def buy(client: FlaskClient, user: dict, bundle_id: str, headers: dict[str, str] | None = None):
    return client.post(purchase_path(bundle_id), headers={**user["headers"], **(headers or {})})
