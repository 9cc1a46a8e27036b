"""Admin users: list with search, filters and counts; detail; PATCH of four fields only, audited."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.fixtures.actions import buy_token
from tests.support import count_sql
from zenzefi_backend import clock

from .helpers import BROWSER, USERS, audit_rows, user_path, user_row


def listing(client, admin, **query) -> dict:
    response = client.get(USERS, query_string=query, headers=admin["headers"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def patch(client, admin, user_id: str, **body):
    return client.patch(user_path(user_id), json=body, headers={**admin["headers"], "User-Agent": BROWSER})


# --- list and detail ---------------------------------------------------------------------------------


def test_list_is_paginated_newest_first_with_balance_plan_and_counts(client, accounts, admin):
    older = accounts.register()
    newer = accounts.register()
    accounts.fund(newer["id"], "25.50")
    page = listing(client, admin)
    assert (page["total"], page["limit"], page["offset"]) == (3, 50, 0)
    assert [item["id"] for item in page["items"]] == [newer["id"], older["id"], admin["id"]]
    first = page["items"][0]
    assert first["balance"] == "25.50" and first["plan"] == "free" and first["is_active"] is True
    assert (first["token_count"], first["active_token_count"], first["transaction_count"]) == (0, 0, 1)
    assert "password" not in str(first) and "password_hash" not in first
    second = listing(client, admin, limit=1, offset=1)
    assert [item["id"] for item in second["items"]] == [older["id"]] and second["total"] == 3


def test_counts_follow_the_tokens_and_the_ledger(app, client, accounts, admin):
    user = accounts.signed_in()
    accounts.fund(user["id"], "10.00")
    ready, revoked, expired = buy_token(client, user), buy_token(client, user), buy_token(client, user)
    assert client.delete(f"/api/v1/tokens/{revoked['id']}", headers=user["headers"]).status_code == 200
    from zenzefi_backend.extensions import db
    from zenzefi_backend.tokens.models import AccessToken

    with app.app_context():
        long_ago = clock.now() - timedelta(hours=5)
        db.session.execute(sa.update(AccessToken).where(AccessToken.id == uuid.UUID(expired["id"]))
                           .values(activated_at=long_ago, expires_at=long_ago + timedelta(hours=1)))
        db.session.commit()
    detail = client.get(user_path(user["id"]), headers=admin["headers"]).get_json()
    # fund + three purchases + one refund
    assert (detail["token_count"], detail["active_token_count"], detail["transaction_count"]) == (3, 1, 5)
    assert detail["balance"] == "8.00"
    assert ready["id"]  # the one token still usable
    (listed,) = [item for item in listing(client, admin)["items"] if item["id"] == user["id"]]
    assert listed == detail


def test_the_list_costs_the_same_queries_for_two_users_or_twenty(app, client, accounts, admin):
    def queries_for_listing() -> int:
        with count_sql(app) as statements:
            listing(client, admin)
        return len(statements)

    user = accounts.register()
    accounts.fund(user["id"], "5.00")
    few = queries_for_listing()
    for _ in range(18):
        other = accounts.register()
        accounts.fund(other["id"], "5.00")
    assert listing(client, admin)["total"] == 20
    assert queries_for_listing() == few


def test_search_matches_email_or_username_case_insensitively(client, accounts, admin):
    alice = accounts.register(email="alice.smith@corp.example", username="Alice_Wonder")
    bob = accounts.register(email="bob@home.example", username="bobby")
    underscore = accounts.register(email="x1@home.example", username="a_b")
    lookalike = accounts.register(email="x2@home.example", username="axb")

    def found(search: str) -> set[str]:
        return {item["id"] for item in listing(client, admin, search=search)["items"]}

    assert found("ALICE") == {alice["id"]}
    assert found("wonder") == {alice["id"]}
    assert found("@CORP.") == {alice["id"]}
    assert found("home.example") == {bob["id"], underscore["id"], lookalike["id"]}
    assert found("bOb") == {bob["id"]}
    assert found("a_b") == {underscore["id"]}  # `_` is a character, not a LIKE wildcard
    assert found("%") == set()
    assert found("nobody-like-this") == set()
    assert listing(client, admin, search="")["total"] == 5


def test_filters_by_active_and_plan(client, accounts, admin):
    inactive = accounts.register()
    premium = accounts.register()
    accounts.set_flags(inactive["id"], is_active=False)
    accounts.set_flags(premium["id"], plan="premium")
    assert [u["id"] for u in listing(client, admin, is_active="false")["items"]] == [inactive["id"]]
    assert inactive["id"] not in {u["id"] for u in listing(client, admin, is_active="true")["items"]}
    assert [u["id"] for u in listing(client, admin, plan="premium")["items"]] == [premium["id"]]
    assert listing(client, admin, plan="enterprise")["items"] == []
    assert listing(client, admin, plan="premium", is_active="false")["total"] == 0


@pytest.mark.parametrize("query", [
    {"is_active": "maybe"}, {"plan": "gold"}, {"plan": ""}, {"limit": 0}, {"limit": 101}, {"offset": -1},
    {"search": "x" * 256}, {"search": "a\x00b"},
])
def test_bad_filters_are_422(client, admin, query):
    response = client.get(USERS, query_string=query, headers=admin["headers"])
    assert response.status_code == 422, response.get_json()
    assert set(response.get_json()["errors"]) == set(query)


def test_detail_of_an_unknown_user_is_404(client, admin):
    assert client.get(user_path(str(uuid.uuid4())), headers=admin["headers"]).status_code == 404
    assert client.get(f"{USERS}/not-a-uuid", headers=admin["headers"]).status_code == 404
    assert patch(client, admin, str(uuid.uuid4()), plan="premium").status_code == 404


# --- PATCH -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"balance": "1000.00"}, {"email": "new@example.com"}, {"username": "renamed"}, {"password": "hunter22!!"},
    {"password_hash": "x"}, {"full_name": "Mallory"}, {"referral_code": "AAAAAAAAAAAA"}, {"id": str(uuid.uuid4())},
    {"email_notifications": False}, {"jwt_generation": 9}, {"created_at": "2026-01-01T00:00:00+00:00"},
    {"plan": "premium", "balance": "1000.00"}, {"is_active": False, "email": "x@example.com"},
])
def test_only_four_fields_can_change_anything_else_is_422_and_changes_nothing(app, client, accounts, admin, fields):
    user = accounts.register(full_name="Original")
    before = client.get(user_path(user["id"]), headers=admin["headers"]).get_json()
    response = patch(client, admin, user["id"], **fields)
    assert response.status_code == 422, response.get_json()
    unknown = set(fields) - {"plan", "is_active"}
    assert set(response.get_json()["errors"]) == unknown
    assert client.get(user_path(user["id"]), headers=admin["headers"]).get_json() == before
    assert audit_rows(app, "admin.user_updated") == []


@pytest.mark.parametrize("fields", [
    {"is_active": "false"}, {"is_active": 0}, {"is_active": None}, {"is_superuser": "true"}, {"is_superuser": 1},
    {"plan": "gold"}, {"plan": None}, {"plan": ""}, {"plan_expires_at": "tomorrow"},
    {"plan_expires_at": "2026-01-05T10:00:00"}, {"plan_expires_at": 1767607200}, {"plan_expires_at": "2026-13-40"},
])
def test_invalid_values_are_422(client, accounts, admin, fields):
    user = accounts.register()
    response = patch(client, admin, user["id"], **fields)
    assert response.status_code == 422, response.get_json()
    assert set(response.get_json()["errors"]) == set(fields)
    assert user_row(client.application, user["id"]).plan == "free"


def test_malformed_json_is_400(client, accounts, admin):
    user = accounts.register()
    response = client.patch(user_path(user["id"]), data="{not json", content_type="application/json",
                            headers=admin["headers"])
    assert response.status_code == 400


def test_plan_change_answers_the_updated_user_and_is_audited(app, client, accounts, admin):
    user = accounts.register()
    response = patch(client, admin, user["id"], plan="premium", plan_expires_at="2027-03-01T12:00:00+02:00")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["plan"], body["plan_expires_at"]) == ("premium", "2027-03-01T10:00:00+00:00")
    assert body["id"] == user["id"] and "token_count" in body and body["balance"] == "0.00"
    assert client.get(user_path(user["id"]), headers=admin["headers"]).get_json() == body
    (entry,) = audit_rows(app, "admin.user_updated")
    assert entry["actor_id"] == admin["id"]
    assert (entry["resource_type"], entry["resource_id"]) == ("user", user["id"])
    assert entry["details"] == {"changes": {
        "plan": {"from": "free", "to": "premium"},
        "plan_expires_at": {"from": None, "to": "2027-03-01T10:00:00+00:00"},
    }}
    assert entry["ip_address"] == "127.0.0.1" and entry["user_agent"] == BROWSER


def test_the_free_plan_never_expires(client, accounts, admin):
    user = accounts.register()
    refused = patch(client, admin, user["id"], plan_expires_at="2027-01-01T00:00:00+00:00")
    assert refused.status_code == 422 and "plan_expires_at" in refused.get_json()["errors"]
    refused = patch(client, admin, user["id"], plan="free", plan_expires_at="2027-01-01T00:00:00+00:00")
    assert refused.status_code == 422
    premium = patch(client, admin, user["id"], plan="enterprise", plan_expires_at="2027-01-01T00:00:00Z").get_json()
    assert premium["plan_expires_at"] == "2027-01-01T00:00:00+00:00"
    forever = patch(client, admin, user["id"], plan_expires_at=None).get_json()
    assert (forever["plan"], forever["plan_expires_at"]) == ("enterprise", None)
    patch(client, admin, user["id"], plan_expires_at="2027-01-01T00:00:00Z")
    back = patch(client, admin, user["id"], plan="free").get_json()
    assert (back["plan"], back["plan_expires_at"]) == ("free", None)


def test_a_patch_that_changes_nothing_is_200_and_not_audited(app, client, accounts, admin):
    user = accounts.register()
    for body in ({}, {"plan": "free"}, {"is_active": True, "is_superuser": False, "plan_expires_at": None}):
        response = client.patch(user_path(user["id"]), json=body, headers=admin["headers"])
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["plan"] == "free"
    assert audit_rows(app, "admin.user_updated") == []


def test_a_superuser_cannot_demote_or_deactivate_themselves(app, client, admin):
    demote = patch(client, admin, admin["id"], is_superuser=False)
    assert demote.status_code == 409 and "superuser" in demote.get_json()["message"]
    deactivate = patch(client, admin, admin["id"], is_active=False)
    assert deactivate.status_code == 409 and "deactivate" in deactivate.get_json()["message"]
    both = patch(client, admin, admin["id"], plan="premium", is_active=False)
    assert both.status_code == 409
    row = user_row(app, admin["id"])
    assert (row.is_superuser, row.is_active, row.plan) == (True, True, "free")
    assert client.get(USERS, headers=admin["headers"]).status_code == 200
    # Their own plan is theirs to change.
    assert patch(client, admin, admin["id"], plan="premium").get_json()["plan"] == "premium"


def test_granting_and_removing_superuser_takes_effect_on_the_next_request(app, client, accounts, admin):
    other = accounts.signed_in()
    assert client.get(USERS, headers=other["headers"]).status_code == 403
    granted = patch(client, admin, other["id"], is_superuser=True)
    assert granted.status_code == 200 and granted.get_json()["is_superuser"] is True
    assert client.get(USERS, headers=other["headers"]).status_code == 200
    # Two superusers: one may demote the other (never themselves).
    assert patch(client, other, admin["id"], is_superuser=False).status_code == 200
    assert client.get(USERS, headers=admin["headers"]).status_code == 403
    changes = [row["details"]["changes"] for row in audit_rows(app, "admin.user_updated")]
    assert changes == [{"is_superuser": {"from": False, "to": True}}, {"is_superuser": {"from": True, "to": False}}]


def test_deactivation_and_reactivation(app, client, accounts, admin):
    user = accounts.signed_in()
    assert client.get("/api/v1/users/me", headers=user["headers"]).status_code == 200
    response = patch(client, admin, user["id"], is_active=False)
    assert response.status_code == 200 and response.get_json()["is_active"] is False
    assert client.get("/api/v1/users/me", headers=user["headers"]).status_code == 401
    login = client.post("/api/v1/auth/login", json={"email": user["email"], "password": user["password"]})
    assert login.status_code == 401
    # One transaction writes both rows (same instant, possibly): compare them as a set.
    about_user = [row["action"] for row in audit_rows(app) if row["resource_id"] == user["id"]]
    assert set(about_user[-3:-1]) == {"admin.user_updated", "user.deactivated"}
    assert about_user[-1] == "auth.login_failed"
    assert audit_rows(app, "user.deactivated")[0]["actor_id"] == admin["id"]

    response = patch(client, admin, user["id"], is_active=True)
    assert response.status_code == 200 and response.get_json()["is_active"] is True
    # Back in, but JWTs from before the deactivation do not come back to life.
    assert client.get("/api/v1/users/me", headers=user["headers"]).status_code == 401
    fresh = accounts.login(user["email"], user["password"])
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {fresh['access_token']}"})
    assert me.status_code == 200
    (reactivated,) = audit_rows(app, "user.reactivated")
    assert reactivated["actor_id"] == admin["id"] and reactivated["resource_id"] == user["id"]
