"""The default bundles and the public catalogue (SPEC §3.5)."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from .helpers import BUNDLES, DEFAULTS, bundle_path, seed


@pytest.mark.parametrize("name", DEFAULTS)
def test_seeded_bundles_have_exactly_the_spec_prices(catalogue, name):
    count, hours, discount, base, total, per_token = DEFAULTS[name]
    bundle = catalogue[name]
    assert (bundle["token_count"], bundle["duration_hours"], bundle["discount_percent"]) == (count, hours, discount)
    assert (bundle["base_price"], bundle["total_price"], bundle["price_per_token"]) == (base, total, per_token)
    assert bundle["savings"] == str(Decimal(base) - Decimal(total))
    assert bundle["scope"] == "full" and bundle["is_active"] is True and bundle["description"]
    assert set(bundle) == {"id", "name", "description", "token_count", "duration_hours", "scope", "discount_percent",
                           "base_price", "total_price", "savings", "price_per_token", "is_active", "created_at",
                           "updated_at"}


def test_the_list_is_active_bundles_cheapest_first(client, catalogue, admin):
    body = client.get(BUNDLES).get_json()
    assert list(body) == ["items"]
    assert [bundle["name"] for bundle in body["items"]] == ["Starter Pack", "Developer Pack", "Team Pack",
                                                            "Enterprise Pack"]
    client.delete(bundle_path(catalogue["Team Pack"]["id"]), headers=admin["headers"])
    names = [bundle["name"] for bundle in client.get(BUNDLES).get_json()["items"]]
    assert names == ["Starter Pack", "Developer Pack", "Enterprise Pack"]


def test_one_bundle_is_public_while_active(client, catalogue, admin):
    starter = catalogue["Starter Pack"]
    assert client.get(bundle_path(starter["id"])).get_json() == starter
    client.delete(bundle_path(starter["id"]), headers=admin["headers"])
    assert client.get(bundle_path(starter["id"])).status_code == 404
    unknown = client.get(bundle_path(str(uuid.uuid4())))
    assert unknown.status_code == 404 and unknown.get_json()["message"] == "Bundle not found."


def test_include_inactive_is_for_superusers_only(client, catalogue, admin, accounts):
    client.delete(bundle_path(catalogue["Team Pack"]["id"]), headers=admin["headers"])
    everything = client.get(f"{BUNDLES}?include_inactive=true", headers=admin["headers"]).get_json()["items"]
    assert {bundle["name"]: bundle["is_active"] for bundle in everything} == {
        "Starter Pack": True, "Developer Pack": True, "Team Pack": False, "Enterprise Pack": True}
    assert client.get(f"{BUNDLES}?include_inactive=true").status_code == 401
    user = accounts.signed_in()
    refused = client.get(f"{BUNDLES}?include_inactive=true", headers=user["headers"])
    assert refused.status_code == 403 and refused.get_json()["code"] == 403
    # Asking for the default is fine for anyone, signed in or not.
    assert len(client.get(f"{BUNDLES}?include_inactive=false", headers=user["headers"]).get_json()["items"]) == 3
    assert len(client.get(BUNDLES, headers={"Authorization": "Bearer not-a-jwt"}).get_json()["items"]) == 3
    assert client.get(f"{BUNDLES}?include_inactive=maybe").status_code == 422


def test_seed_is_idempotent_and_keeps_what_an_operator_changed(app, client, catalogue, admin):
    starter = catalogue["Starter Pack"]
    client.patch(bundle_path(starter["id"]), json={"discount_percent": 20}, headers=admin["headers"])
    client.delete(bundle_path(catalogue["Team Pack"]["id"]), headers=admin["headers"])
    again = seed(app, client)
    assert set(again) == {"Starter Pack", "Developer Pack", "Enterprise Pack"}
    assert again["Starter Pack"]["total_price"] == "72.00"
    everything = client.get(f"{BUNDLES}?include_inactive=true", headers=admin["headers"]).get_json()["items"]
    assert len(everything) == 4
