from __future__ import annotations

import pytest


def test_me_shows_the_profile_without_a_password_hash(client, accounts):
    user = accounts.signed_in(full_name="Ann")
    body = client.get("/api/v1/users/me", headers=user["headers"]).get_json()
    assert set(body) == {
        "id", "email", "username", "full_name", "is_active", "is_superuser", "plan", "plan_expires_at",
        "referral_code", "balance", "email_notifications", "created_at", "updated_at",
    }


def test_patch_updates_only_the_allowed_fields(client, accounts):
    user = accounts.signed_in()
    response = client.patch("/api/v1/users/me", headers=user["headers"],
                            json={"full_name": "New Name", "email_notifications": False})
    assert response.status_code == 200
    body = response.get_json()
    assert body["full_name"] == "New Name" and body["email_notifications"] is False
    assert client.get("/api/v1/users/me", headers=user["headers"]).get_json()["full_name"] == "New Name"


@pytest.mark.parametrize(
    "changes",
    [{"balance": "100.00"}, {"is_superuser": True}, {"email": "x@example.com"}, {"plan": "enterprise"},
     {"full_name": "ok", "is_active": False}, {"email_notifications": "maybe"}, {"full_name": "x" * 256}],
)
def test_patch_rejects_anything_else_and_changes_nothing(client, accounts, changes):
    user = accounts.signed_in(full_name="Before")
    response = client.patch("/api/v1/users/me", headers=user["headers"], json=changes)
    assert response.status_code == 422
    body = client.get("/api/v1/users/me", headers=user["headers"]).get_json()
    assert body["full_name"] == "Before"
    assert body["balance"] == "0.00" and body["is_superuser"] is False and body["plan"] == "free"


def test_password_change_revokes_every_earlier_jwt(client, accounts):
    user = accounts.signed_in()
    other_device = accounts.login(user["email"], user["password"])
    response = client.post("/api/v1/users/me/password", headers=user["headers"],
                           json={"current_password": user["password"], "new_password": "a brand new one"})
    assert response.status_code == 204
    for token in (user["access_token"], other_device["access_token"]):
        assert client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    for token in (user["refresh_token"], other_device["refresh_token"]):
        assert client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.post("/api/v1/auth/login",
                       json={"email": user["email"], "password": user["password"]}).status_code == 401
    fresh = accounts.login(user["email"], "a brand new one")
    headers = {"Authorization": f"Bearer {fresh['access_token']}"}
    assert client.get("/api/v1/users/me", headers=headers).status_code == 200


def test_wrong_current_password_is_401_and_changes_nothing(client, accounts):
    user = accounts.signed_in()
    response = client.post("/api/v1/users/me/password", headers=user["headers"],
                           json={"current_password": "not it at all", "new_password": "a brand new one"})
    assert response.status_code == 401
    assert client.get("/api/v1/users/me", headers=user["headers"]).status_code == 200
    accounts.login(user["email"], user["password"])


def test_new_password_must_be_valid(client, accounts):
    user = accounts.signed_in()
    response = client.post("/api/v1/users/me/password", headers=user["headers"],
                           json={"current_password": user["password"], "new_password": "short"})
    assert response.status_code == 422
    assert "new_password" in response.get_json()["errors"]
