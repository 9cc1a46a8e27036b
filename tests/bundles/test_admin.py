"""Superuser create / update / soft delete, with prices always computed by the server."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa

from zenzefi_backend.audit.models import AuditLog
from zenzefi_backend.extensions import db

from .helpers import BUNDLES, bundle_path, create


def test_create_computes_the_prices(client, admin):
    response = create(client, admin, name="Trio", description="Three days", token_count=3, duration_hours=24,
                      discount_percent=10, scope="certificates_only")
    assert response.status_code == 201, response.get_json()
    bundle = response.get_json()
    assert (bundle["base_price"], bundle["total_price"]) == ("54.00", "48.60")
    assert (bundle["savings"], bundle["price_per_token"]) == ("5.40", "16.20")
    assert bundle["scope"] == "certificates_only" and bundle["is_active"] is True
    assert client.get(bundle_path(bundle["id"])).get_json() == bundle


def test_total_is_rounded_half_even_and_the_share_down(app, client, admin, monkeypatch):
    monkeypatch.setitem(app.config, "TOKEN_PRICE_1H", Decimal("1.25"))
    bundle = create(client, admin, token_count=3, duration_hours=1, discount_percent=33).get_json()
    # base 3.75; 3.75 × 0.67 = 2.5125 → 2.51; 2.51 / 3 = 0.8366… → 0.83 a token
    assert (bundle["base_price"], bundle["total_price"], bundle["price_per_token"]) == ("3.75", "2.51", "0.83")
    half = create(client, admin, name="Half", token_count=1, duration_hours=1, discount_percent=50).get_json()
    assert half["total_price"] == "0.62"  # 0.625 → 0.62 (half-even)


def test_a_bundle_never_costs_nothing(app, client, admin, monkeypatch):
    monkeypatch.setitem(app.config, "TOKEN_PRICE_1H", Decimal("0.01"))
    free = create(client, admin, token_count=1, duration_hours=1, discount_percent=90)
    assert free.status_code == 422 and "discount_percent" in free.get_json()["errors"]
    cheap = create(client, admin, token_count=1, duration_hours=1, discount_percent=40).get_json()
    assert (cheap["total_price"], cheap["price_per_token"]) == ("0.01", "0.01")
    refused = client.patch(bundle_path(cheap["id"]), json={"discount_percent": 90}, headers=admin["headers"])
    assert refused.status_code == 422
    assert client.get(bundle_path(cheap["id"])).get_json() == cheap


def test_defaults_and_limits(client, admin):
    assert create(client, admin, name="No discount", discount_percent=0).get_json()["total_price"] == "54.00"
    most = create(client, admin, name="Most", token_count=1000, duration_hours=720, discount_percent=90).get_json()
    assert (most["base_price"], most["total_price"], most["price_per_token"]) == ("300000.00", "30000.00", "30.00")
    assert create(client, admin, name="Default scope").get_json()["scope"] == "full"


@pytest.mark.parametrize("fields", [
    {"token_count": 0}, {"token_count": 1001}, {"token_count": -1}, {"token_count": "5"}, {"token_count": 5.5},
    {"token_count": 5.0}, {"token_count": True}, {"token_count": None},
    {"discount_percent": -1}, {"discount_percent": 91}, {"discount_percent": 10.5}, {"discount_percent": "10"},
    {"discount_percent": None},
    {"duration_hours": 2}, {"duration_hours": 0}, {"duration_hours": "24"}, {"duration_hours": 24.0},
    {"scope": "admin"}, {"scope": ""}, {"scope": None},
    {"name": ""}, {"name": " padded"}, {"name": "x" * 101}, {"name": "two\nlines"}, {"name": None},
    {"description": "x" * 1001},
    {"base_price": "1.00"}, {"total_price": "0.01"}, {"savings": "100.00"}, {"price_per_token": "0.01"},
    {"is_active": False}, {"id": str(uuid.uuid4())}, {"created_at": "2026-01-01T00:00:00+00:00"},
])
def test_invalid_or_unknown_fields_are_422_and_create_nothing(client, admin, fields):
    response = create(client, admin, **fields)
    assert response.status_code == 422, response.get_json()
    assert set(response.get_json()["errors"]) == set(fields)
    assert client.get(f"{BUNDLES}?include_inactive=true", headers=admin["headers"]).get_json()["items"] == []


@pytest.mark.parametrize("missing", ["name", "token_count", "duration_hours", "discount_percent"])
def test_required_fields(client, admin, missing):
    body = {"name": "Custom", "token_count": 3, "duration_hours": 24, "discount_percent": 10}
    del body[missing]
    response = client.post(BUNDLES, json=body, headers=admin["headers"])
    assert response.status_code == 422 and missing in response.get_json()["errors"]


def test_names_are_unique_ignoring_case(client, admin):
    assert create(client, admin, name="Team").status_code == 201
    duplicate = create(client, admin, name="TEAM")
    assert duplicate.status_code == 409 and duplicate.get_json()["message"] == "A bundle with this name already exists."
    other = create(client, admin, name="Other").get_json()
    assert client.patch(bundle_path(other["id"]), json={"name": "team"}, headers=admin["headers"]).status_code == 409
    renamed = client.patch(bundle_path(other["id"]), json={"name": "OTHER"}, headers=admin["headers"])
    assert renamed.status_code == 200 and renamed.get_json()["name"] == "OTHER"


def test_update_recomputes_the_prices(app, client, admin, monkeypatch):
    bundle = create(client, admin).get_json()
    path = bundle_path(bundle["id"])
    changed = client.patch(path, json={"discount_percent": 50, "token_count": 4}, headers=admin["headers"])
    assert changed.status_code == 200
    assert (changed.get_json()["base_price"], changed.get_json()["total_price"]) == ("72.00", "36.00")
    longer = client.patch(path, json={"duration_hours": 168}, headers=admin["headers"]).get_json()
    assert (longer["base_price"], longer["total_price"], longer["price_per_token"]) == ("400.00", "200.00", "50.00")
    # A price-table change reaches a bundle the next time it is saved.
    monkeypatch.setitem(app.config, "TOKEN_PRICE_7D", Decimal("120"))
    renamed = client.patch(path, json={"description": "new"}, headers=admin["headers"]).get_json()
    assert (renamed["description"], renamed["total_price"]) == ("new", "240.00")
    assert client.patch(path, json={}, headers=admin["headers"]).status_code == 200


@pytest.mark.parametrize("fields", [{"total_price": "1.00"}, {"base_price": "1.00"}, {"savings": "1.00"},
                                    {"price_per_token": "1.00"}, {"token_count": 0}, {"discount_percent": 95},
                                    {"duration_hours": 48}, {"name": None}, {"id": str(uuid.uuid4())}])
def test_update_rejects_prices_and_bad_values(client, admin, fields):
    bundle = create(client, admin).get_json()
    response = client.patch(bundle_path(bundle["id"]), json=fields, headers=admin["headers"])
    assert response.status_code == 422 and set(response.get_json()["errors"]) == set(fields)
    assert client.get(bundle_path(bundle["id"])).get_json() == bundle


def test_delete_is_a_soft_delete_and_patch_brings_it_back(client, admin):
    bundle = create(client, admin).get_json()
    path = bundle_path(bundle["id"])
    deleted = client.delete(path, headers=admin["headers"])
    assert deleted.status_code == 204 and deleted.data == b""
    assert client.get(path).status_code == 404
    assert client.get(BUNDLES).get_json()["items"] == []
    assert client.delete(path, headers=admin["headers"]).status_code == 204
    listed = client.get(f"{BUNDLES}?include_inactive=true", headers=admin["headers"]).get_json()["items"]
    assert [(b["id"], b["is_active"]) for b in listed] == [(bundle["id"], False)]
    back = client.patch(path, json={"is_active": True}, headers=admin["headers"])
    assert back.status_code == 200 and back.get_json()["is_active"] is True
    assert client.get(path).status_code == 200


def test_unknown_bundle_is_404_for_admins_too(client, admin):
    path = bundle_path(str(uuid.uuid4()))
    assert client.patch(path, json={"discount_percent": 5}, headers=admin["headers"]).status_code == 404
    assert client.delete(path, headers=admin["headers"]).status_code == 404


def test_admin_routes_need_a_superuser(client, admin, accounts):
    bundle = create(client, admin).get_json()
    path = bundle_path(bundle["id"])
    body = {"name": "Sneaky", "token_count": 1, "duration_hours": 1, "discount_percent": 90}
    user = accounts.signed_in()
    for headers, status in [({}, 401), ({"Authorization": "Bearer nonsense"}, 401), (user["headers"], 403)]:
        assert client.post(BUNDLES, json=body, headers=headers).status_code == status
        assert client.patch(path, json={"discount_percent": 90}, headers=headers).status_code == status
        assert client.delete(path, headers=headers).status_code == status
    assert client.get(path).get_json() == bundle


def test_admin_actions_are_audited(app, client, admin):
    bundle = create(client, admin).get_json()
    client.patch(bundle_path(bundle["id"]), json={"discount_percent": 20}, headers=admin["headers"])
    client.delete(bundle_path(bundle["id"]), headers=admin["headers"])
    with app.app_context():
        rows = db.session.scalars(sa.select(AuditLog).where(AuditLog.resource_id == bundle["id"])
                                  .order_by(AuditLog.created_at)).all()
        assert [row.action for row in rows] == ["bundle.created", "bundle.updated", "bundle.deactivated"]
        assert {str(row.actor_id) for row in rows} == {admin["id"]}
        assert rows[0].details["total_price"] == "48.60"
        assert rows[1].details["changed"] == {"discount_percent": {"from": 10, "to": 20},
                                              "total_price": {"from": "48.60", "to": "43.20"}}
